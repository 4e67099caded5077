//! Links over rtnetlink: veth pairs and bridges created straight into their namespaces
//! (IFLA_NET_NS_FD on both ends, so no name ever appears in the host namespace), then
//! each namespace configured from inside: ownership altnames, bridge ports, addresses,
//! links up, loopback up, offloads off.

use super::{ethtool, sys};
use crate::plan::{Iface, Plan};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, Prop};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;

/// Netlink requests kept in flight at once.
const IN_FLIGHT: usize = 16;

/// The altname that marks an interface as lab's: `lab.<lab name>.<interface>`.
pub fn mark(lab: &str, ifname: &str) -> String {
    format!("lab.{lab}.{ifname}")
}

/// The altname on a namespace's loopback that marks the namespace as lab's.
pub fn ns_mark(lab: &str) -> String {
    mark(lab, "ns")
}

/// A current-thread runtime with a netlink connection opened in the calling thread's
/// network namespace.
pub(crate) fn with_netlink<T>(f: impl AsyncFnOnce(Handle) -> Result<T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a netlink runtime")?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().context("cannot open netlink")?;
        let task = tokio::spawn(conn);
        let r = f(handle).await;
        task.abort();
        r
    })
}

fn split_peer(peer: &str) -> Result<(&str, &str)> {
    peer.split_once('/')
        .ok_or_else(|| anyhow!("bad peer {peer} in the plan"))
}

/// Creates every bridge and veth pair of the plan (from the calling thread's namespace),
/// each end directly in its namespace.
pub fn create(plan: &Plan, fds: &HashMap<String, File>) -> Result<()> {
    let fd = |ns: &str| {
        fds.get(ns)
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| anyhow!("namespace {ns} is not open"))
    };
    let mut msgs = Vec::new();
    let mut seen = HashSet::new();
    for i in &plan.interfaces {
        let here = format!("{}/{}", i.namespace, i.name);
        match i.kind.as_str() {
            "bridge" => msgs.push((
                here,
                LinkBridge::new(&i.name)
                    .setns_by_fd(fd(&i.namespace)?)
                    .build(),
            )),
            "veth" => {
                let peer = i.peer.as_deref().unwrap_or_default();
                if seen.contains(peer) {
                    continue;
                }
                seen.insert(here.clone());
                let (pns, pname) = split_peer(peer)?;
                let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
                    .name(pname.to_owned())
                    .setns_by_fd(fd(pns)?)
                    .build();
                let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
                    .name(i.name.clone())
                    .setns_by_fd(fd(&i.namespace)?)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
                    .build();
                msgs.push((format!("{here} <-> {peer}"), msg));
            }
            other => bail!("unknown interface kind {other} in the plan"),
        }
    }
    with_netlink(async |handle| {
        let results: Vec<Result<()>> = stream::iter(msgs)
            .map(|(what, msg)| {
                let h = handle.clone();
                async move {
                    h.link()
                        .add(msg)
                        .execute()
                        .await
                        .with_context(|| format!("cannot create {what}"))
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    })
}

/// The link named `name`, with its attributes (stats included).
pub(crate) async fn get(h: &Handle, name: &str) -> Result<netlink_packet_route::link::LinkMessage> {
    h.link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("cannot find interface {name}"))?
        .ok_or_else(|| anyhow!("interface {name} is missing"))
}

/// The index of the link named `name`.
pub(crate) async fn index_of(h: &Handle, name: &str) -> Result<u32> {
    Ok(get(h, name).await?.header.index)
}

async fn up(h: &Handle, index: u32) -> Result<()> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(Into::into)
}

/// Configures the interfaces of one namespace, from inside it: marks, bridge ports,
/// addresses, links and loopback up, offloads off.
pub fn configure(lab: &str, ns: &File, ifaces: &[&Iface]) -> Result<()> {
    sys::in_netns(ns, || {
        with_netlink(async |h| {
            let lo = index_of(&h, "lo").await?;
            h.link()
                .property_add(lo)
                .alt_ifname(&[&ns_mark(lab)])
                .execute()
                .await
                .context("cannot mark loopback")?;
            up(&h, lo).await.context("cannot bring loopback up")?;
            let mut index = BTreeMap::new();
            for i in ifaces {
                let idx = index_of(&h, &i.name).await?;
                index.insert(i.name.as_str(), idx);
                h.link()
                    .property_add(idx)
                    .alt_ifname(&[&mark(lab, &i.name)])
                    .execute()
                    .await
                    .with_context(|| format!("cannot mark {}", i.name))?;
            }
            for i in ifaces {
                let idx = index[i.name.as_str()];
                if let Some(m) = &i.master {
                    let br = *index
                        .get(m.as_str())
                        .ok_or_else(|| anyhow!("bridge {m} of {} is not in the plan", i.name))?;
                    h.link()
                        .set(LinkUnspec::new_with_index(idx).controller(br).build())
                        .execute()
                        .await
                        .with_context(|| format!("cannot add {} to {m}", i.name))?;
                }
                for a in i.address.iter().chain(&i.more_addresses) {
                    let (ip, len) = a
                        .split_once('/')
                        .ok_or_else(|| anyhow!("bad address {a} in the plan"))?;
                    h.address()
                        .add(idx, ip.parse()?, len.parse()?)
                        .execute()
                        .await
                        .with_context(|| format!("cannot add {a} to {}", i.name))?;
                }
            }
            Ok(())
        })?;
        for i in ifaces {
            ethtool::disable_offloads(&i.name)?;
        }
        with_netlink(async |h| {
            for i in ifaces {
                let idx = index_of(&h, &i.name).await?;
                up(&h, idx)
                    .await
                    .with_context(|| format!("cannot bring {} up", i.name))?;
            }
            Ok(())
        })
    })
}

/// Does the namespace carry lab's mark for `lab` (or, with `None`, any lab)? Returns the
/// lab name found in the mark.
pub fn ns_marked(ns: &File) -> Result<Option<String>> {
    sys::in_netns(ns, || {
        with_netlink(async |h| {
            let lo = get(&h, "lo").await?;
            for a in lo.attributes {
                if let LinkAttribute::PropList(props) = a {
                    for p in props {
                        if let Prop::AltIfName(n) = p
                            && let Some(lab) =
                                n.strip_prefix("lab.").and_then(|r| r.strip_suffix(".ns"))
                        {
                            return Ok(Some(lab.to_owned()));
                        }
                    }
                }
            }
            Ok(None)
        })
    })
}

/// One interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkInfo {
    pub name: String,
    pub altnames: Vec<String>,
    /// Addresses with prefix length.
    pub addresses: Vec<String>,
    pub up: bool,
    /// The bridge it is a port of.
    pub master: Option<String>,
}

/// The interfaces of a namespace, for tests and diagnostics.
pub fn list(ns: &File) -> Result<Vec<LinkInfo>> {
    use netlink_packet_route::address::AddressAttribute;
    sys::in_netns(ns, || {
        with_netlink(async |h| {
            let mut out = Vec::new();
            let mut links = h.link().get().execute();
            let mut names = BTreeMap::new();
            while let Some(l) = links.try_next().await? {
                let mut name = String::new();
                let mut alts = Vec::new();
                let mut master = None;
                let up = l
                    .header
                    .flags
                    .contains(netlink_packet_route::link::LinkFlags::Up);
                for a in l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = n,
                        LinkAttribute::Controller(m) => master = Some(m),
                        LinkAttribute::PropList(props) => {
                            for p in props {
                                if let Prop::AltIfName(n) = p {
                                    alts.push(n);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                names.insert(l.header.index, (name, alts, up, master));
            }
            let mut addrs: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            let mut s = h.address().get().execute();
            while let Some(a) = s.try_next().await? {
                for attr in a.attributes {
                    if let AddressAttribute::Address(ip) = attr {
                        addrs
                            .entry(a.header.index)
                            .or_default()
                            .push(format!("{ip}/{}", a.header.prefix_len));
                    }
                }
            }
            let by_index: BTreeMap<u32, String> =
                names.iter().map(|(i, v)| (*i, v.0.clone())).collect();
            for (idx, (name, altnames, up, master)) in names {
                out.push(LinkInfo {
                    name,
                    altnames,
                    addresses: addrs.remove(&idx).unwrap_or_default(),
                    up,
                    master: master.and_then(|m| by_index.get(&m).cloned()),
                });
            }
            Ok(out)
        })
    })
}

/// The route metrics that carry TCP settings (iproute2's `quickack`, `initcwnd` and
/// `congctl`); empty when every one is the kernel's default.
pub fn tcp_metrics(tcp: &lab_codec::transport::Tcp) -> Vec<RouteMetric> {
    let mut m = Vec::new();
    if tcp.quickack {
        m.push(RouteMetric::QuickAck(1));
    }
    if let Some(n) = tcp.initcwnd {
        m.push(RouteMetric::InitCwnd(n));
    }
    if let Some(c) = &tcp.congestion {
        m.push(RouteMetric::CcAlgo(c.clone()));
    }
    m
}

/// The message that replaces the connected route of `addr` (the interface's address
/// with its prefix length) on interface `index` with one carrying `metrics`: what `ip
/// route replace <net>/<len> dev <if> proto kernel scope link src <addr> <metrics>` asks.
pub fn route_with_metrics(
    index: u32,
    addr: std::net::Ipv4Addr,
    len: u8,
    metrics: Vec<RouteMetric>,
) -> RouteMessage {
    let net = u32::from(addr) & (u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0));
    let mut msg = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .destination_prefix(net.into(), len)
        .pref_source(addr)
        .output_interface(index)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Kernel)
        .build();
    msg.attributes.push(RouteAttribute::Metrics(metrics));
    msg
}

/// Puts the TCP settings on the route of `ifname`'s subnet in the namespace `ns`, so
/// that every TCP connection over it, either way, uses them.
pub fn tune_route(
    ns: &File,
    ifname: &str,
    address: &str,
    tcp: &lab_codec::transport::Tcp,
) -> Result<()> {
    let metrics = tcp_metrics(tcp);
    if metrics.is_empty() {
        return Ok(());
    }
    let (ip, len) = address
        .split_once('/')
        .ok_or_else(|| anyhow!("bad address {address} in the plan"))?;
    let (ip, len): (std::net::Ipv4Addr, u8) = (ip.parse()?, len.parse()?);
    sys::in_netns(ns, || {
        with_netlink(async |h| {
            let idx = index_of(&h, ifname).await?;
            h.route()
                .add(route_with_metrics(idx, ip, len, metrics))
                .replace()
                .execute()
                .await
                .with_context(|| format!("cannot set TCP settings on the route of {ifname}"))
        })
    })
}

/// How long [`wait_running`] waits for the kernel to start every link.
pub const RUNNING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the kernel reports every interface of the plan operationally up.
///
/// A link set up is not yet running: the kernel's link watcher turns its carrier on,
/// and swaps its no-op queueing discipline for a real one, up to a second later (it
/// batches such events). Until then what is sent on it is dropped: measured here, the
/// first connection from a server namespace to the LLM network lost its ARP exchange
/// and took 1,003 ms instead of 2 (a SYN sent again after 1 s), and HAProxy's first
/// health checks failed. So lab starts no process before every link is running.
pub fn wait_running(plan: &Plan, fds: &HashMap<String, File>) -> Result<()> {
    use netlink_packet_route::link::State;
    let t0 = std::time::Instant::now();
    for (ns, fd) in fds {
        let wanted: Vec<&str> = plan
            .interfaces
            .iter()
            .filter(|i| &i.namespace == ns)
            .map(|i| i.name.as_str())
            .collect();
        if wanted.is_empty() {
            continue;
        }
        loop {
            let states: Vec<(String, bool)> = sys::in_netns(fd, || {
                with_netlink(async |h| {
                    let mut out = Vec::new();
                    let mut links = h.link().get().execute();
                    while let Some(l) = links.try_next().await? {
                        let mut name = String::new();
                        let mut up = false;
                        for a in l.attributes {
                            match a {
                                LinkAttribute::IfName(n) => name = n,
                                LinkAttribute::OperState(s) => up = s == State::Up,
                                _ => {}
                            }
                        }
                        out.push((name, up));
                    }
                    Ok(out)
                })
            })?;
            let down: Vec<&str> = wanted
                .iter()
                .copied()
                .filter(|w| !states.iter().any(|(n, up)| n == w && *up))
                .collect();
            if down.is_empty() {
                break;
            }
            if t0.elapsed() > RUNNING_TIMEOUT {
                bail!(
                    "in {ns}, {} not running {:.1} s after being set up (operstate not up)",
                    down.join(", "),
                    RUNNING_TIMEOUT.as_secs_f64()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    Ok(())
}
