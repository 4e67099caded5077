//! Load tests as people read them: a line per level as it ends, and the tables per
//! level with the approaches side by side (outcomes and latency; the server's
//! resources and the wire). Pure.

use crate::metrics::load::LevelResult;
use lab_clients::load::{LevelSummary, Percentiles};

pub(crate) fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}ms"),
        Some(v) if v >= 10.0 => format!("{v:.1}ms"),
        Some(v) => format!("{v:.2}ms"),
    }
}

/// Failed streams by category, e.g. `connect 3, timeout 1`, or `0`.
pub fn errors(s: &LevelSummary) -> String {
    if s.errors.is_empty() {
        return "0".into();
    }
    s.errors
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn pct(s: &LevelSummary) -> String {
    s.success_pct().map_or("-".into(), |p| {
        if p == 100.0 || p == 0.0 {
            format!("{p:.0}%")
        } else {
            format!("{p:.2}%")
        }
    })
}

/// One line for a level that has ended.
pub fn level_line(approach: &str, s: &LevelSummary) -> String {
    let p = |x: &Percentiles| format!("{}/{}/{}", ms(x.p50), ms(x.p95), ms(x.p99));
    if let Some(o) = &s.open {
        return format!(
            "[{approach}] {}: {} sent of {} scheduled, {} completed ({}), errors {}; lag p50/p99/max {}/{}/{}, {} late, {} dropped; TTFT p50/p95/p99 {}, ITL {}; {:.2} req/s, {:.0} tokens/s{}{}",
            s.label(),
            o.sent,
            o.scheduled,
            s.completed,
            pct(s),
            errors(s),
            ms(o.lag_ms.p50),
            ms(o.lag_ms.p99),
            ms(o.lag_ms.max),
            o.late,
            o.dropped,
            p(&s.ttft_ms),
            p(&s.tbt_ms),
            s.requests_per_s,
            s.tokens_per_s,
            s.slo.map_or(String::new(), |v| format!(
                "; good {:.1}% ({:.2}/s){}",
                v.good_pct,
                v.goodput_per_s,
                if v.met { "" } else { ", misses the SLOs" }
            )),
            if o.valid {
                String::new()
            } else {
                format!("; NOT VALID: {}", o.invalid.join("; "))
            }
        );
    }
    format!(
        "[{approach}] level {}: {} started, {} completed ({}), errors {}; peak {} open; TTFT p50/p95/p99 {}, TBT {}; {:.0} tokens/s",
        s.level,
        s.started,
        s.completed,
        pct(s),
        errors(s),
        s.peak_open,
        p(&s.ttft_ms),
        p(&s.tbt_ms),
        s.tokens_per_s
    )
}

#[derive(tabled::Tabled)]
struct LatencyRow {
    #[tabled(rename = "Level")]
    level: String,
    #[tabled(rename = "Approach")]
    approach: String,
    #[tabled(rename = "Started")]
    started: u64,
    #[tabled(rename = "OK")]
    ok: String,
    #[tabled(rename = "Errors")]
    errors: String,
    #[tabled(rename = "Peak open")]
    peak: u64,
    #[tabled(rename = "Connect p50")]
    connect: String,
    #[tabled(rename = "TTFT p50")]
    ttft50: String,
    #[tabled(rename = "TTFT p90")]
    ttft90: String,
    #[tabled(rename = "TTFT p95")]
    ttft95: String,
    #[tabled(rename = "TTFT p99")]
    ttft99: String,
    #[tabled(rename = "TTFT p99.9")]
    ttft999: String,
    #[tabled(rename = "TBT p50")]
    tbt50: String,
    #[tabled(rename = "TBT p95")]
    tbt95: String,
    #[tabled(rename = "TBT p99")]
    tbt99: String,
    #[tabled(rename = "TPOT p50")]
    tpot: String,
    #[tabled(rename = "Duration p50")]
    duration: String,
    #[tabled(rename = "Tokens/s")]
    tokens_per_s: String,
}

fn latency_row(approach: &str, s: &LevelSummary) -> LatencyRow {
    LatencyRow {
        level: column(s),
        approach: approach.to_owned(),
        started: s.started,
        ok: pct(s),
        errors: errors(s),
        peak: s.peak_open,
        connect: ms(s.connect_ms.p50),
        ttft50: ms(s.ttft_ms.p50),
        ttft90: ms(s.ttft_ms.p90),
        ttft95: ms(s.ttft_ms.p95),
        ttft99: ms(s.ttft_ms.p99),
        ttft999: ms(s.ttft_ms.p999),
        tbt50: ms(s.tbt_ms.p50),
        tbt95: ms(s.tbt_ms.p95),
        tbt99: ms(s.tbt_ms.p99),
        tpot: ms(s.tpot_ms.p50),
        duration: ms(s.duration_ms.p50),
        tokens_per_s: format!("{:.0}", s.tokens_per_s),
    }
}

/// The level column: the streams of a level, or an open loop's rate.
fn column(s: &LevelSummary) -> String {
    match s.open {
        None => s.level.to_string(),
        Some(_) => s.label(),
    }
}

/// Where a level sorts: by its streams, or an open loop's rate (a trace first).
fn sort_key(s: &LevelSummary) -> f64 {
    match &s.open {
        None => s.level as f64,
        Some(o) => o.rate.unwrap_or(0.0),
    }
}

/// Rows ordered by level, then by the order the approaches come in.
fn by_level<'a, T>(
    cells: &'a [(String, &'a [T])],
    level: impl Fn(&T) -> f64,
) -> Vec<(&'a str, &'a T)> {
    let mut rows: Vec<(usize, f64, &str, &T)> = Vec::new();
    for (i, (a, levels)) in cells.iter().enumerate() {
        for l in levels.iter() {
            rows.push((i, level(l), a.as_str(), l));
        }
    }
    rows.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
    rows.into_iter().map(|r| (r.2, r.3)).collect()
}

/// The outcome and latency table, from the load generator's summaries alone.
pub fn levels_table(cells: &[(String, &[LevelSummary])]) -> String {
    let rows: Vec<LatencyRow> = by_level(cells, sort_key)
        .into_iter()
        .map(|(a, s)| latency_row(a, s))
        .collect();
    crate::table::markdown(rows)
}

/// The outcome and latency table of a run's load cells.
pub fn latency_table(cells: &[(String, &[LevelResult])]) -> String {
    let rows: Vec<LatencyRow> = by_level(cells, |l| sort_key(&l.summary))
        .into_iter()
        .map(|(a, l)| latency_row(a, &l.summary))
        .collect();
    crate::table::markdown(rows)
}

/// A profile's load test in the report: the two tables per level, then each level's
/// errors (a sample message per category) and any stream whose tokens were wrong.
pub fn section(cells: &[&crate::metrics::CellResult]) -> String {
    let loads: Vec<(String, &[LevelResult])> = cells
        .iter()
        .filter_map(|c| {
            c.load
                .as_ref()
                .map(|l| (c.cell.name.clone(), &l.levels[..]))
        })
        .collect();
    let mut out = String::new();
    let open: Vec<(String, Vec<&LevelSummary>)> = loads
        .iter()
        .map(|(a, l)| (a.clone(), l.iter().map(|x| &x.summary).collect()))
        .collect();
    if super::serving::any_open(open.iter().flat_map(|(_, l)| l.iter().copied())) {
        out.push_str(&super::serving::section(&open));
    } else {
        out.push_str("Streams per level, started in the ramp and kept at the level through the hold (the percentiles are over every stream of the level):\n\n");
        out.push_str(&latency_table(&loads));
    }
    out.push_str("\n\nThe server over each level's hold (RSS and CPU of its process tree, sampled from /proc; KB/stream is the mean RSS over the hold less the idle RSS before the first level, over the level's peak of open streams), and the client's interface over the level:\n\n");
    out.push_str(&resource_table(&loads));
    out.push_str("\n\n");
    for (name, levels) in &loads {
        for l in levels.iter() {
            out.push_str(&server_timing_lines(name, l));
            if let Some(r) = l.summary.relay {
                out.push_str(&r.line(&format!("{name} at {}", l.summary.label())));
            }
        }
    }
    out.push_str("Answers per level: output tokens per completed request, and the tokens a content chunk carried (TPOT and Tok/s count tokens, ITL and TBT the gaps between chunks):

");
    for (name, levels) in &loads {
        for l in levels.iter() {
            out.push_str(&answer_line(name, &l.summary));
        }
    }
    out.push('\n');
    for (name, levels) in &loads {
        for l in levels.iter() {
            for (cat, msg) in &l.summary.error_samples {
                out.push_str(&format!(
                    "- {name} level {}: {} {cat} errors, e.g. {msg}\n",
                    column(&l.summary),
                    l.summary.errors.get(cat).copied().unwrap_or(0)
                ));
            }
            for w in &l.wrong {
                out.push_str(&format!(
                    "- {name} level {}: WRONG TOKENS: {w}\n",
                    column(&l.summary)
                ));
            }
        }
    }
    out.push('\n');
    out
}

#[derive(tabled::Tabled)]
struct ResourceRow {
    #[tabled(rename = "Level")]
    level: String,
    #[tabled(rename = "Approach")]
    approach: String,
    #[tabled(rename = "Server RSS")]
    rss: String,
    #[tabled(rename = "Peak RSS")]
    peak: String,
    #[tabled(rename = "KB/stream")]
    kb: String,
    #[tabled(rename = "Client RSS")]
    client: String,
    #[tabled(rename = "Client KB/stream")]
    client_kb: String,
    #[tabled(rename = "CPU user")]
    user: String,
    #[tabled(rename = "CPU sys")]
    sys: String,
    #[tabled(rename = "Threads")]
    threads: String,
    #[tabled(rename = "FDs")]
    fds: String,
    #[tabled(rename = "Wire B/tok")]
    bpt: String,
    #[tabled(rename = "Pkts/tok")]
    ppt: String,
    #[tabled(rename = "Checked")]
    checked: String,
}

/// A level's answer lengths and its tokens against its chunks, with where the token
/// count came from (the upstream's usage, or the chunks themselves).
pub fn answer_line(name: &str, s: &LevelSummary) -> String {
    let o = &s.output_tokens;
    let n = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let per_chunk = if s.chunks > 0 {
        format!("{:.2}", s.tokens as f64 / s.chunks as f64)
    } else {
        "-".into()
    };
    let source = if s.usage_counted > 0 {
        format!(
            "{} of {} completed requests counted by the upstream's usage",
            s.usage_counted, o.count
        )
    } else {
        "no usage asked or given: a chunk counted as a token".into()
    };
    format!(
        "- {name} level {}: {} / {} / {} tokens (p50/p99/max); {} tokens in {} chunks ({per_chunk} a chunk); {source}\n",
        column(s),
        n(o.p50),
        n(o.p99),
        n(o.max),
        s.tokens,
        s.chunks
    )
}

/// A level's lines for the latencies its server reported about itself (a registry
/// entry's [`lab_clients::ServerTiming`]), each with the time to the response head.
fn server_timing_lines(name: &str, l: &LevelResult) -> String {
    let mut out = String::new();
    for (key, h) in l.summary.server_ms.iter().filter(|(_, h)| h.count > 0) {
        let what = crate::approach::all()
            .filter_map(|a| a.timing)
            .find(|t| t.key == key)
            .map_or(key.as_str(), |t| t.what);
        let b = &l.summary.ttfb_ms;
        // The time to the response head, where the approach has one (HTTP).
        let head = if b.count > 0 {
            format!(
                "; time to the response head (TTFB, connect included) p50 {} p99 {}",
                ms(b.p50),
                ms(b.p99)
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "- {name} level {}: {what}, p50 {} p99 {} max {} (over {} streams){head}\n",
            l.summary.level,
            ms(h.p50),
            ms(h.p99),
            ms(h.max),
            h.count,
        ));
    }
    out
}

fn mib(kib: f64) -> String {
    format!("{:.1} MiB", kib / 1024.0)
}

/// The server's resources over each level's hold, and the wire over the level.
pub fn resource_table(cells: &[(String, &[LevelResult])]) -> String {
    let rows: Vec<ResourceRow> = by_level(cells, |l| sort_key(&l.summary))
        .into_iter()
        .map(|(a, l)| {
            let r = l.server.as_ref();
            let or =
                |f: &dyn Fn(&crate::metrics::load::Resources) -> String| r.map_or("-".into(), f);
            ResourceRow {
                level: column(&l.summary),
                approach: a.to_owned(),
                rss: or(&|r| mib(r.rss_kib_mean)),
                peak: or(&|r| mib(r.rss_kib_peak as f64)),
                kb: r
                    .and_then(|r| r.kb_per_stream)
                    .map_or("-".into(), |k| format!("{k:.1}")),
                client: l
                    .client
                    .as_ref()
                    .map_or("-".into(), |c| mib(c.rss_kib_mean)),
                client_kb: l
                    .client
                    .as_ref()
                    .and_then(|c| c.kb_per_stream)
                    .map_or("-".into(), |k| format!("{k:.1}")),
                user: or(&|r| format!("{:.0}%", r.user_pct)),
                sys: or(&|r| format!("{:.0}%", r.system_pct)),
                threads: or(&|r| r.threads_peak.to_string()),
                fds: or(&|r| r.fds_peak.to_string()),
                bpt: l
                    .wire_bytes_per_token()
                    .map_or("-".into(), |v| format!("{v:.1}")),
                ppt: l
                    .packets_per_token()
                    .map_or("-".into(), |v| format!("{v:.2}")),
                checked: if l.checked == 0 && l.wrong.is_empty() {
                    "-".into()
                } else if l.wrong.is_empty() {
                    format!("{} ok", l.checked)
                } else {
                    format!("{} of {}: wrong tokens", l.wrong_streams, l.checked)
                },
            }
        })
        .collect();
    crate::table::markdown(rows)
}
