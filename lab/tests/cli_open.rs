//! `lab load`'s open-loop flags and `--sampling`: each bad one gets a message that
//! names it and how to fix it, and exit 2.

mod common;

use common::*;

/// The open loop's and the real model's flags: each bad one named, with how to fix it.
#[test]
fn bad_open_loop_and_sampling_flags_get_clear_errors() {
    let load = |extra: &[&str]| {
        let mut a = vec!["load", "sse", "--url", "https://127.0.0.1:1", "--insecure"];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    for (extra, needle) in [
        (
            &["--rates", "0"][..],
            "'0' is not a rate: requests per second above 0",
        ),
        (
            &["--rates", "5", "--search", "2"],
            "--search looks for the highest rate at the SLO: give one, e.g. --slo-ttft 500ms",
        ),
        (
            &["--rates", "5", "--levels", "3"],
            "'--rates <RATES>' cannot be used with '--levels <LEVELS>'",
        ),
        (
            &["--rates", "5", "--arrivals", "gamma", "--burstiness", "0"],
            "burstiness 0 is not above zero",
        ),
        (
            &[
                "--rates",
                "5",
                "--arrivals",
                "constant",
                "--burstiness",
                "2",
            ],
            "burstiness is for `gamma` arrivals only",
        ),
        (
            &["--rates", "5", "--prompt-words", "uniform:9:3"],
            "uniform:9:3: the first is over the second",
        ),
        (
            &["--rates", "5", "--answer-tokens", "fixed:0"],
            "'0' is not a length of 1 to 100000 tokens",
        ),
        (
            &["--rates", "5", "--answer-tokens", "many"],
            "'many' is not a length distribution: fixed:N, uniform:MIN:MAX or normal:MEAN:SD (tokens)",
        ),
        (
            &[
                "--rates",
                "5",
                "--duration",
                "2s",
                "--warmup",
                "1s",
                "--cooldown",
                "1s",
            ],
            "leave nothing of --duration to measure",
        ),
        (
            &["--rates", "5", "--workers", "2"],
            "--workers 2: an open loop (--rates, --trace) runs in one process, since its schedule is not split; drop --workers",
        ),
        (
            &["--levels", "5", "--workers", "0"],
            "'0': give `auto` or a count of worker processes from 1 to 64",
        ),
        (
            &["--trace", "/nonexistent/trace.txt"],
            "cannot read the trace /nonexistent/trace.txt",
        ),
    ] {
        let a = load(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        lab_fails(&a, 2, needle);
    }
    lab_fails(
        &[
            "client",
            "raw",
            "--url",
            "https://127.0.0.1:1",
            "--insecure",
            "--sampling",
            "{\"top_p\":1}",
        ],
        2,
        "unknown field 'top_p'; valid fields: temperature, seed, max_tokens",
    );
    // A JSON prompts line's own answer length, named by its line.
    let p = tmpfile(
        "p.jsonl",
        "{\"prompt\": \"a\", \"max_tokens\": 4}\n{\"prompt\": \"b\", \"max_tokens\": 0}\n",
    );
    let a = load(&["--rates", "5", "--prompts", p.to_str().unwrap()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    lab_fails(
        &a,
        2,
        "line 2: max_tokens is 0; it is the answer's length, 1 to 1000000 tokens",
    );
}
