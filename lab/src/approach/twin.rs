//! `twin`: a test-only approach, the proof that adding one takes its own modules and one
//! registry entry and nothing else. Its server and runner are the SSE server's and
//! runner's under a name of their own; it exists in lab's unit-test build only, where the
//! topology parser, the plan, the servers' start-up and the clients take it from the
//! registry like any other approach.

use super::{App, Body, Entry, Model, Transport, Wire};
use anyhow::Result;
use lab_clients::{Runner, RunnerOpts, Target};
use lab_servers::{Listener, ServerEnv, Serving};

/// Its server: the SSE server.
fn start(listener: Listener, env: ServerEnv) -> Result<Serving> {
    lab_servers::sse::start(listener, env)
}

/// Its runner: the SSE runner.
fn runner(target: Target, opts: &RunnerOpts) -> Result<Box<dyn Runner>> {
    lab_clients::sse::runner(target, opts)
}

/// Its registry entry.
pub const ENTRY: Entry = Entry {
    name: "twin",
    about: "a test-only approach: the SSE server and runner under a name of their own",
    server: "twin",
    server_about: "the SSE server, as a test-only approach",
    transport: Transport::Tcp,
    port: 18080,
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
    browser: None,
    timing: None,
    helper: None,
    parts: &[],
    serve: start,
    runner,
};

#[cfg(test)]
mod tests {
    use crate::approach::Approach;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    fn twin() -> Approach {
        "twin"
            .parse()
            .expect("the registry has the test-only approach")
    }

    /// A topology names it, and the plan gives it a cell, a server process and a port.
    #[test]
    fn topologies_and_plans_take_it_from_the_registry() {
        let t = crate::topology::parse::parse(
            "t.yaml",
            "name: tw\napproaches: [sse, twin]\nprofiles:\n  base: { delay: 5ms }\n",
        )
        .expect("valid topology");
        let p = crate::plan::plan(&t).expect("plan");
        let cell = p.cells.iter().find(|c| c.name == "twin").expect("its cell");
        assert_eq!(cell.approach, twin());
        let text = crate::plan::render::render(&p);
        assert!(text.contains("twin"), "{text}");
        assert!(text.contains("18080"), "{text}");
        // Unknown names are still refused, with the list that now includes it.
        let e = crate::topology::parse::parse(
            "t.yaml",
            "name: tw\napproaches: [twins]\nprofiles:\n  base: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twin"), "{e}");
    }

    /// Its server and runner, started through the registry, carry the mock's answer whole:
    /// the same digest as the SSE approach's for the same prompt.
    #[tokio::test]
    async fn it_serves_and_measures_through_the_registry() {
        let cfg = lab_servers::llm::MockConfig {
            ttft: Duration::from_millis(2),
            tbt: Duration::from_millis(1),
            jitter: 0.0,
            max_tokens: Some(12),
            models: vec!["m".into()],
            ..Default::default()
        };
        let mock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = format!("http://{}", mock.local_addr().unwrap());
        tokio::spawn(lab_servers::llm::serve(
            mock,
            Arc::new(cfg),
            Default::default(),
        ));
        let cert = lab_servers::tls::CertKey::generate(&[]).unwrap();
        let mut digests = Vec::new();
        for a in [twin(), "sse".parse().unwrap()] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let env = lab_servers::ServerEnv {
                cert: cert.clone(),
                upstream: upstream.clone(),
                model: "m".into(),
                upstream_h2: false,
                sampling: Default::default(),
                stats: Default::default(),
                limits: Default::default(),
                transport: Default::default(),
                program: None,
            };
            tokio::spawn(a.serve(lab_servers::Listener::Tcp(l), env).unwrap());
            let opts = lab_clients::RunnerOpts::new(
                a.name,
                lab_clients::record::Mode::Reuse,
                Duration::from_secs(10),
                lab_codec::trust::Trust::Pin(cert.sha256),
                "m",
            );
            let mut r = a.runner(&a.url(addr), &opts).unwrap();
            let mut sink = |_: &str| {};
            let rec = r
                .run(0, &lab_clients::Prompt::new("hello twin"), &mut sink)
                .await;
            r.close().await;
            assert!(rec.error.is_none(), "{a}: {:?}", rec.error);
            assert_eq!(rec.tokens, 12, "{a}");
            digests.push(rec.digest);
        }
        assert_eq!(digests[0], digests[1]);
    }

    /// The words of a line, lower case: identifiers split at `_` and where lower case
    /// turns upper (`twin_port`, `TwinEntry` and `TWIN` each have the word `twin`).
    fn words(code: &str) -> impl Iterator<Item = String> + '_ {
        code.split(|c: char| !c.is_ascii_alphanumeric())
            .flat_map(|w| {
                let mut parts = vec![String::new()];
                let mut prev_lower = false;
                for c in w.chars() {
                    if c.is_ascii_uppercase() && prev_lower {
                        parts.push(String::new());
                    }
                    prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
                    parts.last_mut().unwrap().push(c.to_ascii_lowercase());
                }
                parts
            })
    }

    /// The source files that name it: the registry and its own module, nothing else.
    /// (A comment may name anything; the scan reads code and strings.)
    #[test]
    fn only_the_registry_and_its_own_module_name_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<PathBuf> = Vec::new();
        let mut stack: Vec<PathBuf> = ["lab/src", "clients/src", "servers/src", "codec/src"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut naming: Vec<String> = files
            .iter()
            .filter(|f| {
                std::fs::read_to_string(f).unwrap().lines().any(|l| {
                    let code = l.split("//").next().unwrap_or("");
                    words(code).any(|w| w == "twin")
                })
            })
            .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        naming.sort();
        assert_eq!(naming, ["lab/src/approach.rs", "lab/src/approach/twin.rs"]);
    }
}
