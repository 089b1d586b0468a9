//! With the `torch` feature, puts libtorch's directory (`LIBTORCH/lib`, inside the PyPI torch wheel) on the
//! binary's run-time library path, so `ferroserve` starts without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some()
        && let Some(root) = std::env::var_os("LIBTORCH")
    {
        let lib = std::path::Path::new(&root).join("lib");
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
        // Nothing in our code calls into libtorch_cuda.so, so the linker's `--as-needed` drops it and libtorch
        // then reports no CUDA device. With `cuda`, it is linked whatever the linker thinks.
        let torch_cuda = lib.join("libtorch_cuda.so");
        if std::env::var_os("CARGO_FEATURE_CUDA").is_some() && torch_cuda.is_file() {
            println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,{},--as-needed", torch_cuda.display());
        }
    }
}
