//! The kernel backend, carried out: netem qdiscs added over netlink, the probe that says
//! whether this kernel has netem, and the backend decision made from it before a lab is
//! built. The option bytes come from [`crate::shaping::netem`].

use crate::plan::Plan;
use crate::plan::layout::Netem;
use crate::shaping::netem::{netem_options, new_qdisc};
use crate::shaping::params::{Limit, Params};
use anyhow::{Context, Result, bail};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle};
use rtnetlink::packet_core::NetlinkMessage;

/// Sends one request and waits for the kernel's answer: Ok, or the error number.
async fn execute(
    h: &rtnetlink::Handle,
    req: NetlinkMessage<RouteNetlinkMessage>,
) -> Result<std::result::Result<(), i32>> {
    use futures_util::StreamExt;
    use rtnetlink::packet_core::NetlinkPayload;
    let mut h = h.clone();
    let mut resp = h.request(req)?;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(e) = m.payload
            && let Some(code) = e.code
        {
            return Ok(Err(-code.get()));
        }
    }
    Ok(Ok(()))
}

/// Does this kernel have netem, and does its netem keep a seed? Adds a seeded netem
/// qdisc to the loopback of a throwaway network namespace (a clean device: no root
/// qdisc to collide with), which vanishes with the thread, and reads it back.
pub fn probe_netem() -> Result<Netem> {
    std::thread::spawn(|| -> Result<Netem> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut p = Params::from_link(&Default::default());
        p.limit = Limit::Packets(1000);
        let opts = netem_options(&p, Some(1))?;
        crate::netlab::links::with_netlink(async |h| {
            let missing = match execute(&h, new_qdisc(1, "netem", opts)).await? {
                Ok(()) => None,
                Err(libc::ENOENT) => Some(
                    "this kernel has no netem: adding a netem qdisc on a clean device failed with ENOENT (sch_netem is not built or loadable)"
                        .to_owned(),
                ),
                Err(e) => Some(format!(
                    "adding a netem qdisc on a clean device failed: {}",
                    std::io::Error::from_raw_os_error(e)
                )),
            };
            let seeded = missing.is_none() && root_options(&h, 1).await?.is_some_and(|o| {
                crate::shaping::netem::netem_dump_has_seed(&o)
            });
            Ok(Netem { missing, seeded })
        })
    })
    .join()
    .unwrap_or_else(|_| bail!("the netem probe panicked"))
}

/// The raw TCA_OPTIONS of the root qdisc of the device with `index`, as dumped.
async fn root_options(h: &rtnetlink::Handle, index: i32) -> Result<Option<Vec<u8>>> {
    use futures_util::TryStreamExt;
    use netlink_packet_route::tc::TcOption;
    use rtnetlink::packet_core::Nla;
    let mut s = h.qdisc().get().execute();
    while let Some(m) = s.try_next().await? {
        if m.header.index == index && m.header.parent == TcHandle::ROOT {
            return Ok(m.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(o) => o.iter().find_map(|o| match o {
                    TcOption::Other(nla) => {
                        let mut v = vec![0u8; nla.value_len()];
                        nla.emit_value(&mut v);
                        Some(v)
                    }
                    _ => None,
                }),
                _ => None,
            }));
        }
    }
    Ok(None)
}

/// Puts `kind` with `options` as the root qdisc of `ifname`, in the calling thread's
/// namespace.
pub fn apply(ifname: &str, kind: &str, options: Vec<u8>) -> Result<()> {
    crate::netlab::links::with_netlink(async |h| {
        let link = crate::netlab::links::get(&h, ifname).await?;
        match execute(&h, new_qdisc(link.header.index as i32, kind, options)).await? {
            Ok(()) => Ok(()),
            Err(libc::ENOENT) if kind == "netem" => bail!(
                "this kernel has no netem; set `shaping: {{ backend: userspace }}` (or auto) in the topology"
            ),
            Err(e) => bail!(
                "cannot add {kind} on {ifname}: {}",
                std::io::Error::from_raw_os_error(e)
            ),
        }
    })
}

/// Replaces the root netem qdisc of `ifname` (calling thread's namespace) with `p`'s
/// settings, or removes it when `p` shapes nothing (`lab link set`).
pub fn replace_netem(ifname: &str, p: &Params, seed: u64) -> Result<()> {
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
    let opts = netem_options(p, Some(seed))?;
    let identity = p.is_identity();
    crate::netlab::links::with_netlink(async |h| {
        let link = crate::netlab::links::get(&h, ifname).await?;
        let index = link.header.index as i32;
        if identity {
            if root_options(&h, index).await?.is_some() {
                use netlink_packet_route::tc::{TcHeader, TcMessage};
                let mut msg = TcMessage::default();
                msg.header = TcHeader {
                    index,
                    parent: TcHandle::ROOT,
                    ..msg.header
                };
                let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelQueueDiscipline(msg));
                req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
                req.finalize();
                if let Err(e) = execute(&h, req).await? {
                    bail!(
                        "cannot remove the netem qdisc of {ifname}: {}",
                        std::io::Error::from_raw_os_error(e)
                    );
                }
            }
            return Ok(());
        }
        let mut req = new_qdisc(index, "netem", opts);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        req.finalize();
        match execute(&h, req).await? {
            Ok(()) => Ok(()),
            Err(e) => bail!(
                "cannot replace the netem qdisc of {ifname}: {}",
                std::io::Error::from_raw_os_error(e)
            ),
        }
    })
}

/// The kind of the root qdisc of `ifname` (calling thread's namespace), read back over
/// netlink.
pub fn root_qdisc_kind(ifname: &str) -> Result<Option<String>> {
    crate::netlab::links::with_netlink(async |h| {
        use futures_util::TryStreamExt;
        let link = crate::netlab::links::get(&h, ifname).await?;
        let qd = h.clone();
        let mut s = qd.qdisc().get().execute();
        while let Some(m) = s.try_next().await? {
            if m.header.index == link.header.index as i32 && m.header.parent == TcHandle::ROOT {
                return Ok(m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                }));
            }
        }
        Ok(None)
    })
}

/// The drops of interface `ifname`, or of every interface with `None` (calling
/// thread's namespace): what the interfaces themselves dropped (rx_dropped +
/// tx_dropped) and what their root qdiscs dropped (a parent counts the drops of the
/// qdiscs under it, so the root's is the total). An interface without a qdisc counts
/// 0 there.
pub fn drops(ifname: Option<&str>) -> Result<(u64, u64)> {
    use netlink_packet_route::link::LinkAttribute;
    use netlink_packet_route::tc::TcStats2;
    crate::netlab::links::with_netlink(async |h| {
        use futures_util::TryStreamExt;
        let links = match ifname {
            Some(n) => vec![crate::netlab::links::get(&h, n).await?],
            None => h.link().get().execute().try_collect().await?,
        };
        let mut dev = 0u64;
        for l in &links {
            dev += l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Stats64(s) => Some(s.rx_dropped + s.tx_dropped),
                    _ => None,
                })
                .unwrap_or(0);
        }
        let mut qdisc = 0u64;
        let mut s = h.qdisc().get().execute();
        while let Some(m) = s.try_next().await? {
            let ours = links
                .iter()
                .any(|l| m.header.index == l.header.index as i32);
            if !ours || m.header.parent != TcHandle::ROOT {
                continue;
            }
            let stats2 = m.attributes.iter().find_map(|a| match a {
                TcAttribute::Stats2(v) => v.iter().find_map(|s| match s {
                    TcStats2::Queue(q) => Some(u64::from(q.drops)),
                    _ => None,
                }),
                _ => None,
            });
            let compat = m.attributes.iter().find_map(|a| match a {
                TcAttribute::Stats(s) => Some(u64::from(s.drops)),
                _ => None,
            });
            qdisc += stats2.or(compat).unwrap_or(0);
        }
        Ok((dev, qdisc))
    })
}

/// Puts each cell's netem qdiscs on its wire namespace's bridge ports: the up settings
/// on `to-server` (its egress carries client-to-server traffic), the down settings on
/// `to-client`. Directions with nothing to shape get no qdisc.
pub fn apply_plan(
    plan: &Plan,
    wire_ns: &std::collections::HashMap<String, std::fs::File>,
) -> Result<()> {
    for c in &plan.cells {
        let fd = &wire_ns[&c.wire_ns];
        crate::netlab::sys::in_netns(fd, || {
            for (ifname, p) in [("to-server", &c.up), ("to-client", &c.down)] {
                if !p.is_identity() {
                    apply(ifname, "netem", netem_options(p, Some(plan.seed))?)
                        .with_context(|| format!("cell {}: {ifname}", c.id))?;
                }
            }
            Ok(())
        })?;
    }
    Ok(())
}
