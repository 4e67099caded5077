//! How long `lab up` and `lab down` take for the 15-cell matrix (46 namespaces, 76
//! interfaces, 16 processes), and for the 6-cell CI topology. Needs root.
//!
//! `cargo bench -p lab --bench updown`

use std::process::Command;
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_lab");
const ROUNDS: usize = 5;

fn run(args: &[&str]) -> Duration {
    let t = Instant::now();
    let o = Command::new(LAB).args(args).output().expect("run lab");
    assert!(
        o.status.success(),
        "lab {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for (file, name) in [
        ("topologies/matrix.yaml", "matrix"),
        ("topologies/ci.yaml", "ci"),
    ] {
        let path = format!("{root}/{file}");
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ups.push(run(&["up", &path]));
            downs.push(run(&["down", name]));
        }
        println!(
            "{file}: lab up median {:.0} ms (min {:.0}), lab down median {:.0} ms (min {:.0}), {ROUNDS} rounds",
            median(ups.clone()).as_secs_f64() * 1e3,
            ups.iter().min().unwrap().as_secs_f64() * 1e3,
            median(downs.clone()).as_secs_f64() * 1e3,
            downs.iter().min().unwrap().as_secs_f64() * 1e3,
        );
    }
}
