//! Links this crate's own binaries (tests, examples, benches, the `tch-state-dict` tool) to
//! libtorch so that they run without LD_LIBRARY_PATH and keep CUDA. The flags depend on the
//! target's linker, so they follow `CARGO_CFG_TARGET_OS`, the OS of the target being built
//! (not `cfg!`, which in a build script describes the host the script runs on).
//!
//! On Linux (GNU ld and its flags):
//!
//! * `-Wl,-rpath=<libtorch lib>`: the binaries find libtorch at run time.
//! * `-Wl,--no-as-needed -ltorch`: `libtorch.so` pulls in `libtorch_cuda.so`; without
//!   `--no-as-needed` the linker drops it, since no symbol is used directly, and
//!   `tch::Cuda::is_available()` is false on a GPU machine (tch issue #980).
//!
//! On macOS, whose linker (ld64) rejects `-rpath=` and has no `--no-as-needed`, only
//! `-Wl,-rpath,<libtorch lib>`, its spelling of the same run path. Nothing more is needed
//! there: ld64 keeps every dylib it is given, used or not, and libtorch for macOS has no CUDA
//! library to keep. On other targets torch-sys reports no directory, and nothing is added.
//!
//! It also checks that libtorch is a 2.11 release (2.11.0, 2.11.1, ...), which torch-sys
//! does not do when `LIBTORCH` points at a libtorch or a Python installation, and says what to
//! run when it is not.
//!
//! With the `doc-only` feature (docs.rs) there is no libtorch and nothing to link: it does
//! nothing.

use std::path::Path;

/// The libtorch release tch 0.24 is made for; any patch release of it is accepted.
const TORCH_RELEASE: &str = "2.11";

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_BYPASS_VERSION_CHECK");
    if std::env::var_os("CARGO_FEATURE_DOC_ONLY").is_some() {
        return;
    }
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => lib,
        // torch-sys reports the libtorch directory on Linux and macOS only; elsewhere the
        // linker's defaults apply.
        Err(_) => return,
    };
    if std::env::var_os("LIBTORCH_BYPASS_VERSION_CHECK").is_none() {
        check_version(Path::new(&lib));
    }
    match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("linux") => {
            println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
            println!("cargo:rustc-link-arg=-L{lib}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
        }
        Ok("macos") => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
        _ => {}
    }
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
    if !is_release(&found, TORCH_RELEASE) {
        // Cargo shows a failed build script's stderr; a panic would add a backtrace.
        eprintln!(
            "\ntch-state-dict needs libtorch {TORCH_RELEASE}.x (tch 0.24), but {} holds {found}.\n\
             In this crate's repository, run cargo through `scripts/cargo` (for example\n\
             `scripts/cargo test`): it installs torch {TORCH_RELEASE} in ~/.cache/tch-state-dict\n\
             and builds against it. Elsewhere, point LIBTORCH at a libtorch {TORCH_RELEASE}.x, or set\n\
             LIBTORCH_USE_PYTORCH=1 with a Python whose torch is {TORCH_RELEASE}.0 first on PATH\n\
             (torch-sys 0.24.0 itself accepts only {TORCH_RELEASE}.0 from Python).\n\
             LIBTORCH_BYPASS_VERSION_CHECK=1 builds anyway, at your own risk.\n",
            root.display()
        );
        std::process::exit(1);
    }
}

/// Whether `version` (`2.11.0`, `2.11.1+cu128`) is a patch release of `release` (`2.11`).
fn is_release(version: &str, release: &str) -> bool {
    let base = version.split('+').next().unwrap_or(version);
    base.strip_prefix(release)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}
