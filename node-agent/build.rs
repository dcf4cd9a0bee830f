//! Builds Warren's eBPF programs (the `warren-ebpf` crate) for the BPF
//! target with the nightly toolchain and bpf-linker, and leaves the object in
//! `OUT_DIR/warren` for `datapath::object` to embed.
//!
//! `AYA_BUILD_SKIP=1` skips it (the embedded object is then empty and loading
//! fails with a clear error); `cargo xtask setup` installs what it needs.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .join("../ebpf/warren-ebpf")
        .canonicalize()
        .context("locating ebpf/warren-ebpf")?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // The common crate is a path dependency of the programs: changes to it
    // must rebuild the object too.
    println!("cargo:rerun-if-changed={manifest_dir}/../ebpf/warren-ebpf-common");

    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // aya-build skips the build; leave an empty placeholder so
        // `include_bytes!` still compiles.
        let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
        let object = std::path::Path::new(&out_dir).join("warren");
        if !object.exists() {
            std::fs::write(&object, []).context("writing placeholder object")?;
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: "warren-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
    .context("building the eBPF programs (is the toolchain installed? run `cargo xtask setup`)")
}
