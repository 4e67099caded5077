//! The report, the plots and `lab status`, rendered without root from checked-in data:
//! `fixtures/run-ci.json` is the run.json of a real `lab run topologies/ci.yaml`.

mod common;

use common::*;
use lab::commands::results;
use lab::metrics::Run;
use lab::netlab::live::Live;
use lab::netlab::state::{Phase, ProcRecord, State};
use lab::report::{plots, status, tables};
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
    insta::assert_snapshot!("compare_ci", tables::compare(&a, &b));
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
    let out = ok(&["report", dir.to_str().unwrap()]);
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert_eq!(md, tables::render(&fixture()));
    assert_eq!(out, md);
    for f in ["ttft.svg", "bytes_per_token.svg", "timeline.svg"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
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
