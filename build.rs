//! Compiles `proto/` into Rust (tonic + prost) with `protox`, a pure-Rust
//! protobuf compiler: the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/grpc_service.proto", "proto/model_config.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // The client is for the tests (and anyone embedding the crate).
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
