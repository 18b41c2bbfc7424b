//! Links the fuzz targets to libtorch, as the main crate's build.rs does for its own tests:
//!
//! * `-Wl,-rpath=<libtorch lib>`: the targets find libtorch at run time without
//!   LD_LIBRARY_PATH.
//! * `-Wl,--no-as-needed -ltorch`: keeps `libtorch.so` (and what it pulls in) linked even
//!   though no symbol is used from it directly (tch issue #980).
//!
//! `DEP_TCH_LIBTORCH_LIB` comes from torch-sys (`links = "tch"`), hence the direct
//! dependency on torch-sys in Cargo.toml.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    println!("cargo:rustc-link-arg=-L{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
