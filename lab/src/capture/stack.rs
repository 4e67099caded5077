//! The host's own drops, which no capture sees: the UDP and TCP counters of a network
//! namespace (`/proc/net/snmp` and `/proc/net/netstat`, as read from a thread inside
//! it), the drops its link interface and root qdisc counted, and the machine's
//! per-CPU receive backlog drops (`/proc/net/softnet_stat`, one for the whole host).
//! A cell reads them at both ends before and after its workload (and each load
//! level), and the report names every one that is not zero next to the figures it
//! touches, with the setting that would lift it. Parsing is pure.

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// One namespace's counters (a difference between two readings, once subtracted).
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct Stack {
    /// UDP datagrams the namespace could not deliver (InErrors: a full receive buffer,
    /// a bad checksum, no memory).
    pub udp_in_errors: u64,
    /// Of those, a full socket receive buffer (RcvbufErrors).
    pub udp_rcvbuf_errors: u64,
    /// UDP datagrams a full send buffer refused (SndbufErrors).
    pub udp_sndbuf_errors: u64,
    /// Connections a full accept queue turned away (ListenOverflows), and every SYN or
    /// handshake the listener dropped (ListenDrops, which includes those).
    pub tcp_listen_overflows: u64,
    pub tcp_listen_drops: u64,
    /// Segments dropped because a socket's backlog was full (TCPBacklogDrop).
    pub tcp_backlog_drop: u64,
    /// Segments TCP sent again (RetransSegs): the profile's loss causes these, and so
    /// does a drop inside the host.
    pub tcp_retrans_segs: u64,
    /// Frames the link interface dropped (rx_dropped + tx_dropped of `to-wire`).
    pub link_dropped: u64,
    /// Packets the interface's root qdisc dropped (with netem, the profile's loss is
    /// among them).
    pub qdisc_drops: u64,
}

impl Stack {
    /// This reading less an earlier one (a counter that went back counts 0).
    pub fn minus(self, before: Stack) -> Stack {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        Stack {
            udp_in_errors: d(self.udp_in_errors, before.udp_in_errors),
            udp_rcvbuf_errors: d(self.udp_rcvbuf_errors, before.udp_rcvbuf_errors),
            udp_sndbuf_errors: d(self.udp_sndbuf_errors, before.udp_sndbuf_errors),
            tcp_listen_overflows: d(self.tcp_listen_overflows, before.tcp_listen_overflows),
            tcp_listen_drops: d(self.tcp_listen_drops, before.tcp_listen_drops),
            tcp_backlog_drop: d(self.tcp_backlog_drop, before.tcp_backlog_drop),
            tcp_retrans_segs: d(self.tcp_retrans_segs, before.tcp_retrans_segs),
            link_dropped: d(self.link_dropped, before.link_dropped),
            qdisc_drops: d(self.qdisc_drops, before.qdisc_drops),
        }
    }

    /// The drops inside the host, each with what would lift it; empty when there were
    /// none. Retransmissions are not drops (the report shows them beside them). The
    /// client's and server's interfaces have no shaping qdisc (lab shapes in the wire
    /// namespace), so a qdisc drop here is the host's own.
    pub fn drops(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut say = |n: u64, what: &str, lift: &str| {
            if n > 0 {
                out.push(format!("{n} {what} ({lift})"));
            }
        };
        say(
            self.udp_rcvbuf_errors,
            "UDP datagrams lost to a full receive buffer",
            "a larger receive buffer lifts it: SO_RCVBUF, capped by net.core.rmem_max",
        );
        say(
            self.udp_in_errors.saturating_sub(self.udp_rcvbuf_errors),
            "other UDP receive errors",
            "checksum or memory: see /proc/net/snmp",
        );
        say(
            self.udp_sndbuf_errors,
            "UDP datagrams refused by a full send buffer",
            "a larger send buffer: SO_SNDBUF, capped by net.core.wmem_max",
        );
        say(
            self.tcp_listen_overflows,
            "TCP connections refused by a full accept queue",
            "net.core.somaxconn and the server's listen backlog",
        );
        say(
            self.tcp_listen_drops
                .saturating_sub(self.tcp_listen_overflows),
            "other SYNs dropped by a listener",
            "net.ipv4.tcp_max_syn_backlog",
        );
        say(
            self.tcp_backlog_drop,
            "TCP segments dropped by a full socket backlog",
            "the receiver fell behind; net.ipv4.tcp_rmem",
        );
        say(
            self.link_dropped,
            "frames dropped by the link interface",
            "net.core.netdev_max_backlog",
        );
        say(
            self.qdisc_drops,
            "packets dropped by the interface's qdisc",
            "its queue limit (txqueuelen)",
        );
        out
    }
}

/// Every `Name: keys...` / `Name: values...` pair of lines in a /proc/net table, as
/// (table, key) -> value.
fn table(text: &str) -> Result<std::collections::HashMap<(String, String), u64>> {
    let mut out = std::collections::HashMap::new();
    let mut lines = text.lines();
    while let Some(keys) = lines.next() {
        let Some(values) = lines.next() else {
            bail!("a header line without its values: {keys:?}");
        };
        let (kname, keys) = keys
            .split_once(':')
            .ok_or_else(|| anyhow!("not a `Name: ...` line: {keys:?}"))?;
        let (vname, values) = values
            .split_once(':')
            .ok_or_else(|| anyhow!("not a `Name: ...` line: {values:?}"))?;
        if kname != vname {
            bail!("header {kname:?} is followed by values of {vname:?}");
        }
        let keys: Vec<&str> = keys.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if keys.len() != values.len() {
            bail!("{kname}: {} names but {} values", keys.len(), values.len());
        }
        for (k, v) in keys.iter().zip(values) {
            // Tcp's MaxConn is -1: not a counter, and not read.
            if let Ok(v) = v.parse::<u64>() {
                out.insert((kname.to_owned(), (*k).to_owned()), v);
            }
        }
    }
    Ok(out)
}

/// The counters of one namespace from the text of its `/proc/net/snmp` and
/// `/proc/net/netstat`; the link's and qdisc's drops are added by [`read`].
pub fn parse(snmp: &str, netstat: &str) -> Result<Stack> {
    let s = table(snmp).context("/proc/net/snmp")?;
    let n = table(netstat).context("/proc/net/netstat")?;
    let get = |t: &std::collections::HashMap<(String, String), u64>, name: &str, key: &str| {
        t.get(&(name.to_owned(), key.to_owned()))
            .copied()
            .ok_or_else(|| anyhow!("no {name} {key} counter"))
    };
    Ok(Stack {
        udp_in_errors: get(&s, "Udp", "InErrors")?,
        udp_rcvbuf_errors: get(&s, "Udp", "RcvbufErrors")?,
        udp_sndbuf_errors: get(&s, "Udp", "SndbufErrors")?,
        tcp_retrans_segs: get(&s, "Tcp", "RetransSegs")?,
        tcp_listen_overflows: get(&n, "TcpExt", "ListenOverflows")?,
        tcp_listen_drops: get(&n, "TcpExt", "ListenDrops")?,
        tcp_backlog_drop: get(&n, "TcpExt", "TCPBacklogDrop")?,
        link_dropped: 0,
        qdisc_drops: 0,
    })
}

/// The backlog drops of every CPU of the machine (the second column of
/// `/proc/net/softnet_stat`, hexadecimal), summed: packets that found a CPU's receive
/// backlog full (net.core.netdev_max_backlog).
pub fn parse_softnet(text: &str) -> Result<u64> {
    let mut sum = 0u64;
    for (i, l) in text.lines().enumerate() {
        let col = l
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("softnet_stat line {}: no second column", i + 1))?;
        sum += u64::from_str_radix(col, 16)
            .with_context(|| format!("softnet_stat line {}: {col:?} is not hex", i + 1))?;
    }
    Ok(sum)
}

/// The machine's backlog drops so far ([`parse_softnet`]).
pub fn softnet_dropped() -> Result<u64> {
    parse_softnet(
        &std::fs::read_to_string("/proc/net/softnet_stat")
            .context("cannot read /proc/net/softnet_stat")?,
    )
}

/// The counters of the namespace `ns`, with the drops of its interface `ifname` and of
/// that interface's root qdisc.
pub fn read(ns: &std::fs::File, ifname: &str) -> Result<Stack> {
    crate::netlab::sys::in_netns(ns, || {
        // /proc/self/net is the namespace of the process's first thread; this thread's
        // is /proc/thread-self/net.
        let rd = |f: &str| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{f}"))
                .with_context(|| format!("cannot read /proc/thread-self/net/{f}"))
        };
        let mut s = parse(&rd("snmp")?, &rd("netstat")?)?;
        let (link, qdisc) = crate::netlab::qdisc::drops(Some(ifname))?;
        s.link_dropped = link;
        s.qdisc_drops = qdisc;
        Ok(s)
    })
}

/// Both ends of a cell over its workload, and the machine's backlog drops meanwhile.
#[derive(
    schemars::JsonSchema, Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize,
)]
pub struct CellStack {
    pub client: Stack,
    pub server: Stack,
    /// The wire namespace between them: what its interfaces and their root qdiscs
    /// dropped (the kernel backend's netem and tbf are there; with netem, the
    /// profile's loss counts among the qdisc's drops).
    pub wire_link_dropped: u64,
    pub wire_qdisc_drops: u64,
    /// Backlog drops of the whole machine (every namespace's, not only this cell's).
    pub softnet_dropped: u64,
}

/// A reading of both ends and the machine, to subtract later.
#[derive(Debug, Clone, Copy)]
pub struct Mark(CellStack);

impl Mark {
    /// Reads the client's and server's namespaces (their interface `ifname`), every
    /// interface of the wire namespace, and the machine.
    pub fn take(
        client: &std::fs::File,
        server: &std::fs::File,
        wire: &std::fs::File,
        ifname: &str,
    ) -> Result<Mark> {
        let (wire_link_dropped, wire_qdisc_drops) =
            crate::netlab::sys::in_netns(wire, || crate::netlab::qdisc::drops(None))?;
        Ok(Mark(CellStack {
            client: read(client, ifname)?,
            server: read(server, ifname)?,
            wire_link_dropped,
            wire_qdisc_drops,
            softnet_dropped: softnet_dropped()?,
        }))
    }

    /// What changed from `self` to `later`.
    pub fn until(self, later: Mark) -> CellStack {
        CellStack {
            client: later.0.client.minus(self.0.client),
            server: later.0.server.minus(self.0.server),
            wire_link_dropped: later
                .0
                .wire_link_dropped
                .saturating_sub(self.0.wire_link_dropped),
            wire_qdisc_drops: later
                .0
                .wire_qdisc_drops
                .saturating_sub(self.0.wire_qdisc_drops),
            softnet_dropped: later
                .0
                .softnet_dropped
                .saturating_sub(self.0.softnet_dropped),
        }
    }
}

impl CellStack {
    /// Every drop inside the host, as "client: ..." / "server: ..." / "wire: ..." /
    /// "machine: ...". With `qdisc_is_loss` (netem with a loss rate), the qdiscs'
    /// drops include the profile's own and are not named.
    pub fn drops(&self, qdisc_is_loss: bool) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (side, s) in [("client", &self.client), ("server", &self.server)] {
            out.extend(s.drops().into_iter().map(|d| format!("{side}: {d}")));
        }
        if self.wire_link_dropped > 0 {
            out.push(format!(
                "wire: {} frames dropped by the wire namespace's interfaces (net.core.netdev_max_backlog)",
                self.wire_link_dropped
            ));
        }
        if self.wire_qdisc_drops > 0 && !qdisc_is_loss {
            out.push(format!(
                "wire: {} packets dropped by the shaping qdiscs beyond the profile's loss (the profile's queue limit, `limit:`)",
                self.wire_qdisc_drops
            ));
        }
        if self.softnet_dropped > 0 {
            out.push(format!(
                "machine: {} packets found a CPU's receive backlog full, in any namespace (net.core.netdev_max_backlog)",
                self.softnet_dropped
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
Tcp: 1 200 120000 -1 1714 1599 73 280 0 117692 111049 27 0 384 0\n\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors\n\
Udp: 46567 4 420 47013 418 3 2 0 0\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPBacklogDrop\n\
TcpExt: 0 5 7 11\nIpExt: InNoRoutes\nIpExt: 0\n";

    #[test]
    fn the_counters_are_read_by_name_from_both_tables() {
        let s = parse(SNMP, NETSTAT).unwrap();
        assert_eq!(
            s,
            Stack {
                udp_in_errors: 420,
                udp_rcvbuf_errors: 418,
                udp_sndbuf_errors: 3,
                tcp_listen_overflows: 5,
                tcp_listen_drops: 7,
                tcp_backlog_drop: 11,
                tcp_retrans_segs: 27,
                link_dropped: 0,
                qdisc_drops: 0,
            }
        );
    }

    #[test]
    fn a_table_that_does_not_line_up_is_an_error_that_says_where() {
        let e = parse("Udp: InErrors RcvbufErrors\nUdp: 1\n", NETSTAT).unwrap_err();
        assert!(
            format!("{e:#}").contains("Udp: 2 names but 1 values"),
            "{e:#}"
        );
        let e = parse("Udp: InErrors\nTcp: 1\n", NETSTAT).unwrap_err();
        assert!(format!("{e:#}").contains("followed by values of"), "{e:#}");
        let e = parse(SNMP, "IpExt: InNoRoutes\nIpExt: 0\n").unwrap_err();
        assert!(
            format!("{e:#}").contains("no TcpExt ListenOverflows counter"),
            "{e:#}"
        );
    }

    #[test]
    fn softnet_drops_are_the_second_hex_column_summed() {
        let t = "0001a2b3 00000010 00000000\n0000ffff 0000000a 00000001\n";
        assert_eq!(parse_softnet(t).unwrap(), 0x10 + 0x0a);
        assert!(parse_softnet("00000001\n").is_err());
    }

    #[test]
    fn only_drops_are_named_each_with_what_lifts_it() {
        let before = parse(SNMP, NETSTAT).unwrap();
        let mut after = before;
        assert!(after.minus(before).drops().is_empty());
        after.udp_in_errors += 120;
        after.udp_rcvbuf_errors += 100;
        after.tcp_retrans_segs += 50;
        after.qdisc_drops += 9;
        let d = after.minus(before);
        assert_eq!(d.tcp_retrans_segs, 50);
        let named = d.drops();
        assert_eq!(named.len(), 3, "{named:?}");
        assert!(named[0].starts_with("100 UDP datagrams lost to a full receive buffer"));
        assert!(named[0].contains("SO_RCVBUF"));
        assert!(named[1].starts_with("20 other UDP receive errors"));
        assert!(named[2].starts_with("9 packets dropped by the interface's qdisc"));
    }

    #[test]
    fn a_cell_names_each_side_and_the_machine() {
        let mut c = CellStack::default();
        c.server.tcp_listen_overflows = 4;
        c.server.tcp_listen_drops = 4;
        c.softnet_dropped = 2;
        c.wire_qdisc_drops = 7;
        let d = c.drops(false);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].starts_with("server: 4 TCP connections refused by a full accept queue"));
        assert!(d[1].starts_with("wire: 7 packets dropped by the shaping qdiscs"));
        assert!(d[2].starts_with("machine: 2 packets"));
        // netem with a loss rate: its drops are the profile's too.
        assert_eq!(c.drops(true).len(), 2);
    }
}
