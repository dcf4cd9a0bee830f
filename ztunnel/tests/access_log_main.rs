//! The access log's test, in a binary of its own: it installs the process's
//! global tracing subscriber to read the lines ztunnel's tasks write, which
//! another test of a shared binary may have installed first.

mod access_log;
mod common;
