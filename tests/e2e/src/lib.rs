//! Warren's privileged end-to-end tests live in `tests/`; they need root,
//! BPF and network namespaces, and `cargo xtask test` runs them after the
//! unit tests. Shared setup lives in `warren-testbed`.
