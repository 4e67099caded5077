//! `llm:` and `workload:` (with a load test's `load:`).

use super::ctx::{Ctx, Field, build, pos};
use super::model::*;
use marked_yaml::Node;

/// `llm:`: the embedded mock (and its settings) or an upstream's URL, and the model.
pub(super) fn parse_llm(cx: &mut Ctx<'_>, v: &Node) -> Option<Llm> {
    let (good, extra) = cx.fields::<Llm>(v, "llm", &["mock", "sampling"])?;
    let mut l: Llm = build(v, &good);
    for f in &extra {
        match f.name() {
            "mock" => l.mock = cx.section::<MockSpec>(f.value, &f.path),
            _ => l.sampling = cx.section::<SamplingSpec>(f.value, &f.path),
        }
    }
    let at = pos(v);
    // Where a field's value was written, for problems with the value.
    let field_at = |name: &str| {
        good.iter()
            .chain(&extra)
            .find(|f| f.name() == name)
            .map_or(at, |f| pos(f.value))
    };
    if let Some(f) = extra.iter().find(|f| f.name() == "sampling") {
        if l.url.is_none() {
            cx.push(
                pos(f.value),
                "llm.sampling",
                "is for a real upstream (`url`): the mock's answers are fixed by its seed (mock.seed, mock.max_tokens)",
            );
        }
        if l.sampling
            .is_some_and(|s| s.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)))
        {
            cx.push(pos(f.value), "llm.sampling.temperature", "must be 0 to 2");
        }
        if l.sampling.is_some_and(|s| s.max_tokens == Some(0)) {
            cx.push(
                pos(f.value),
                "llm.sampling.max_tokens",
                "must be at least 1",
            );
        }
    }
    if let Some(m) = extra.iter().find(|f| f.name() == "mock")
        && l.mock
            .as_ref()
            .and_then(|m| m.chunk_tokens)
            .is_some_and(|n| !(1..=64).contains(&n))
    {
        cx.push(pos(m.value), "llm.mock.chunk_tokens", "must be 1 to 64");
    }
    if extra.iter().any(|f| f.name() == "mock") && good.iter().any(|f| f.name() == "url") {
        cx.push(
            field_at("url"),
            "llm",
            "give either `mock` or `url`, not both",
        );
    }
    if let Some(u) = &l.url {
        let at = field_at("url");
        match u.parse::<http::Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && url_port(&uri).is_some_and(|p| !matches!(p.parse::<u16>(), Ok(1..))) =>
            {
                cx.push(
                    at,
                    "llm.url",
                    format!(
                        "'{u}': port {} is out of range; a port is 1 to 65535",
                        url_port(&uri).unwrap_or_default()
                    ),
                );
            }
            Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
                if !matches!(uri.path_and_query().map(|p| p.as_str()), None | Some("/")) {
                    cx.push(
                        at,
                        "llm.url",
                        format!(
                            "'{u}' has a path; give the server's base URL (lab relays TCP to its host and port, and the servers add /v1/...), e.g. http://127.0.0.1:11434"
                        ),
                    );
                }
            }
            Ok(uri) if uri.scheme_str() == Some("https") => cx.push(
                at,
                "llm.url",
                format!(
                    "'{u}': lab relays plain TCP to the upstream, so it must be http://; for an https upstream run a local forwarder and give its http:// address"
                ),
            ),
            _ => cx.push(
                at,
                "llm.url",
                format!("'{u}' is not an http URL with a host; e.g. http://127.0.0.1:11434"),
            ),
        }
    }
    if l.model.trim().is_empty() {
        cx.push(field_at("model"), "llm.model", "empty model name");
    }
    Some(l)
}

/// The port of a URL as written (`http::Uri` drops one that is not a u16).
fn url_port(uri: &http::Uri) -> Option<String> {
    let auth = uri.authority()?.as_str();
    let host_end = auth.rfind(']').unwrap_or(0);
    auth[host_end..].rsplit_once(':').map(|(_, p)| p.to_owned())
}

/// `workload:`: prompts, repeats, concurrency, runs and, for a load test, `load:`.
pub(super) fn parse_workload(cx: &mut Ctx<'_>, v: &Node) -> Option<Workload> {
    let (good, extra) = cx.fields::<Workload>(v, "workload", &["load"])?;
    let mut w: Workload = build(v, &good);
    if let Some(f) = extra.first() {
        w.load = parse_load(cx, f.value);
        // What a prompt run does and a load test does not: refuse, rather than ignore.
        for (name, set) in [
            ("repeat", w.repeat != 1),
            ("concurrency", w.concurrency != 1),
            ("urgent", !w.urgent.is_empty()),
        ] {
            if set {
                cx.push(
                    good.iter()
                        .find(|g| g.name() == name)
                        .map_or(pos(v), Field::at),
                    &format!("workload.{name}"),
                    "has no meaning in a load test (workload.load): its levels say how many streams run at once",
                );
            }
        }
    }
    let at = |name: &str| {
        good.iter()
            .find(|f| f.name() == name)
            .map_or(pos(v), Field::at)
    };
    if w.repeat == 0 {
        cx.push(at("repeat"), "workload.repeat", "must be at least 1");
    }
    if !(1..=MAX_RUNS).contains(&w.runs) {
        cx.push(
            at("runs"),
            "workload.runs",
            format!("must be 1 to {MAX_RUNS}: runs of the whole matrix, e.g. 5"),
        );
    }
    if !(1..=MAX_CONCURRENCY).contains(&w.concurrency) {
        cx.push(
            at("concurrency"),
            "workload.concurrency",
            format!("must be 1 to {MAX_CONCURRENCY}"),
        );
    }
    if w.urgent.contains(&0) {
        cx.push(
            at("urgent"),
            "workload.urgent",
            "prompts are numbered from 1, as the prompt lines show them",
        );
    }
    if w.timeout.is_some_and(|t| t.0.is_zero()) {
        cx.push(
            at("timeout"),
            "workload.timeout",
            "must be above zero; it bounds each prompt, e.g. 30s",
        );
    }
    if w.prompts.trim().is_empty() {
        cx.push(
            at("prompts"),
            "workload.prompts",
            "empty; use `reference` or a prompts file",
        );
    }
    Some(w)
}

/// `workload.load:`: the levels of concurrent streams and how each is held.
fn parse_load(cx: &mut Ctx<'_>, v: &Node) -> Option<LoadWorkload> {
    let (good, extra) = cx.fields::<LoadWorkload>(v, "workload.load", &["slo"])?;
    let mut l: LoadWorkload = build(v, &good);
    for f in &extra {
        l.slo = cx.section::<SloSpec>(f.value, &f.path);
    }
    let at = |name: &str| {
        good.iter()
            .find(|f| f.name() == name)
            .map_or(pos(v), Field::at)
    };
    let path = |f: &str| format!("workload.load.{f}");
    let given = |name: &str| good.iter().any(|f| f.name() == name);
    let ways = ["levels", "rates", "trace"]
        .into_iter()
        .filter(|n| given(n))
        .collect::<Vec<_>>();
    if ways.is_empty() {
        cx.push(
            pos(v),
            "workload.load.levels",
            "missing: a load test needs its levels of concurrent streams, e.g. `levels: [100, 1000, 10000]`, or an open loop's `rates` (requests per second, e.g. [10, 20, 40]) or `trace`",
        );
    } else if ways.len() > 1 {
        cx.push(
            at(ways[1]),
            &path(ways[1]),
            format!(
                "give one of `levels` (concurrent streams), `rates` or `trace` (open loop), not {}",
                ways.join(" and ")
            ),
        );
    }
    check_slo(cx, &l, &at);
    check_lengths(cx, &l, &at, given("tokens"));
    if l.is_open() {
        check_open(cx, &l, &at);
    } else {
        for name in OPEN_ONLY {
            if given(name) {
                cx.push(
                    at(name),
                    &path(name),
                    "is for an open loop (`rates` or `trace`); levels of concurrent streams run back to back",
                );
            }
        }
    }
    if given("levels") && l.levels.is_empty() {
        cx.push(
            at("levels"),
            &path("levels"),
            "empty: list at least one level, e.g. [100, 1000]",
        );
    }
    if l.levels.iter().any(|&n| !(1..=MAX_LEVEL).contains(&n)) {
        cx.push(
            at("levels"),
            &path("levels"),
            format!("each level is 1 to {MAX_LEVEL} concurrent streams"),
        );
    }
    if l.hold.is_some() && l.cycles.is_some() {
        cx.push(
            at("cycles"),
            &path("cycles"),
            "give either `hold` (time at each level) or `cycles` (streams per slot), not both",
        );
    }
    if l.hold.is_some_and(|h| h.0.is_zero()) {
        cx.push(
            at("hold"),
            &path("hold"),
            "must be above zero, e.g. 30s (or use `cycles`)",
        );
    }
    if l.cycles == Some(0) {
        cx.push(at("cycles"), &path("cycles"), "must be at least 1");
    }
    if l.tokens == Some(0) {
        cx.push(at("tokens"), &path("tokens"), "must be at least 1");
    }
    let (b0, b1) = l.backoff();
    if b0 > b1 {
        cx.push(
            at("backoff"),
            &path("backoff"),
            format!(
                "{} is over backoff_max ({}); the first wait cannot be longer than the longest",
                crate::topology::units::Dur(b0),
                crate::topology::units::Dur(b1)
            ),
        );
    }
    check_counts(cx, &l, &at);
    let s = l.sample();
    if s < std::time::Duration::from_millis(50) || s > std::time::Duration::from_secs(60) {
        cx.push(at("sample"), &path("sample"), "must be 50ms to 60s");
    }
    Some(l)
}

/// Streams per connection, and the load generator's and the server's processes.
fn check_counts(cx: &mut Ctx<'_>, l: &LoadWorkload, at: &dyn Fn(&str) -> super::ctx::At) {
    let path = |f: &str| format!("workload.load.{f}");
    if l.per_connection.is_some_and(|n| !(1..=10_000).contains(&n)) {
        cx.push(
            at("per_connection"),
            &path("per_connection"),
            "must be 1 to 10000",
        );
    }
    if l.workers.is_some_and(|n| !(1..=64).contains(&n)) {
        cx.push(
            at("workers"),
            &path("workers"),
            "must be 1 to 64 load generator processes (leave it out for one per 15000 streams of the highest level)",
        );
    }
    if l.server_workers.is_some_and(|n| !(1..=64).contains(&n)) {
        cx.push(
            at("server_workers"),
            &path("server_workers"),
            "must be 1 to 64 server processes (leave it out for one per 15000 streams of the highest level)",
        );
    }
}

/// `prompt_words` and `answer_tokens`: length distributions; `answer_tokens` not beside
/// `tokens` (every answer's length).
fn check_lengths(
    cx: &mut Ctx<'_>,
    l: &LoadWorkload,
    at: &dyn Fn(&str) -> super::ctx::At,
    tokens: bool,
) {
    let path = |f: &str| format!("workload.load.{f}");
    if let Some(w) = &l.prompt_words
        && let Err(e) = w.parse::<lab_clients::prompts::Lengths>()
    {
        cx.push(at("prompt_words"), &path("prompt_words"), e);
    }
    if let Some(w) = &l.answer_tokens {
        if let Err(e) = lab_clients::prompts::Lengths::parse_in(w, "tokens") {
            cx.push(at("answer_tokens"), &path("answer_tokens"), e);
        } else if tokens {
            cx.push(
                at("answer_tokens"),
                &path("answer_tokens"),
                "give one of `tokens` (every answer's length) or `answer_tokens` (a length per prompt, from a distribution), not both",
            );
        }
    }
}

/// Fields of an open loop only.
const OPEN_ONLY: &[&str] = &[
    "arrivals",
    "burstiness",
    "duration",
    "max_requests",
    "warmup",
    "cooldown",
    "lag_bound",
    "max_in_flight",
    "search",
];

/// An open loop's fields: rates, the arrival process, the periods, the SLOs' search.
fn check_open(cx: &mut Ctx<'_>, l: &LoadWorkload, at: &dyn Fn(&str) -> super::ctx::At) {
    let path = |f: &str| format!("workload.load.{f}");
    for (name, set) in [
        ("hold", l.hold.is_some()),
        ("cycles", l.cycles.is_some()),
        ("per_connection", l.per_connection.is_some()),
        ("workers", l.workers.is_some()),
    ] {
        if set {
            cx.push(
                at(name),
                &path(name),
                "is for levels of concurrent streams; an open loop sends each request at its time, for `duration`",
            );
        }
    }
    if l.rates
        .iter()
        .any(|r| !(r.is_finite() && *r > 0.0 && *r <= 1e6))
    {
        cx.push(
            at("rates"),
            &path("rates"),
            "each rate is above 0 and at most 1000000 requests per second, e.g. [0.5, 2, 8]",
        );
    }
    if let Err(e) = lab_clients::arrivals::Process::named(
        l.arrivals.as_deref().unwrap_or("poisson"),
        l.burstiness,
    ) {
        let name = if l.burstiness.is_some() && l.arrivals.is_some() {
            "burstiness"
        } else {
            "arrivals"
        };
        cx.push(at(name), &path(name), format!("{e:#}"));
    }
    if l.trace.is_some() && (l.arrivals.is_some() || l.burstiness.is_some()) {
        cx.push(
            at("arrivals"),
            &path("arrivals"),
            "a trace gives its own send times; `arrivals` and `burstiness` are for `rates`",
        );
    }
    if l.trace.as_deref().is_some_and(|t| t.trim().is_empty()) {
        cx.push(
            at("trace"),
            &path("trace"),
            "empty; give a file of send times",
        );
    }
    if l.duration.is_some_and(|d| d.0.is_zero()) {
        cx.push(
            at("duration"),
            &path("duration"),
            "must be above zero, e.g. 30s",
        );
    }
    let d = l.duration();
    let warm = l.warmup.map_or(std::time::Duration::ZERO, |w| w.0)
        + l.cooldown.map_or(std::time::Duration::ZERO, |w| w.0);
    if l.trace.is_none() && warm >= d {
        cx.push(
            at("warmup"),
            &path("warmup"),
            format!(
                "warmup and cooldown ({}) leave nothing of the duration ({}) to measure",
                crate::topology::units::Dur(warm),
                crate::topology::units::Dur(d)
            ),
        );
    }
    if l.trace.is_none() && l.ramp() > d {
        cx.push(
            at("ramp"),
            &path("ramp"),
            "is longer than the duration; the ramp is the duration's first part",
        );
    }
    if l.max_requests == Some(0) {
        cx.push(
            at("max_requests"),
            &path("max_requests"),
            "must be at least 1",
        );
    }
    if l.max_in_flight
        .is_some_and(|n| !(1..=MAX_LEVEL as u64).contains(&n))
    {
        cx.push(
            at("max_in_flight"),
            &path("max_in_flight"),
            format!("must be 1 to {MAX_LEVEL}"),
        );
    }
    if l.lag_bound.is_some_and(|d| d.0.is_zero()) {
        cx.push(
            at("lag_bound"),
            &path("lag_bound"),
            "must be above zero, e.g. 10ms",
        );
    }
}

/// The SLOs, and the search for the highest rate that meets them.
fn check_slo(cx: &mut Ctx<'_>, l: &LoadWorkload, at: &dyn Fn(&str) -> super::ctx::At) {
    let path = |f: &str| format!("workload.load.{f}");
    if l.search.is_some_and(|n| n > 10) {
        cx.push(at("search"), &path("search"), "must be 0 to 10 halvings");
    }
    if l.search.unwrap_or(0) > 0 {
        if l.slo.is_none() {
            cx.push(
                at("search"),
                &path("search"),
                "searches for the highest rate at the SLOs: give `slo`, e.g. { ttft: 500ms, e2e: 20s }",
            );
        }
        if l.trace.is_some() {
            cx.push(
                at("search"),
                &path("search"),
                "searches over `rates`, not a trace",
            );
        }
    }
    if let Some(s) = &l.slo {
        if s.ttft.is_none() && s.itl_p99.is_none() && s.tpot.is_none() && s.e2e.is_none() {
            cx.push(
                at("slo"),
                &path("slo"),
                "gives no bound; set any of ttft, itl_p99, tpot, e2e, e.g. { ttft: 500ms, itl_p99: 100ms }",
            );
        }
        if s.share.is_some_and(|p| p.0 <= 0.0) {
            cx.push(at("slo"), &path("slo.share"), "must be above 0%");
        }
    }
}
