//! Links this crate's own binaries (tests, examples, benches) to libtorch so that they run
//! without LD_LIBRARY_PATH and keep CUDA.
//!
//! * `-Wl,-rpath=<libtorch lib>`: the binaries find libtorch at run time.
//! * `-Wl,--no-as-needed -ltorch`: `libtorch.so` pulls in `libtorch_cuda.so`; without
//!   `--no-as-needed` the linker drops it, since no symbol is used directly, and
//!   `tch::Cuda::is_available()` is false on a GPU machine (tch issue #980).
//!
//! It also checks libtorch's version, which torch-sys does not do when `LIBTORCH` points at
//! a Python installation, and says what to run when it is wrong.

use std::path::Path;

const TORCH_VERSION: &str = "2.11.0";

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_BYPASS_VERSION_CHECK");
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => lib,
        // torch-sys reports the libtorch directory on Linux and macOS only; elsewhere the
        // linker's defaults apply.
        Err(_) => return,
    };
    if std::env::var_os("LIBTORCH_BYPASS_VERSION_CHECK").is_none() {
        check_version(Path::new(&lib));
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
    println!("cargo:rustc-link-arg=-L{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

/// Reads the version of the libtorch whose `lib` directory is given: `build-version` in a
/// standalone libtorch, `version.py` in a PyTorch wheel.
fn check_version(lib: &Path) {
    let Some(root) = lib.parent() else { return };
    let found = std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
        .or_else(|| {
            let py = std::fs::read_to_string(root.join("version.py")).ok()?;
            let line = py.lines().find(|l| l.starts_with("__version__"))?;
            Some(line.split(['\'', '"']).nth(1)?.to_string())
        });
    let Some(found) = found else { return };
    let base = found.split('+').next().unwrap_or(&found);
    if base != TORCH_VERSION {
        panic!(
            "\n\ntch-state-dict needs libtorch {TORCH_VERSION} (tch 0.24), but {} holds {found}.\n\
             Run the crate's commands through `scripts/cargo`, which installs torch=={TORCH_VERSION}\n\
             in ~/.cache/tch-state-dict and uses it, for example `scripts/cargo test`;\n\
             or point LIBTORCH at a libtorch {TORCH_VERSION}.\n",
            root.display()
        );
    }
}
