//! The report, the plots and `lab status`, rendered without root from checked-in data:
//! `fixtures/run-ci.json` is the run.json of a real `lab run topologies/ci.yaml`.

mod common;

use common::*;
use lab::commands::results;
use lab::metrics::Run;
use lab::netlab::live::Live;
use lab::netlab::state::{Phase, ProcRecord, State};
use lab::plan::Shard;
use lab::report::{compare, plots, status, tables};
use std::path::Path;

fn fixture() -> Run {
    results::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-ci.json"))
        .expect("the fixture is a run.json this lab reads")
}

#[test]
fn the_report_of_a_saved_run() {
    let run = fixture();
    assert_eq!(run.cells.len(), 6);
    insta::assert_snapshot!("report_ci", tables::render(&run));
}

/// The golden of run.json's figure fields: every cell's summary (the tables' numbers:
/// times, bytes, packets, tokens, errors, wire and anatomy), as a fixture run computes
/// them. A change to how lab adds up a run changes this file; a change to how the code
/// is laid out must not.
#[test]
fn the_figures_of_a_saved_run() {
    let run = fixture();
    let figures = serde_json::to_string_pretty(&lab::metrics::summary::of_run(&run)).unwrap();
    assert!(figures.contains("wire_bytes_per_token"), "{figures}");
    insta::assert_snapshot!("figures_ci", figures);
}

/// Five runs made from the fixture: run i (from 0) has wt's TTFTs scaled by 1 + i/10
/// and sse's by `sse(i)`.
fn five_runs(sse: impl Fn(usize) -> f64) -> Vec<Run> {
    (0..5)
        .map(|i| {
            let mut r = fixture();
            r.plan.seed = 1 + i as u64;
            // ci.yaml's expectations (the fixture predates their texts in run.json).
            r.expect = [
                "sse.wire_bytes_per_token < raw.wire_bytes_per_token",
                "wt.wire_bytes_per_token < raw.wire_bytes_per_token",
                "sse@baseline.ttft_p50 < 100ms",
                "wt.errors == 0",
            ]
            .map(String::from)
            .to_vec();
            for c in &mut r.cells {
                let k = match c.cell.name.as_str() {
                    "wt" => 1.0 + i as f64 / 10.0,
                    "sse" => sse(i),
                    _ => 1.0,
                };
                for rec in &mut c.records {
                    if let Some(t) = rec.ttft_ms.as_mut() {
                        *t *= k;
                    }
                }
            }
            r
        })
        .collect()
}

fn series_of(runs: &[Run]) -> lab::metrics::repeat::Series {
    use lab::metrics::repeat::{RunRef, Series};
    let refs: Vec<(RunRef, &Run)> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                RunRef {
                    dir: format!("run-{}", i + 1),
                    seed: r.plan.seed,
                    seconds: 10.0,
                    errors: Vec::new(),
                    interrupted: false,
                },
                r,
            )
        })
        .collect();
    Series::of(5, 50.0, &refs).unwrap()
}

/// Repeated runs add up to each metric's values, median and interval over the runs,
/// the expectations are decided on the medians, and two sets of runs compared get a
/// rank test that tells a real change from the runs' own spread.
#[test]
fn repeated_runs_add_up_to_medians_intervals_and_rank_tests() {
    let runs = five_runs(|_| 1.0);
    let s = series_of(&runs);
    assert_eq!(s.runs.len(), 5);
    assert_eq!(
        s.runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let base = lab::metrics::metric(&runs[0], "wt", "baseline", "ttft_p50").unwrap();
    let m = s.cell("wt", "baseline").unwrap().get("ttft_p50").unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
    assert_eq!(m.values.len(), 5);
    assert!(close(m.median.unwrap(), base * 1.2), "{m:?}");
    let i = m.interval.unwrap();
    assert!(close(i.lo, base) && close(i.hi, base * 1.4), "{i:?}");
    assert!((i.coverage - 0.9375).abs() < 1e-9);
    // sse did not move: its interval is one point.
    let m = s.cell("sse", "baseline").unwrap().get("ttft_p50").unwrap();
    assert_eq!(m.interval.unwrap().lo, m.interval.unwrap().hi);
    // ci.yaml's expectations, on the medians.
    assert_eq!(s.expectations.len(), 7);
    assert!(
        s.expectations.iter().all(|o| o.holds),
        "{:?}",
        s.expectations
    );
    insta::assert_snapshot!("report_series", lab::report::repeat::render(&s));

    // sse 30% slower in every run of b: significant (five runs apart: p = 2/252);
    // wt's spread is the same in both: not.
    let b = series_of(&five_runs(|i| 1.3 + i as f64 / 100.0));
    let c = compare::compare(
        &compare::Source::Series(&s),
        &compare::Source::Series(&b),
        &["ttft_p50".to_owned()],
        Some(0.10),
    );
    let row = |ap: &str| {
        c.rows
            .iter()
            .find(|r| r.approach == ap && r.profile == "baseline")
            .unwrap()
    };
    assert!((row("sse").p_value.unwrap() - 2.0 / 252.0).abs() < 1e-9);
    assert_eq!(row("sse").significant, Some(true));
    assert!(row("sse").regressed);
    assert_eq!(row("wt").significant, Some(false));
    assert!(!row("wt").regressed);
    assert_eq!((row("wt").runs_a, row("wt").runs_b), (5, 5));
    let text = c.render();
    assert!(text.contains("5 runs: medians"), "{text}");
    assert!(text.contains("| 0.008 | yes"), "{text}");
    // One run against five: no test is possible, and the gate is the threshold alone.
    let one = compare::compare(
        &compare::Source::Run(&runs[0]),
        &compare::Source::Series(&b),
        &["ttft_p50".to_owned()],
        Some(0.10),
    );
    let r = one.rows.iter().find(|r| r.approach == "sse").unwrap();
    assert_eq!((r.p_value, r.significant, r.regressed), (None, None, true));
    assert!(one.render().contains("- (1 vs 5 runs)"));
}

#[test]
fn two_runs_compared() {
    let a = fixture();
    let mut b = fixture();
    // One prompt of the second run lost its first token's timing to a slower link.
    for c in &mut b.cells {
        for r in &mut c.records {
            if let Some(t) = r.ttft_ms.as_mut() {
                *t *= 2.0;
            }
        }
    }
    let c = compare::compare(
        &compare::Source::Run(&a),
        &compare::Source::Run(&b),
        &[],
        Some(0.10),
    );
    insta::assert_snapshot!("compare_ci", c.render());
    // Doubled TTFTs are regressions; the bytes did not move.
    for r in &c.rows {
        let doubled = r.metric.starts_with("ttft_");
        assert_eq!(r.regressed, doubled, "{r:?}");
        if doubled {
            assert_eq!(r.unit, "ms");
        }
    }
    assert_eq!(c.regressions, 12, "two TTFT metrics of six cells");
    // The same run against itself moves nothing.
    let same = compare::Source::Run(&a);
    assert_eq!(
        compare::compare(&same, &same, &[], Some(0.0)).regressions,
        0
    );
}

fn write_run(dir: &Path, run: &Run) {
    std::fs::write(dir.join("run.json"), serde_json::to_vec(run).unwrap()).unwrap();
}

#[test]
fn lab_compare_for_scripts_and_ci_gates() {
    let (a, b) = (tmpdir("compare-a"), tmpdir("compare-b"));
    let base = fixture();
    write_run(&a, &base);
    let mut slower = base.clone();
    for c in &mut slower.cells {
        for r in &mut c.records {
            r.ttft_ms = r.ttft_ms.map(|t| t * 1.5);
        }
    }
    write_run(&b, &slower);
    let (pa, pb) = (a.to_str().unwrap(), b.to_str().unwrap());
    // Human output: units and times, no epoch seconds.
    let out = ok(&["compare", pa, pb]);
    assert!(out.contains(" ms ") && out.contains(" B/token "), "{out}");
    assert!(!out.contains(&base.started_unix.to_string()), "{out}");
    // JSON, with the verdicts; past the threshold the worse way: exit 3.
    let o = lab(&["compare", pa, pb, "--json", "--threshold", "20%"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["threshold"], 0.2);
    assert_eq!(j["regressions"], 12);
    let row = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "ttft_p50")
        .unwrap();
    assert_eq!(row["unit"], "ms");
    assert!((row["change_percent"].as_f64().unwrap() - 50.0).abs() < 1e-6);
    assert_eq!(row["regressed"], true);
    // Within the threshold, or better than the baseline: exit 0.
    let o = lab(&["compare", pa, pb, "--threshold", "60%"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = lab(&[
        "compare",
        pb,
        pa,
        "--threshold",
        "1%",
        "--metric",
        "ttft_p50",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A metric that does not exist is bad input.
    let o = lab(&["compare", pa, pb, "--metric", "latency"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("unknown metric 'latency'"),
        "{}",
        text(&o)
    );
}

/// The fixture cut into shards as `lab run --shard` would have saved them.
fn shards_of(run: &Run, n: usize) -> Vec<Run> {
    (1..=n)
        .map(|i| {
            let s = Shard { index: i, count: n };
            let mut r = run.clone();
            r.plan = run.plan.shard(s).unwrap();
            r.cells
                .retain(|c| r.plan.cells.iter().any(|p| p.id == c.cell.id));
            r.shard = Some(s);
            r.conclude().unwrap();
            r
        })
        .collect()
}

#[test]
fn shards_merge_into_the_whole_run() {
    let mut whole = fixture();
    whole.expect = vec![
        "sse.wire_bytes_per_token < raw.wire_bytes_per_token".into(),
        "wt.errors == 0".into(),
    ];
    whole.conclude().unwrap();
    assert_eq!(whole.expectations.len(), 4);
    let parts = shards_of(&whole, 4);
    // Every cell is in one shard; shard 4 of 4 gets the 4th cell only of six.
    assert_eq!(parts.iter().map(|p| p.cells.len()).sum::<usize>(), 6);
    assert_eq!(parts[3].cells.len(), 1);
    assert!(parts.iter().all(|p| p.expectations.is_empty()));
    let named = |v: Vec<Run>| -> Vec<(String, Run)> {
        v.into_iter()
            .enumerate()
            .map(|(i, r)| (format!("shard-{i}"), r))
            .collect()
    };
    // In any order, the merge is the whole run, cell for cell.
    let mut shuffled = parts.clone();
    shuffled.reverse();
    let merged = lab::metrics::merge::merge(named(shuffled)).unwrap();
    assert_eq!(merged.plan.cells, whole.plan.cells);
    assert_eq!(
        serde_json::to_value(&merged.cells).unwrap(),
        serde_json::to_value(&whole.cells).unwrap()
    );
    assert_eq!(merged.summaries, whole.summaries);
    assert_eq!(merged.expectations, whole.expectations);
    assert_eq!(merged.shard, None);
    let mut ns = merged.plan.namespaces.clone();
    let mut all = whole.plan.namespaces.clone();
    ns.sort();
    all.sort();
    assert_eq!(ns, all);
    // A shard missing, twice, or from another run is refused by name.
    let err = lab::metrics::merge::merge(named(parts[..3].to_vec())).unwrap_err();
    assert!(err.contains("shard 4/4 of ci is missing"), "{err}");
    let twice = vec![parts[0].clone(), parts[0].clone()];
    let err = lab::metrics::merge::merge(named(twice)).unwrap_err();
    assert!(err.contains("are both shard 1/4"), "{err}");
    let mut other = parts.clone();
    other[1].plan.seed = 7;
    let err = lab::metrics::merge::merge(named(other)).unwrap_err();
    assert!(err.contains("workload, seed or LLM differs"), "{err}");
    let err = lab::metrics::merge::merge(named(vec![whole.clone()])).unwrap_err();
    assert!(err.contains("is a whole run, not a shard"), "{err}");
}

#[test]
fn run_json_is_an_interface() {
    let mut run = fixture();
    run.conclude().unwrap();
    let v = serde_json::to_value(&run).unwrap();
    assert_eq!(v["format"], lab::metrics::summary::FORMAT);
    // The summaries carry the tables' numbers.
    let s = &v["summaries"][1];
    assert_eq!(s["id"], run.cells[1].cell.id.as_str());
    let wire = lab::metrics::metric(
        &run,
        "sse",
        &run.cells[1].cell.profile,
        "wire_bytes_per_token",
    );
    assert_eq!(s["metrics"]["wire_bytes_per_token"].as_f64(), wire);
    assert_eq!(s["wire"]["bytes_per_token"].as_f64(), wire);
    let up = &s["anatomy"]["up"];
    let layers: f64 = up["layers"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!(
        (layers - up["bytes"].as_f64().unwrap()).abs() < 1e-6,
        "layers add up to the bytes"
    );
    // The published schema is current, and names every field run.json has.
    let committed = std::fs::read_to_string(root().join("lab/run.schema.json")).unwrap();
    assert_eq!(
        committed,
        lab::metrics::schema_json(),
        "lab/run.schema.json is stale: run `cargo run -p lab -- schema run > lab/run.schema.json`"
    );
    let runs = std::fs::read_to_string(root().join("lab/runs.schema.json")).unwrap();
    assert_eq!(
        runs,
        lab::metrics::repeat::schema_json(),
        "lab/runs.schema.json is stale: run `cargo run -p lab -- schema runs > lab/runs.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    for key in v.as_object().unwrap().keys() {
        assert!(
            schema["properties"].get(key).is_some(),
            "{key} is not in the schema"
        );
    }
    // A newer format than this lab knows is refused, with what to do.
    let dir = tmpdir("run-format");
    let mut newer = v.clone();
    newer["format"] = serde_json::json!(99);
    std::fs::write(dir.join("run.json"), newer.to_string()).unwrap();
    let o = lab(&["report", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("format 99; this lab reads formats up to"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_plots_of_a_saved_run() {
    let run = fixture();
    for (name, svg) in plots::all(&run, 0).unwrap() {
        assert!(svg.starts_with("<svg"), "{name}");
        insta::assert_snapshot!(format!("plot_{name}"), svg);
    }
    // Every cell has a line in the TTFT plot and a bar pair in the bytes plot.
    let ttft = plots::ttft(&run).unwrap();
    let anatomy = plots::anatomy(&run).unwrap();
    for c in &run.cells {
        let label = format!("{}@{}", c.cell.approach, c.cell.profile);
        assert!(ttft.contains(&label), "{label} missing from ttft.svg");
        assert!(anatomy.contains(&label), "{label} missing from anatomy.svg");
    }
    // A cell keeps its colour in every plot, even where another cell has no line: with
    // the first cell's answers gone, the second is still drawn orange, and no line is
    // the first cell's blue.
    let mut gone = run.clone();
    gone.cells[0].records.clear();
    let t = plots::timeline(&gone, 0).unwrap();
    assert!(t.contains("stroke=\"#FF7F0E\"") && !t.contains("stroke=\"#1F77B4\""));
    // As many cells as `topologies/wt-stacks.yaml` has (18): each line a colour of its own.
    let mut many = run.clone();
    let first = many.cells[0].clone();
    many.cells = (0..18)
        .map(|i| {
            let mut c = first.clone();
            c.cell.name = format!("a{i}");
            c
        })
        .collect();
    let lines = plots::ttft(&many).unwrap();
    let mut strokes: Vec<&str> = lines
        .split("stroke=\"#")
        .skip(1)
        .filter_map(|s| s.get(..6))
        .filter(|c| *c != "000000" && *c != "FFFFFF")
        .collect();
    strokes.sort_unstable();
    strokes.dedup();
    assert!(
        strokes.len() >= 18,
        "18 cells drew {} line colours: {strokes:?}",
        strokes.len()
    );
    // The TTFT plot says it is a CDF, with units; each bar carries its value.
    assert!(ttft.contains("cumulative distribution (CDF)") && ttft.contains("TTFT (ms)"));
    let bars = plots::bytes_per_token(&run).unwrap();
    for c in &run.cells {
        let v = lab::metrics::metric(&run, &c.cell.name, &c.cell.profile, "wire_bytes_per_token")
            .unwrap();
        assert!(
            bars.contains(&format!(">\n{v:.0}\n<")),
            "no label {v:.0} in bytes_per_token.svg"
        );
        assert!(
            anatomy.contains(&format!(">\n{v:.0}\n<")),
            "no total {v:.0} in anatomy.svg"
        );
    }
    // The anatomy plot stacks the layers the run has, each in the legend.
    for layer in ["link", "IP", "TCP/UDP", "TLS/QUIC", "payload"] {
        assert!(
            anatomy.contains(&format!(">\n{layer}\n<")),
            "{layer} missing from anatomy.svg"
        );
    }
}

#[test]
fn lab_report_renders_a_saved_run_again() {
    let dir = tmpdir("report-again");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run-ci.json"),
        dir.join("run.json"),
    )
    .unwrap();
    // Without --out: printed, and nothing written.
    let out = ok(&["report", dir.to_str().unwrap()]);
    assert_eq!(out, tables::render(&fixture()));
    assert_eq!(std::fs::read_dir(&*dir).unwrap().count(), 1);
    // With --out: report.md (the tables, then the plots linked), report.html (one file,
    // the plots inside) and the plots.
    let to = dir.join("out");
    let to_s = to.to_str().unwrap();
    let printed = ok(&["report", dir.to_str().unwrap(), "--out", to_s]);
    assert_eq!(printed, out);
    let md = std::fs::read_to_string(to.join("report.md")).unwrap();
    assert!(md.starts_with(&out), "report.md starts with the tables");
    let html = std::fs::read_to_string(to.join("report.html")).unwrap();
    for f in [
        "ttft.svg",
        "bytes_per_token.svg",
        "timeline.svg",
        "anatomy.svg",
    ] {
        assert!(to.join(f).is_file(), "{f}");
        assert!(md.contains(&format!("![{f}]({f})")), "report.md links {f}");
        assert!(
            html.contains(&format!("<figcaption>{f}</figcaption>\n<svg")),
            "report.html embeds {f}"
        );
    }
    assert!(html.contains("How to read this report") && html.contains("<table>"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "self-contained"
    );
    // Never over files already there, unless --force.
    std::fs::write(to.join("report.md"), "mine").unwrap();
    let o = lab(&["report", dir.to_str().unwrap(), "--out", to_s]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already has report.md"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(to.join("report.md")).unwrap(),
        "mine"
    );
    ok(&["report", dir.to_str().unwrap(), "--out", to_s, "--force"]);
    assert_eq!(std::fs::read_to_string(to.join("report.md")).unwrap(), md);
    let o = lab(&["report", "/nonexistent/run"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn lab_status_as_a_person_and_a_program_read_it() {
    let run = fixture();
    let plan = run.plan.clone();
    let processes: Vec<ProcRecord> = plan
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| ProcRecord {
            role: p.role.clone(),
            cell: plan
                .cells
                .iter()
                .find(|c| c.server_ns == p.namespace || c.wire_ns == p.namespace)
                .map(|c| c.id.clone()),
            namespace: p.namespace.clone(),
            pid: 1000 + i as u32,
            start: 5,
            argv: p.argv.clone(),
            log: format!("/run/lab/ci/logs/{i}.log").into(),
            url: None,
            cert_sha256: None,
        })
        .collect();
    let state = State {
        name: plan.name.clone(),
        topology: "/work/topologies/ci.yaml".into(),
        created: 1_790_000_000,
        phase: Phase::Up,
        owner_pid: 999,
        owner_start: 4,
        handed_over: true,
        namespaces: plan.namespaces.clone(),
        processes,
        plan,
    };
    let live = Live {
        owner_alive: false,
        processes: (0..state.processes.len())
            .map(|i| if i == 1 { None } else { Some(('S', 12 << 20)) })
            .collect(),
        namespaces: (0..state.namespaces.len()).map(|i| i != 2).collect(),
        wire: run
            .cells
            .iter()
            .filter_map(|c| c.wire.clone().map(|w| (c.cell.id.clone(), w)))
            .collect(),
    };
    let text = status::render(&state, &live);
    // A process that is gone and a namespace that is missing are said so.
    assert!(text.contains("| gone "), "{text}");
    assert!(text.contains("missing: lab-ci-c0-wire"), "{text}");
    insta::assert_snapshot!("status_ci", text);
    let json = status::json(&[(state, live)]);
    assert_eq!(json["labs"][0]["live"]["processes"][1]["alive"], false);
    assert_eq!(json["labs"][0]["live"]["namespaces"][2]["exists"], false);
}

/// A warm-up that needed its second try is said in the report, with what the first
/// try hit, and is not an error of the run.
#[test]
fn a_retried_warm_up_is_reported_not_failed() {
    let mut run = fixture();
    run.cells[2].warmup_retried = Some("timeout: no complete answer within 30.0s".into());
    let text = tables::render(&run);
    let id = &run.cells[2].cell.id;
    assert!(
        text.contains(
            "the warm-up's first try failed (timeout: no complete answer within 30.0s); its second try completed"
        ) && text.contains(&format!("`{id}-warmup-2.log`")),
        "{text}"
    );
    assert!(lab::metrics::run_errors(&run).is_empty());
}
