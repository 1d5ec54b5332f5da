//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed, and writes their
//! encoded descriptor set to `OUT_DIR/baton_descriptor.bin` for gRPC server reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=baton.proto");
    println!("cargo:rerun-if-changed=replication.proto");
    let fds = protox::compile(["baton.proto", "replication.proto"], ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("baton_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
