//! With the `torch` feature, puts libtorch's directory (`LIBTORCH/lib`, inside the PyPI torch wheel) on the
//! binary's run-time library path, so `ferroserve` starts without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some()
        && let Some(root) = std::env::var_os("LIBTORCH")
    {
        let lib = std::path::Path::new(&root).join("lib");
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
    }
}
