//! Empty on purpose: the programs are the `warren` binary target. This
//! library target exists so node-agent can name the crate as a
//! build-dependency, which makes cargo rebuild the embedded object when the
//! programs change.
#![no_std]
