//! With the `torch` feature, puts libtorch's directory (`LIBTORCH/lib`, inside the PyPI torch wheel) on the
//! run-time library path of the bench binaries, as the server's build script does for `ferroserve`.

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some()
        && let Some(root) = std::env::var_os("LIBTORCH")
    {
        let lib = std::path::Path::new(&root).join("lib");
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
    }
}
