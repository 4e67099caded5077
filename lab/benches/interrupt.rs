//! How long `lab run` takes from Ctrl-C to its exit, over many interrupts: during the
//! warm-up and in the middle of the workload of the degraded profile's cells (200 ms
//! delay, 5% loss, 100 kbit, the three approaches). Needs root.
//!
//! `cargo bench -p lab --bench interrupt` (ROUNDS, default 12, interrupts per point)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_lab");

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let topo = format!("{root}/topologies/degraded.yaml");
    let results = std::env::temp_dir().join(format!("lab-bench-interrupt-{}", std::process::id()));
    let mut all = Vec::new();
    for (point, marker) in [("warm-up", "cells, shaping:"), ("mid-run", "(1/")] {
        let mut took = Vec::new();
        for _ in 0..rounds {
            let mut child = Command::new(LAB)
                .args(["run", &topo, "--results"])
                .arg(&results)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("run lab");
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            while out.read_line(&mut line).unwrap() > 0 && !line.contains(marker) {
                line.clear();
            }
            let t = Instant::now();
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let status = child.wait().unwrap();
            took.push(t.elapsed());
            assert_eq!(status.code(), Some(130), "{point}");
        }
        took.sort();
        println!(
            "Ctrl-C at {point}: {} interrupts, exit 130 after min {:.0} ms, median {:.0} ms, max {:.0} ms",
            took.len(),
            ms(took[0]),
            ms(took[took.len() / 2]),
            ms(*took.last().unwrap())
        );
        all.extend(took);
    }
    all.sort();
    println!(
        "all {} interrupts: median {:.0} ms, max {:.0} ms",
        all.len(),
        ms(all[all.len() / 2]),
        ms(*all.last().unwrap())
    );
    let _ = std::fs::remove_dir_all(&results);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
