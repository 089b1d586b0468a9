//! Compiles `proto/inference.proto` with a vendored `protoc`, so a build needs no system protobuf.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded, and prost-build reads PROTOC from the environment.
    unsafe_set_protoc(&protoc);
    tonic_prost_build::configure()
        // Every service and client decodes through the prost codec behind a bound on what decoding allocates.
        .codec_path("crate::bound::BoundedCodec")
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .compile_protos(&["proto/inference.proto", "proto/traffic.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/inference.proto");
    println!("cargo:rerun-if-changed=proto/traffic.proto");
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_set_protoc(path: &std::path::Path) {
    // `set_var` is unsafe since edition 2024 because of other threads; a build script has none.
    unsafe { std::env::set_var("PROTOC", path) };
}
