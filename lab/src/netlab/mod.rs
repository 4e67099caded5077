//! The privileged layer: a finished plan made real as network namespaces, veth pairs,
//! bridges, qdiscs and processes, and taken down again; and what commands need to live
//! in a lab that is up (state records, live facts, shells, the relay).
//!
//! Everything goes over netlink (rtnetlink), ioctl (offloads) and sysctl (IPv6); lab
//! needs no `ip`, `tc` or `ethtool` at run time. Nothing here decides what to build:
//! that is the plan's job. Nothing here prints: that is the commands'.

pub mod browsers;
pub mod ethtool;
pub mod files;
pub mod lifecycle;
pub mod links;
pub mod live;
pub mod packet;
pub mod procs;
pub mod qdisc;
pub mod relay;
pub mod sessions;
pub mod shell;
pub mod state;
pub mod sys;
