//! Compiles the `kaskade.v1` and `kaskade.cascade.v1` protos with protox (pure Rust, no system protoc)
//! and keeps the descriptor set for gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/kaskade/v1/room.proto",
        "proto/kaskade/v1/session.proto",
        "proto/kaskade/v1/cascade.proto",
        "proto/kaskade/v1/router.proto",
        "proto/kaskade/cascade/v1/link.proto",
    ];
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("kaskade_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
