//! `lab demo`: the mock and every approach's server on loopback, and the approaches
//! compared, the same prompts through each, without namespaces or root.
//!
//! With the embedded mock, every record's token digest is also checked against the digest
//! of the answer the mock must have generated, so a transport that drops, splits or alters
//! a token is caught.

use crate::cli::DemoArgs;
use crate::loopback::{Stack, UpstreamChoice};
use crate::metrics::check_digests;
use anyhow::{Context, Result};
use lab_clients::prompts;
use lab_clients::record::{self, PromptRecord, Summary};
use lab_servers::textgen;
use std::io::Write;

/// Runs the demo; returns whether everything succeeded and matched.
pub async fn run(a: DemoArgs) -> Result<bool> {
    let prompts = match &a.prompts {
        Some(p) => prompts::load(p)?,
        None => prompts::reference(),
    };
    let mock = a.mock.config(vec![a.model.clone()], 1 << 20);
    let choice = match &a.upstream {
        Some(u) => UpstreamChoice::Url(u.clone()),
        None => UpstreamChoice::Mock(mock.clone()),
    };
    let exe = std::env::current_exe().context("cannot find the lab program")?;
    let stack = Stack::start(choice, &a.model, &exe).await?;
    outln!("lab demo: servers on loopback");
    if let Some(l) = stack.llm {
        outln!(
            "  mock LLM  http://{l}  (format {}, ttft {:?}, tbt {:?}, jitter {:.0}%, seed {})",
            mock.format,
            mock.ttft,
            mock.tbt,
            mock.jitter * 100.0,
            mock.seed
        );
    } else {
        outln!("  upstream  {}", stack.upstream_url);
    }
    for r in &stack.servers {
        outln!("  {:<4}      {}", r.approach.name, stack.url(r.approach));
    }
    outln!("  certificate sha256 {}", stack.cert.sha256_hex());
    outln!(
        "running {} prompts x {} in {} mode, approaches side by side...\n",
        prompts.len(),
        a.repeat.max(1),
        a.mode
    );

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PromptRecord>();
    let mut tasks = Vec::new();
    for ap in crate::approach::all() {
        let mut runner = stack.runner(ap, a.mode, a.timeout)?;
        let (prompts, tx, repeat) = (prompts.clone(), tx.clone(), a.repeat);
        tasks.push(tokio::spawn(async move {
            let recs = lab_clients::run_all(runner.as_mut(), &prompts, repeat, |r| {
                let _ = tx.send(r.clone());
            })
            .await;
            (ap, recs)
        }));
    }
    drop(tx);
    // The records file goes where --jsonl says, written at the end as lab writes every
    // file: into a directory only root or the invoking user can write, never through a
    // link. Its directory is checked now, before anything runs.
    let jsonl = match &a.jsonl {
        Some(p) => {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow::anyhow!("--jsonl {} names no file", p.display()))?
                .to_owned();
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = crate::netlab::files::SafeDir::open(dir.unwrap_or(".".as_ref()), false)?;
            Some((dir, name))
        }
        None => None,
    };
    let mut lines = Vec::new();
    while let Some(r) = rx.recv().await {
        outln!("{:<4}{}", r.approach, record::prompt_line(&r));
        if jsonl.is_some() {
            writeln!(lines, "{}", serde_json::to_string(&r)?)?;
        }
    }
    if let Some((dir, name)) = &jsonl {
        dir.write(name, &lines, 0o644)?;
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    let summaries: Vec<Summary> = results
        .iter()
        .map(|(ap, r)| Summary::of(ap.name, r))
        .collect();
    outln!("\n{}\n", record::summary_table(&summaries));

    let expected_fn = |i: usize| mock_digest(&mock, &a.model, &prompts[i % prompts.len()]);
    let expected: Option<&dyn Fn(usize) -> String> = if a.upstream.is_none() {
        Some(&expected_fn)
    } else {
        None
    };
    let check = check_digests(&results, expected);
    let errors: usize = summaries.iter().map(|s| s.errors).sum();
    if check.mismatches.is_empty() {
        outln!(
            "token digests: identical across approaches{} for {} of {} prompts",
            if expected.is_some() {
                " and equal to the mock's answer"
            } else {
                ""
            },
            check.compared,
            prompts.len() * a.repeat.max(1)
        );
    } else {
        outln!("token digests DIFFER:");
        for m in &check.mismatches {
            outln!("  {m}");
        }
    }
    if errors > 0 {
        outln!("{errors} prompt(s) failed; see the ERROR lines above");
    }
    Ok(check.mismatches.is_empty() && errors == 0)
}

/// The digest of the mock's answer to `p` (of the prompt's own length, if it sets one).
fn mock_digest(
    mock: &lab_servers::llm::MockConfig,
    model: &str,
    p: &lab_clients::Prompt,
) -> String {
    let exact = p.max_tokens.map(|n| n as usize);
    record::digest_tokens(&textgen::sized(
        mock.seed,
        model,
        &p.text,
        exact,
        mock.max_tokens,
    ))
}
