//! Compiles the mesh's .proto files with a vendored `protoc`, so building needs
//! nothing beyond the Rust toolchain.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["mesh/identity/v1/identity.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(cfg, &protos, &["."])?;
    Ok(())
}
