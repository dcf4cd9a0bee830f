//! Compiles the protos with protox (pure Rust), so building Warren needs no
//! `protoc` on the machine.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/warren/config/v1/config.proto",
        "proto/warren/ca/v1/ca.proto",
        "proto/envoy/service/auth/v3/external_auth.proto",
        "proto/opentelemetry/proto/collector/trace/v1/trace_service.proto",
    ];
    for dependency in [
        "proto/envoy/service/auth/v3/attribute_context.proto",
        "proto/envoy/config/core/v3/base.proto",
        "proto/envoy/type/v3/http_status.proto",
        "proto/google/rpc/status.proto",
        "proto/opentelemetry/proto/trace/v1/trace.proto",
        "proto/opentelemetry/proto/common/v1/common.proto",
        "proto/opentelemetry/proto/resource/v1/resource.proto",
    ] {
        println!("cargo:rerun-if-changed={dependency}");
    }
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, [Path::new("proto")])?;
    tonic_prost_build::configure()
        // Ordered maps: equal resources encode equally, and dumps are stable.
        .btree_map(".")
        // Slices of the received message, not a copy each.
        .bytes(".warren.config.v1.Update.encoded_upserts")
        // Its own Debug, which never shows the key (`src/lib.rs`).
        .skip_debug([".warren.config.v1.Credential"])
        .compile_fds(fds)?;
    Ok(())
}
