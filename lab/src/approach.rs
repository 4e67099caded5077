//! The approach registry: every transport lab can measure, and all that the rest of lab
//! knows about one.
//!
//! An entry holds an approach's name, its transport, its server's default port and URL
//! path, the server (a `start(Listener, ServerEnv)` in lab-servers) and the client runner
//! (a `runner(Target, &RunnerOpts)` in lab-clients). Topology files, plans, `lab serve`,
//! `lab client`, the loopback stack, `lab run` and the reports all iterate this table;
//! nothing else in lab names an approach.
//!
//! Adding an approach takes three things, and nothing more:
//! 1. a server module in `servers/src/` with `PATH` and `start`;
//! 2. a runner module in `clients/src/` with `runner`;
//! 3. one [`Entry`] in [`ENTRIES`] below.
//!
//! What sets an approach apart is a capability or a hook of its entry, never its name:
//! whether prompts share a connection (`multiplexed`), whether connections outlive a
//! prompt (`keeps_connections`), its wire format for the anatomy, its QUIC `stack`, what
//! lab's browser client speaks to it (`browser`), a latency its server reports about
//! itself (`timing`, read by the HTTP runners and summed up by the reports) and a process
//! its server starts of its own (`helper`, run as `lab helper <server>`) and parts of it
//! that run as processes of their own, as nodes (`parts`, run as `lab part <server>
//! <part>`). Two tests hold
//! this: `lab/tests/approach.rs` fails when an identifier or a quoted name outside an
//! approach's modules names it, and the test-only approach `twin` (in unit-test builds
//! only) is planned, served and measured with no file touched but `twin.rs` and its entry.

#[cfg(test)]
mod twin;

use crate::anatomy::{App, Body, Wire};
use anyhow::Result;
use lab_clients::{Runner, RunnerOpts, Target};
use lab_servers::{Listener, ServerEnv, Serving};
use std::fmt;

/// The transport an approach's server listens on.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

/// Who names the model in upstream requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// The client's own requests carry it; the server forwards them (the raw API).
    Client,
    /// The server makes one upstream request per prompt, for its `--model`.
    Server,
}

/// Sets up an approach's server on an already-bound socket, returning what serves.
pub type ServeFn = fn(Listener, ServerEnv) -> Result<Serving>;
/// Runs a server's helper process with the settings (JSON) its server gave it.
pub type HelperFn = fn(String) -> Serving;
/// Builds an approach's client runner.
pub type RunnerFn = fn(Target, &RunnerOpts) -> Result<Box<dyn Runner>>;

/// One approach.
pub struct Entry {
    /// Its name in topology files, `lab client`, records and reports.
    pub name: &'static str,
    /// One line on what it is.
    pub about: &'static str,
    /// Its server's name in `lab serve`.
    pub server: &'static str,
    /// One line on the server.
    pub server_about: &'static str,
    pub transport: Transport,
    /// The server's default port (the reference benchmark's ports).
    pub port: u16,
    /// The URL path its client talks to.
    pub path: &'static str,
    pub model: Model,
    /// Whether prompts in flight at once share one connection (as streams of it) rather
    /// than each taking a connection of its own.
    pub multiplexed: bool,
    /// Whether `reuse` mode keeps a connection for the next prompt: false where the
    /// server closes it after each answer (the handoff server's daemon), so every prompt
    /// takes a connection of its own in either mode.
    pub keeps_connections: bool,
    /// Connections each prompt opens of its own, kept or not, besides the one it is
    /// sent on: the fan-out's WebSocket to a gateway, one a session. 0 elsewhere.
    pub session_connections: u32,
    /// What its connections speak and how its bodies carry tokens, for the anatomy of
    /// its captures.
    pub wire: Wire,
    /// The library its QUIC server and client are built on, with its version, where
    /// the figures could depend on it (the WebTransport stacks, quinn): reports and
    /// run.json name it beside the approach.
    pub stack: Option<&'static str>,
    /// What lab's browser client speaks to its server, if it can (`client: browser`):
    /// the browser's WebTransport, fetch() or WebSocket.
    pub browser: Option<lab_clients::browser::Kind>,
    /// A latency its server reports about itself in a response header, which records
    /// carry and reports summarize (the handoff server's hand-off).
    pub timing: Option<&'static lab_clients::ServerTiming>,
    /// A process its server starts of its own, run as `lab helper <server> --config
    /// <json>` (the handoff server's streaming daemon).
    pub helper: Option<HelperFn>,
    /// Parts of it that run as processes of their own, each as `lab part <server>
    /// <part>`, as nodes of a topology (the fan-out's API servers and gateways).
    pub parts: &'static [lab_servers::Part],
    pub serve: ServeFn,
    pub runner: RunnerFn,
}

/// Every approach, in the order reports list them by default.
pub static ENTRIES: &[Entry] = &[
    Entry {
        name: "raw",
        about: "the raw OpenAI-compatible API behind a TLS proxy",
        server: "proxy",
        server_about: "TLS-terminating streaming reverse proxy to an OpenAI-compatible upstream (the raw-API approach)",
        transport: Transport::Tcp,
        port: 11435,
        path: lab_servers::proxy::PATH,
        model: Model::Client,
        multiplexed: false,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::Http1,
            body: Body::OpenAi,
        },
        stack: None,
        browser: None,
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::proxy::start,
        runner: lab_clients::raw::runner,
    },
    Entry {
        name: "sse",
        about: "HTTP Server-Sent Events over TLS",
        server: "sse",
        server_about: "HTTP SSE server over TLS: POST /chat {\"message\": ...} streams one event per token",
        transport: Transport::Tcp,
        port: 8080,
        path: lab_servers::sse::PATH,
        model: Model::Server,
        multiplexed: false,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::Http1,
            body: Body::Sse,
        },
        stack: None,
        browser: Some(lab_clients::browser::Kind::Sse),
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::sse::start,
        runner: lab_clients::sse::runner,
    },
    Entry {
        name: "sse-h2",
        about: "HTTP Server-Sent Events over HTTP/2 and TLS",
        server: "sse-h2",
        server_about: "The SSE server over HTTP/2 (TLS, ALPN h2): concurrent prompts are streams of one connection",
        transport: Transport::Tcp,
        port: 8443,
        path: lab_servers::sse_h2::PATH,
        model: Model::Server,
        multiplexed: true,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::Http2,
            body: Body::Sse,
        },
        stack: None,
        browser: Some(lab_clients::browser::Kind::Sse),
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::sse_h2::start,
        runner: lab_clients::sse_h2::runner,
    },
    Entry {
        name: "handoff",
        about: "SSE from a streaming daemon that a front process hands each socket to (SCM_RIGHTS), plain HTTP",
        server: "handoff",
        server_about: "Front process and streaming daemon: the front reads POST /chat and passes the socket and a JSON record over a Unix socket (SCM_RIGHTS); the daemon writes the SSE answer. Plain HTTP, no TLS",
        transport: Transport::Tcp,
        port: 8081,
        path: lab_servers::handoff::PATH,
        model: Model::Server,
        multiplexed: false,
        keeps_connections: false,
        session_connections: 0,
        wire: Wire {
            app: App::PlainHttp1,
            body: Body::Sse,
        },
        stack: None,
        browser: None,
        timing: Some(&lab_clients::handoff::TIMING),
        helper: Some(lab_servers::handoff::helper),
        parts: &[],
        serve: lab_servers::handoff::start,
        runner: lab_clients::handoff::runner,
    },
    Entry {
        name: "ws",
        about: "WebSocket over TLS (RFC 6455)",
        server: "ws",
        server_about: "WebSocket server over TLS: GET /ws, a text message per prompt, one per token, an empty one at the end",
        transport: Transport::Tcp,
        port: 9001,
        path: lab_servers::ws::PATH,
        model: Model::Server,
        multiplexed: false,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::WebSocket,
            body: Body::Text,
        },
        stack: None,
        browser: Some(lab_clients::browser::Kind::Ws),
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::ws::start,
        runner: lab_clients::ws::runner,
    },
    Entry {
        name: "fanout",
        about: "tokens fanned out through a broker: REST to API servers, a WebSocket from a gateway (the Centrifugo architecture)",
        server: "fanout",
        server_about: "The fan-out in one process over TLS, broker inside: POST /v1/sessions, GET /v1/sessions/<id>/ws, POST .../run, DELETE (in a lab: `lab fanout api|gateway` nodes, Redis, HAProxy)",
        transport: Transport::Tcp,
        port: 9002,
        path: lab_servers::fanout::PATH,
        model: Model::Server,
        multiplexed: false,
        keeps_connections: true,
        session_connections: 1,
        wire: Wire {
            app: App::WebSocket,
            body: Body::Relay,
        },
        stack: None,
        browser: None,
        timing: Some(&lab_clients::fanout::TIMING),
        helper: None,
        parts: lab_servers::fanout::PARTS,
        serve: lab_servers::fanout::start,
        runner: lab_clients::fanout::runner,
    },
    Entry {
        name: "wt",
        about: "WebTransport over QUIC (HTTP/3)",
        server: "wt",
        server_about: "WebTransport server over HTTP/3: session path /wt, length-prefixed tokens per stream",
        transport: Transport::Udp,
        port: 4433,
        path: lab_servers::wt::PATH,
        model: Model::Server,
        multiplexed: true,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::WebTransport,
            body: Body::LenPrefix,
        },
        stack: Some(lab_servers::wt::STACK),
        browser: Some(lab_clients::browser::Kind::Wt),
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::wt::start,
        runner: lab_clients::wt::runner,
    },
    Entry {
        name: "wt-dgram",
        about: "WebTransport datagrams: a token per datagram, never sent again",
        server: "wt-dgram",
        server_about: "WebTransport server, session path /wt-dgram: a token per datagram, the tally and end on the request stream",
        transport: Transport::Udp,
        port: 4435,
        path: lab_servers::wt_dgram::PATH,
        model: Model::Server,
        multiplexed: true,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::WebTransport,
            body: Body::Datagram,
        },
        stack: Some(lab_servers::wt::STACK),
        browser: Some(lab_clients::browser::Kind::WtDatagrams),
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::wt_dgram::start,
        runner: lab_clients::wt_dgram::runner,
    },
    Entry {
        name: "wtq",
        about: "WebTransport over QUIC (HTTP/3) on a second stack: web-transport-quinn",
        server: "wtq",
        server_about: "WebTransport server on web-transport-quinn, SETTINGS in 0.5-RTT: session path /wtq, length-prefixed tokens per stream",
        transport: Transport::Udp,
        port: 4436,
        path: lab_servers::wtq::PATH,
        model: Model::Server,
        multiplexed: true,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::WebTransport,
            body: Body::LenPrefix,
        },
        stack: Some(lab_servers::wtq::STACK),
        browser: Some(lab_clients::browser::Kind::Wt),
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::wtq::start,
        runner: lab_clients::wtq::runner,
    },
    Entry {
        name: "wtq-dgram",
        about: "WebTransport datagrams on web-transport-quinn: a token per datagram, never sent again",
        server: "wtq-dgram",
        server_about: "WebTransport server on web-transport-quinn, session path /wtq-dgram: a token per datagram, the tally and end on the request stream",
        transport: Transport::Udp,
        port: 4437,
        path: lab_servers::wtq_dgram::PATH,
        model: Model::Server,
        multiplexed: true,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::WebTransport,
            body: Body::Datagram,
        },
        stack: Some(lab_servers::wtq::STACK),
        browser: Some(lab_clients::browser::Kind::WtDatagrams),
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::wtq_dgram::start,
        runner: lab_clients::wtq_dgram::runner,
    },
    Entry {
        name: "quic",
        about: "raw QUIC streams (quinn, no HTTP/3), 0-RTT on resumption",
        server: "quic",
        server_about: "Raw QUIC server (ALPN lab-quic, no HTTP/3): length-prefixed tokens per stream, 0-RTT accepted",
        transport: Transport::Udp,
        port: 4434,
        path: lab_servers::quic::PATH,
        model: Model::Server,
        multiplexed: true,
        keeps_connections: true,
        session_connections: 0,
        wire: Wire {
            app: App::Quic,
            body: Body::LenPrefix,
        },
        stack: Some(lab_servers::quic::STACK),
        browser: None,
        timing: None,
        helper: None,
        parts: &[],
        serve: lab_servers::quic::start,
        runner: lab_clients::quic::runner,
    },
    // A test-only approach: the proof that an approach is its modules and this entry.
    #[cfg(test)]
    twin::ENTRY,
];

/// A handle on a registry entry: what topologies, plans and records carry. It reads and
/// writes as the approach's name.
#[derive(Clone, Copy)]
pub struct Approach(&'static Entry);

impl std::ops::Deref for Approach {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        self.0
    }
}

impl PartialEq for Approach {
    fn eq(&self, o: &Self) -> bool {
        std::ptr::eq(self.0, o.0)
    }
}
impl Eq for Approach {}

impl std::hash::Hash for Approach {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.name.hash(h);
    }
}

impl fmt::Debug for Approach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl fmt::Display for Approach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

/// Every approach, in registry order.
pub fn all() -> impl Iterator<Item = Approach> {
    ENTRIES.iter().map(Approach)
}

/// The names of every approach, e.g. `raw, sse, wt`.
pub fn names() -> String {
    all().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

/// The approach whose `lab serve` server is `server`.
pub fn by_server(server: &str) -> Option<Approach> {
    all().find(|a| a.server == server)
}

impl std::str::FromStr for Approach {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        all()
            .find(|a| a.name == s)
            .ok_or_else(|| format!("approach '{s}' is not supported; supported: {}", names()))
    }
}

impl Approach {
    /// Whether its server can run as several processes on one port (`lab serve
    /// --workers`, SO_REUSEPORT): a TCP server with no process of its own beside it.
    pub fn shares_port(&self) -> bool {
        self.transport == Transport::Tcp && self.helper.is_none() && self.parts.is_empty()
    }

    /// The URL of this approach's server at `addr` (host and port).
    pub fn url(&self, addr: impl fmt::Display) -> String {
        let scheme = if self.wire.app.tls() { "https" } else { "http" };
        format!("{scheme}://{addr}{}", self.path)
    }

    /// This approach's runner for `url`; a URL without a path gets the approach's.
    pub fn runner(&self, url: &str, opts: &RunnerOpts) -> Result<Box<dyn Runner>> {
        let mut target = Target::parse(url)?;
        if target.tls != self.wire.app.tls() {
            anyhow::bail!(
                "'{url}': the {} server speaks {}; use {}",
                self.server,
                if self.wire.app.tls() {
                    "TLS"
                } else {
                    "plain HTTP, no TLS"
                },
                self.url(&target.authority)
            );
        }
        if target.path.is_empty() || target.path == "/" {
            target.path = self.path.to_owned();
        }
        (self.runner)(target, opts)
    }

    /// The browser client for `url` (a URL without a path gets the approach's), in
    /// headless Chromium; `eventsource` takes SSE by EventSource instead of fetch().
    pub fn browser_runner(
        &self,
        url: &str,
        opts: &RunnerOpts,
        dir: &std::path::Path,
        chromium: &std::path::Path,
        eventsource: bool,
    ) -> Result<Box<dyn Runner>> {
        use lab_clients::browser::{BrowserSpec, Kind};
        let Some(mut kind) = self.browser else {
            anyhow::bail!(
                "the browser client does not speak {} (it speaks {})",
                self.name,
                all()
                    .filter(|a| a.browser.is_some())
                    .map(|a| a.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if eventsource {
            if kind != Kind::Sse {
                anyhow::bail!(
                    "--eventsource is for an SSE server; {} is not one",
                    self.name
                );
            }
            kind = Kind::SseEventSource;
        }
        let mut target = Target::parse(url)?;
        if target.path.is_empty() || target.path == "/" {
            target.path = self.path.to_owned();
        }
        let spec = BrowserSpec {
            kind,
            dir: dir.to_owned(),
            chromium: chromium.to_owned(),
        };
        lab_clients::browser::client(target, opts, &spec)
    }

    /// Sets up this approach's server on `listener`; the result serves until dropped.
    pub fn serve(&self, listener: Listener, env: ServerEnv) -> Result<Serving> {
        (self.serve)(listener, env)
    }
}

impl serde::Serialize for Approach {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

impl<'de> serde::Deserialize<'de> for Approach {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Approach {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Approach".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = all().map(|a| a.name).collect();
        let about: Vec<String> = all().map(|a| format!("{}: {}", a.name, a.about)).collect();
        schemars::json_schema!({
            "type": "string",
            "enum": names,
            "description": format!("An approach. {}.", about.join("; ")),
        })
    }
}

/// Lets clap parse an approach by name and list the names in `--help`.
#[derive(Debug, Clone, Copy)]
pub struct Parser;

impl clap::builder::TypedValueParser for Parser {
    type Value = Approach;
    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Approach, clap::Error> {
        let s = value.to_string_lossy();
        s.parse().map_err(|e: String| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e}\n")).with_cmd(cmd)
        })
    }
    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(all().map(|a| {
            clap::builder::PossibleValue::new(a.name).help(a.about)
        })))
    }
}

impl clap::builder::ValueParserFactory for Approach {
    type Parser = Parser;
    fn value_parser() -> Parser {
        Parser
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ports_and_servers_are_unique() {
        let v: Vec<Approach> = all().collect();
        for (i, a) in v.iter().enumerate() {
            for b in &v[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.server, b.server);
                assert!(
                    a.port != b.port || a.transport != b.transport,
                    "{a} and {b} share a port"
                );
            }
            // An HTTP path, or none (raw QUIC has no HTTP).
            assert!(
                a.path.is_empty() || a.path.starts_with('/'),
                "{a}: {}",
                a.path
            );
            assert_ne!(a.server, "llm", "`lab serve llm` is the mock");
        }
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_supported_ones() {
        for a in all() {
            assert_eq!(a.name.parse::<Approach>().unwrap(), a);
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{}\"", a.name));
            assert_eq!(serde_json::from_str::<Approach>(&json).unwrap(), a);
        }
        let e = "smoke-signals".parse::<Approach>().unwrap_err();
        assert_eq!(
            e,
            format!(
                "approach 'smoke-signals' is not supported; supported: {}",
                names()
            )
        );
        assert_eq!(
            names(),
            // (With the test-only entry, which unit tests see.)
            "raw, sse, sse-h2, handoff, ws, fanout, wt, wt-dgram, wtq, wtq-dgram, quic, twin"
        );
    }

    #[test]
    fn urls_take_the_approach_path() {
        let wt: Approach = "wt".parse().unwrap();
        assert_eq!(wt.url("198.18.2.2:4433"), "https://198.18.2.2:4433/wt");
        let d: Approach = "wt-dgram".parse().unwrap();
        assert_eq!(d.url("198.18.2.2:4435"), "https://198.18.2.2:4435/wt-dgram");
        let h: Approach = "handoff".parse().unwrap();
        assert_eq!(h.url("198.18.2.2:8081"), "http://198.18.2.2:8081/chat");
        assert_eq!(by_server("proxy").map(|a| a.name), Some("raw"));
        assert!(by_server("raw").is_none());
    }

    #[test]
    fn a_url_of_the_wrong_scheme_names_the_right_one() {
        let opts = RunnerOpts::new(
            "handoff",
            lab_clients::record::Mode::Reuse,
            std::time::Duration::from_secs(1),
            lab_codec::trust::Trust::Insecure,
            "m",
        );
        let h: Approach = "handoff".parse().unwrap();
        let e = h
            .runner("https://127.0.0.1:8081", &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("plain HTTP") && e.contains("http://127.0.0.1:8081/chat"),
            "{e}"
        );
        let sse: Approach = "sse".parse().unwrap();
        let e = sse
            .runner("http://127.0.0.1:8080", &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("TLS") && e.contains("https://127.0.0.1:8080/chat"),
            "{e}"
        );
        assert!(h.runner("http://127.0.0.1:8081", &opts).is_ok());
    }
}
