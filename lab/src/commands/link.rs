//! `lab link set` and `lab link show`: a running lab's links, changed without taking it
//! down. Settings are a profile's fields with the same names, units and checks as in a
//! topology file (they go through the topology parser); a change replaces the
//! direction's settings, and fields not given take their defaults. The userspace
//! backend takes the change over `lab wire`'s control socket, the kernel backend as a
//! replaced netem qdisc; either way the lab's state records it, so `lab status` and
//! `lab link show` say what is in force.

use super::{EXIT_OK, refuse};
use crate::cli::{LinkSetArgs, LinkShowArgs};
use crate::netlab::state::State;
use crate::netlab::{qdisc, state, sys};
use crate::plan::{Cell, Shaper};
use crate::shaping::params::Params;
use anyhow::{Context, Result, anyhow, bail};

/// The cell of a lab that `node` names (any side of it), and its index in the plan.
pub fn cell_of(s: &State, node: &str) -> Result<usize> {
    let ns = crate::plan::node::resolve(&s.plan, node)?;
    s.plan
        .cells
        .iter()
        .position(|c| [&c.client_ns, &c.wire_ns, &c.server_ns].contains(&&ns))
        .ok_or_else(|| {
            anyhow!(
                "{node:?} is not a cell of lab {}; name one as `lab exec` does (wt, wt@baseline, c3)",
                s.name
            )
        })
}

/// A profile's fields as words (`delay 100ms loss 2%`, or `delay=100ms`), checked as a
/// topology file's profile is, resolved to one direction's settings.
pub fn settings(words: &[String]) -> Result<Params> {
    let mut fields = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let (k, v) = match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => {
                let v = it.next().ok_or_else(|| {
                    anyhow!("'{w}' has no value; give settings as pairs, e.g. delay 100ms loss 2%")
                })?;
                (w.clone(), v.clone())
            }
        };
        if k == "trace" {
            bail!("a trace is for topology files; `lab link set` changes the other settings");
        }
        if ["up", "down", "direction"].contains(&k.as_str()) {
            bail!("'{k}' is not for `lab link set`; pick the direction with --up or --down");
        }
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            bail!(
                "'{k}' is not a setting name; names are a profile's fields, e.g. delay, loss, rate"
            );
        }
        fields.push(format!("{k}: {v}"));
    }
    if fields.is_empty() {
        bail!(
            "no settings given; e.g. `lab link set wt delay 100ms loss 2%` (or `delay 0ms` to clear)"
        );
    }
    let text = format!(
        "name: link\napproaches: [sse]\nprofiles:\n  set: {{ {} }}\n",
        fields.join(", ")
    );
    let t = crate::topology::parse::parse("settings", &text).map_err(|d| {
        let lines: Vec<String> =
            d.0.iter()
                .map(|x| {
                    let field = x
                        .field
                        .trim_start_matches("profiles.set")
                        .trim_start_matches('.');
                    if field.is_empty() {
                        x.message.clone()
                    } else {
                        format!("{field}: {}", x.message)
                    }
                })
                .collect();
        anyhow!("bad link settings: {}", lines.join("; "))
    })?;
    let plan = crate::plan::plan(&t).map_err(|e| anyhow!("bad link settings: {e}"))?;
    Ok(plan.cells[0].up.clone())
}

fn line(c: &Cell) -> String {
    if c.up == c.down {
        format!("{} {}@{}: {}", c.id, c.name, c.profile, c.up.describe())
    } else {
        format!(
            "{} {}@{}: up {}; down {}",
            c.id,
            c.name,
            c.profile,
            c.up.describe(),
            c.down.describe()
        )
    }
}

/// `lab link show [NODE]`.
pub fn show(a: LinkShowArgs) -> Result<u8> {
    let name = match state::pick(a.lab.as_deref()) {
        Ok(n) => n,
        Err(e) => return refuse(e),
    };
    let s = State::load(&name)?;
    let cells: Vec<&Cell> = match &a.node {
        Some(node) => match cell_of(&s, node) {
            Ok(i) => vec![&s.plan.cells[i]],
            Err(e) => return refuse(e),
        },
        None => s.plan.cells.iter().collect(),
    };
    for c in cells {
        say!("{}", line(c));
    }
    Ok(EXIT_OK)
}

/// `lab link set NODE [--up|--down] SETTINGS...`.
pub fn set(a: LinkSetArgs) -> Result<u8> {
    if let Err(e) = sys::require_privileges("link set") {
        return refuse(e);
    }
    let name = match state::pick(a.lab.as_deref()) {
        Ok(n) => n,
        Err(e) => return refuse(e),
    };
    let mut s = State::load(&name)?;
    let i = match cell_of(&s, &a.node) {
        Ok(i) => i,
        Err(e) => return refuse(e),
    };
    let p = match settings(&a.settings) {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    let (up, down) = match (a.up, a.down) {
        (true, false) => (Some(p), None),
        (false, true) => (None, Some(p)),
        _ => (Some(p.clone()), Some(p)),
    };
    let backend = s.plan.shaping.as_ref().map(|d| d.backend);
    let c = &s.plan.cells[i];
    match backend {
        Some(Shaper::Userspace) => {
            let sock =
                crate::wire::control_path(&crate::plan::wire_stats_path(&s.plan.name, &c.id));
            tell_wire(
                &sock,
                &crate::wire::Change {
                    up: up.clone(),
                    down: down.clone(),
                },
            )?;
        }
        Some(Shaper::Kernel) => {
            let wire = sys::open_netns(&c.wire_ns)?;
            let seed = s.plan.seed;
            sys::in_netns(&wire, || {
                for (ifname, p) in [("to-server", &up), ("to-client", &down)] {
                    if let Some(p) = p {
                        qdisc::replace_netem(ifname, p, seed)
                            .with_context(|| format!("cell {}: {ifname}", c.id))?;
                    }
                }
                Ok(())
            })?;
        }
        None => bail!("lab {name} has no shaping backend recorded; is it up?"),
    }
    let c = &mut s.plan.cells[i];
    if let Some(p) = up {
        c.up = p;
    }
    if let Some(p) = down {
        c.down = p;
    }
    s.save()?;
    say!("{}", line(&s.plan.cells[i]));
    Ok(EXIT_OK)
}

/// Sends a change to a `lab wire` control socket and reads its answer.
fn tell_wire(sock: &std::path::Path, change: &crate::wire::Change) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("cannot reach the link emulator at {}", sock.display()))?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    conn.write_all(format!("{}\n", serde_json::to_string(change)?).as_bytes())?;
    let mut answer = String::new();
    std::io::BufReader::new(&conn).read_line(&mut answer)?;
    match answer.trim() {
        "ok" => Ok(()),
        "" => bail!("the link emulator gave no answer"),
        e => bail!("the link emulator refused the change: {e}"),
    }
}
