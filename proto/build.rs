use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/vigil/v1/ingest.proto", "proto/vigil/v1/alerts.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // protox compiles the .proto files in Rust, so building needs no protoc on PATH.
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("vigil_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
