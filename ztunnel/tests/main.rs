//! ztunnel's in-process tests: real ztunnels, certificates and pods on
//! loopback addresses, one module per subject. They are one test binary
//! rather than one per file, since each binary links all of ztunnel: a
//! dozen of them took half a gigabyte of disk and their own link each.
//! Tests run in parallel, so each picks a loopback net of its own
//! (`common::two_nodes`, which refuses a net another test took). The access
//! log's test is the exception (`access_log_main.rs`): it reads what the
//! process's one global tracing subscriber writes, so it has a process of
//! its own.

mod common;

mod catch_up;
mod dns;
mod dns_proxy;
mod early_data;
mod explain;
mod handover;
mod hbone;
mod load;
mod local;
mod subscription;
