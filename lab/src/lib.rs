//! `lab`: a root-privileged network-namespace lab that measures how LLM token-streaming
//! transports behave on a bad network.
//!
//! The folders follow the data, from a topology file to a report:
//!
//! | stage | module | pure? |
//! |---|---|---|
//! | what can be measured | [`approach`]: the registry of approaches | yes |
//! | a topology file, parsed and checked | [`topology`] | yes |
//! | the plan: cells, namespaces, addresses, link parameters per direction | [`plan`] | yes |
//! | the lab built from a finished plan: namespaces, links, qdiscs, processes | [`netlab`] | no |
//! | link shaping: parameters, the emulator's engine, netem/tbf encoders | [`shaping`] | yes |
//! | the userspace link emulator's sockets and loop (`lab wire`) | [`wire`] | no |
//! | a cell's workload launched in its namespaces | [`launch`] | no |
//! | the wire captured at both ends of every link | [`capture`] | counting is |
//! | every captured byte given its layer, every packet its class | [`anatomy`] | yes |
//! | records and captures added up: run.json, metrics, digests | [`metrics`] | yes |
//! | tables, plots, status | [`report`] | yes |
//!
//! [`stats`] is arithmetic every stage may use (medians, confidence intervals, rank
//! tests over repeated runs); it imports nothing of lab.
//!
//! [`commands`] holds every subcommand's handler: they print and choose exit statuses,
//! so [`cli`] only parses and `main` only dispatches. [`loopback`] runs every server
//! in-process, without namespaces, for `lab demo`, tests and benchmarks.

pub mod anatomy;
pub mod approach;
pub mod bench;
pub mod capture;
pub mod cli;
pub mod commands;
pub mod launch;
pub mod loopback;
pub mod metrics;
pub mod netlab;
pub mod plan;
pub mod report;
pub mod shaping;
pub mod stats;
pub mod table;
pub mod topology;
pub mod wire;
