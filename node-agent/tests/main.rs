//! The node agent's tests that need more than one module: the CA over gRPC
//! and over a fake Kubernetes API, config distribution to subscribers, the
//! Kubernetes config source, and the corpus of valid and refused config.
//! One test binary rather than one per file, since each binary links all of
//! the agent.

mod ca;
mod ca_kube;
mod config_corpus;
mod distribution;
mod kube_source;
