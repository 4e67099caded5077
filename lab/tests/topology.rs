//! Topology files and plans: the examples, the published schema, snapshot plans, and a
//! corpus of bad files, each checked for its exact message.

use lab::plan;
use lab::shaping::params::Params;
use lab::topology;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("topologies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_topology_parses_plans_and_points_at_the_schema() {
    let names: Vec<String> = examples()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "baseline",
        "latency-200ms",
        "loss-5pct",
        "bw-100kbps",
        "degraded",
        "matrix",
        "ci",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "topologies/{want}.yaml is missing"
        );
    }
    for p in examples() {
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema=../lab/topology.schema.json\n"),
            "{} does not point at the schema",
            p.display()
        );
        plan::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

#[test]
fn the_reference_profiles_have_the_reference_values() {
    let (t, _) = plan::load(&root().join("topologies/matrix.yaml")).unwrap();
    let got: Vec<(String, String)> = t
        .profiles
        .iter()
        .map(|(n, p)| {
            assert_eq!(p.up, p.down, "{n} shapes both directions alike");
            (n.clone(), Params::from_link(&p.up).describe())
        })
        .collect();
    let want = [
        ("baseline", "unshaped"),
        ("latency-200ms", "delay 200ms"),
        ("loss-5pct", "loss 5%"),
        ("bw-100kbps", "rate 100kbit"),
        ("degraded", "delay 200ms, loss 5%, rate 100kbit"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn published_schema_is_up_to_date() {
    let committed = std::fs::read_to_string(root().join("lab/topology.schema.json")).unwrap();
    assert_eq!(
        committed,
        topology::schema_json(),
        "lab/topology.schema.json is stale: run `cargo run -p lab -- schema > lab/topology.schema.json`"
    );
}

#[test]
fn plan_snapshots() {
    for name in ["matrix", "degraded", "ci"] {
        let (_, p) = plan::load(&root().join(format!("topologies/{name}.yaml"))).unwrap();
        insta::assert_snapshot!(format!("plan_{name}"), plan::render(&p));
    }
    // The userspace layout: no bridge in the wire namespaces, `lab wire` between the veths.
    let (_, p) = plan::load(&root().join("topologies/degraded.yaml")).unwrap();
    let p = plan::with_backend(p, plan::Shaper::Userspace, "test");
    insta::assert_snapshot!("plan_degraded_userspace", plan::render(&p));
}

#[test]
fn plans_obey_the_naming_and_addressing_rules() {
    for path in examples() {
        let (_, p) = plan::load(&path).unwrap();
        let mut ns = p.namespaces.clone();
        ns.sort();
        ns.dedup();
        assert_eq!(
            ns.len(),
            p.namespaces.len(),
            "duplicate namespace in {}",
            path.display()
        );
        assert!(
            p.namespaces
                .iter()
                .all(|n| n.starts_with(&format!("lab-{}-", p.name)))
        );
        for i in &p.interfaces {
            assert!(
                i.name.len() <= 15,
                "interface name {} is over 15 characters",
                i.name
            );
            if let Some(a) = &i.address {
                let ip: std::net::Ipv4Addr = a.split('/').next().unwrap().parse().unwrap();
                let o = ip.octets();
                assert!(
                    o[0] == 198 && (o[1] == 18 || o[1] == 19),
                    "{ip} is outside 198.18.0.0/15"
                );
            }
        }
        let mut per_ns: Vec<(String, String)> = p
            .interfaces
            .iter()
            .map(|i| (i.namespace.clone(), i.name.clone()))
            .collect();
        per_ns.sort();
        let n = per_ns.len();
        per_ns.dedup();
        assert_eq!(
            per_ns.len(),
            n,
            "an interface name repeats inside a namespace"
        );
        // Three a cell, the LLM's, and one a node.
        assert_eq!(p.cells.len() * 3 + 1 + p.nodes.len(), p.namespaces.len());
        // No address twice, nodes' included.
        let mut addrs: Vec<&str> = p
            .interfaces
            .iter()
            .filter_map(|i| i.address.as_deref())
            .collect();
        let all = addrs.len();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), all, "an address repeats in {}", path.display());
    }
    // Two labs with different names share no namespace.
    let (_, a) = plan::load(&root().join("topologies/degraded.yaml")).unwrap();
    let (_, b) = plan::load(&root().join("topologies/ci.yaml")).unwrap();
    assert!(a.namespaces.iter().all(|n| !b.namespaces.contains(n)));
}

#[test]
fn bad_topologies_get_their_exact_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/topologies/bad");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        n += 1;
        let rel = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        // Messages name the file as given; run from the crate directory like the corpus.
        let err = match plan::load(rel) {
            Ok(_) => panic!("{} was accepted", rel.display()),
            Err(e) => e.to_string(),
        };
        let want = std::fs::read_to_string(path.with_extension("err")).unwrap();
        assert_eq!(err, want, "{}", rel.display());
    }
    assert!(n >= 15, "the corpus has only {n} files");
}

#[test]
fn lab_plan_exits_2_on_a_bad_topology_and_0_on_a_good_one() {
    let lab = env!("CARGO_BIN_EXE_lab");
    let out = std::process::Command::new(lab)
        .args(["plan", "tests/topologies/bad/bad-units.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 problems in the topology"));
    let out = std::process::Command::new(lab)
        .args(["plan", "--json", "../topologies/ci.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cells"].as_array().unwrap().len(), 6);
    let out = std::process::Command::new(lab)
        .args(["plan", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read topology file /nonexistent.yaml")
    );
}

#[test]
fn planned_commands_are_valid_lab_command_lines() {
    use clap::Parser;
    for path in examples() {
        let (_, p) = plan::load(&path).unwrap();
        let p = plan::with_backend(p, plan::Shaper::Userspace, "test");
        for pr in &p.processes {
            let cli = lab::cli::Cli::try_parse_from(&pr.argv).unwrap_or_else(|e| {
                panic!(
                    "{}: planned `{}` does not parse: {e}",
                    path.display(),
                    pr.argv.join(" ")
                )
            });
            // The emulator's link settings must read back as what the plan says.
            if let lab::cli::Command::Wire(w) = cli.command {
                let cell = p.cells.iter().find(|c| c.wire_ns == pr.namespace).unwrap();
                let up: Params = serde_json::from_str(&w.up).unwrap();
                let down: Params = serde_json::from_str(&w.down).unwrap();
                assert_eq!((up, down), (cell.up.clone(), cell.down.clone()));
            }
        }
    }
}

#[test]
fn the_ci_workflow_is_valid_yaml_and_runs_the_readmes_steps() {
    let text = std::fs::read_to_string(root().join(".github/workflows/lab.yml")).unwrap();
    let doc = marked_yaml::parse_yaml(0, &text).expect("lab.yml is valid YAML");
    let jobs = doc
        .as_mapping()
        .and_then(|m| m.get_mapping("jobs"))
        .expect("jobs");
    let runs_of = |job: &str| -> Vec<String> {
        let steps = jobs
            .get_mapping(job)
            .and_then(|l| l.get_sequence("steps"))
            .unwrap_or_else(|| panic!("jobs.{job}.steps"));
        let uses: Vec<String> = steps
            .iter()
            .filter_map(|s| Some(s.as_mapping()?.get_scalar("uses")?.as_str().to_owned()))
            .collect();
        assert!(
            uses.iter().any(|u| u.starts_with("actions/cache@")),
            "{job} does not cache cargo"
        );
        steps
            .iter()
            .filter_map(|s| Some(s.as_mapping()?.get_scalar("run")?.as_str().to_owned()))
            .collect()
    };
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lab_runs = runs_of("lab");
    for want in ["scripts/install.sh", "sudo lab run topologies/ci.yaml"] {
        assert!(
            lab_runs.iter().any(|r| r.contains(want)),
            "no step runs {want}: {lab_runs:?}"
        );
        assert!(readme.contains(want), "the README does not say {want}");
    }
    // The matrix is sharded over runners: one job per shard, each running i/n of the
    // matrix with n the number of shards, then one job that merges them.
    let shard_job = jobs.get_mapping("matrix-shard").expect("jobs.matrix-shard");
    let shards: Vec<String> = shard_job
        .get_mapping("strategy")
        .and_then(|s| s.get_mapping("matrix"))
        .and_then(|m| m.get_sequence("shard"))
        .expect("strategy.matrix.shard")
        .iter()
        .map(|v| v.as_scalar().unwrap().as_str().to_owned())
        .collect();
    let n = shards.len();
    assert!(n >= 2);
    assert_eq!(
        shards,
        (1..=n).map(|i| i.to_string()).collect::<Vec<_>>(),
        "shards are 1..n"
    );
    let shard_runs = runs_of("matrix-shard");
    assert!(
        shard_runs
            .iter()
            .any(|r| r.contains("lab run topologies/matrix.yaml")
                && r.contains(&format!("--shard ${{{{ matrix.shard }}}}/{n}"))),
        "{shard_runs:?}"
    );
    let merge = jobs.get_mapping("matrix-merge").expect("jobs.matrix-merge");
    assert_eq!(
        merge.get_scalar("needs").map(|s| s.as_str()),
        Some("matrix-shard")
    );
    // The kernel backend's tests run where the runner's kernel has netem.
    let kernel_runs = runs_of("kernel-backend");
    assert!(
        kernel_runs
            .iter()
            .any(|r| r.starts_with("sudo ")
                && r.contains("cargo test -p lab --locked --test kernel")),
        "{kernel_runs:?}"
    );
    let merge_runs = runs_of("matrix-merge");
    assert!(
        merge_runs.iter().any(|r| r.starts_with("lab merge ")),
        "{merge_runs:?}"
    );
    // Reports land in the job summaries.
    for runs in [&lab_runs, &merge_runs] {
        assert!(
            runs.iter()
                .any(|r| r.contains("report.md") && r.contains("$GITHUB_STEP_SUMMARY")),
            "{runs:?}"
        );
    }
    // Every shard's topology cells are covered: n is not more than the matrix's cells.
    let (_, plan) = lab::plan::load(&root().join("topologies/matrix.yaml")).unwrap();
    assert!(n <= plan.cells.len());
}

/// Hostile input never panics the parser: every example topology, cut and corrupted at
/// seeded random places, gives a topology or a list of problems.
#[test]
fn mangled_topologies_never_panic_the_parser() {
    let mut rng = lab_codec::rng::SplitMix64::new(7);
    let junk = [
        "",
        ":",
        "- ",
        "{",
        "}",
        "[",
        "]",
        "'",
        "\"",
        "!!str ",
        "&a ",
        "*a",
        "---\n",
        "\t",
        "\n  ",
        "99999999999999999999999",
        "-1",
        "1e999",
        "%",
        "ms",
        "é",
        "\u{0}",
        "? ",
    ];
    let mut n = 0;
    for path in examples() {
        let text = std::fs::read_to_string(&path).unwrap();
        for _ in 0..1500 {
            let mut t = text.clone();
            for _ in 0..1 + rng.below(3) {
                let mut at = rng.below(t.len() + 1);
                while !t.is_char_boundary(at) {
                    at -= 1;
                }
                match rng.below(3) {
                    0 => t.insert_str(at, junk[rng.below(junk.len())]),
                    1 => t.truncate(at),
                    _ => {
                        let mut end = (at + 1 + rng.below(8)).min(t.len());
                        while !t.is_char_boundary(end) {
                            end += 1;
                        }
                        t.replace_range(at..end, "");
                    }
                }
            }
            let r = std::panic::catch_unwind(|| lab::topology::parse::parse("m.yaml", &t));
            assert!(r.is_ok(), "the parser panicked on:\n{t}");
            n += 1;
        }
    }
    assert!(n >= 10_000, "{n}");
}

#[test]
fn lab_wire_rings_grow_with_a_load_test_or_as_the_topology_says() {
    let ring = |yaml: &str| {
        // Under the build's own directory, not a shared one.
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ring-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).unwrap();
        let (_, p) = plan::load(&path).unwrap();
        let p = plan::with_backend(p, plan::Shaper::Userspace, "test");
        let wire: Vec<_> = p.processes.iter().filter(|x| x.role == "wire").collect();
        assert!(!wire.is_empty());
        let args: Vec<Option<u32>> = wire
            .iter()
            .map(|x| {
                let k = x.argv.iter().position(|a| a == "--ring-frames")?;
                Some(x.argv[k + 1].parse().unwrap())
            })
            .collect();
        (p.ring_frames, args, plan::render::shaping_line(&p))
    };
    let base = "name: ring\napproaches: [sse]\nprofiles:\n  p: { delay: 5ms }\n";
    // A prompt run keeps the default, and lab wire is not told.
    let (n, args, line) = ring(base);
    assert_eq!((n, args), (4096, vec![None]));
    assert!(!line.contains("receive rings"), "{line}");
    // A load test: the next power of two at or above four times its largest level,
    // from 4096 to 65536.
    for (levels, want) in [
        ("[1000]", 4096),
        ("[2000]", 8192),
        ("[100, 10000]", 65536),
        ("[50000]", 65536),
    ] {
        let yaml = format!(
            "{base}workload:\n  prompts: reference\n  load: {{ levels: {levels}, ramp: 1s, hold: 1s }}\n"
        );
        let (n, args, line) = ring(&yaml);
        assert_eq!(n, want, "{levels}");
        let told = if want == 4096 { None } else { Some(want) };
        assert_eq!(args, vec![told], "{levels}");
        if want != 4096 {
            let mib = want * 2 / 1024;
            assert!(
                line.contains(&format!("receive rings of {want} slots ({mib} MiB each)")),
                "{line}"
            );
        }
    }
    // The topology's own size wins.
    let (n, args, _) = ring(&format!("{base}shaping: {{ ring_frames: 1024 }}\n"));
    assert_eq!((n, args), (1024, vec![Some(1024)]));
}
