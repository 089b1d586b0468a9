//! Puts libtorch's directory (from `LIBTORCH`, the PyPI torch wheel's `torch/`) on the run-time library path
//! of this crate's test binaries, so they start without `LD_LIBRARY_PATH`. The server binary does the same in
//! its own build script.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(root) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&root).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // As in the server's build script: keep libtorch_cuda.so, which `--as-needed` would drop.
        let torch_cuda = lib.join("libtorch_cuda.so");
        if std::env::var_os("CARGO_FEATURE_CUDA").is_some() && torch_cuda.is_file() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,{},--as-needed", torch_cuda.display());
        }
    }
}
