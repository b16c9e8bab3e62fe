//! Compiles the MindSpore strategy protobuf with protox (no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node_strategy.proto");
    let fds = protox::compile(["proto/node_strategy.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
