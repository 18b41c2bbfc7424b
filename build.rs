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
//! # Which tch
//!
//! The crate works with tch 0.17 to 0.24 (`Cargo.toml`'s range: Cargo picks the tch the
//! dependent crate already has, since only one torch-sys can be linked). Each tch release is
//! made for one libtorch release ([`RELEASES`]). Cargo tells a build script nothing about
//! the versions it resolved, and torch-sys reports only its libtorch directory
//! (`DEP_TCH_LIBTORCH_LIB`); so this script reads the version of that libtorch, which
//! torch-sys has already checked against its own release (unless
//! `LIBTORCH_BYPASS_VERSION_CHECK` is set, or `LIBTORCH` names a Python installation, which
//! torch-sys does not check), and knows the tch from it. It stops, saying what to run, when
//! that libtorch is none of the range's releases.
//!
//! From the tch it sets the `cfg`s that the code branches on, all of them here: `tch_float8`
//! from tch 0.19 on, which has `Kind::Float8e5m2` and its kin, read only in `src/dtype.rs`,
//! the one table of kinds (before 0.19, a float8 entry is refused as any dtype tch lacks).
//! Everything else the crate uses from tch is the same from 0.17 to 0.24, or is written the
//! one way that works on all of them (a variable made then given its data, where
//! `Path::add` is public from 0.19 only).
//!
//! With the `doc-only` feature (docs.rs) there is no libtorch and nothing to link; the tch
//! is then the range's newest, or the one `TCH_STATE_DICT_DOC_ONLY_TCH` names (`0.17`), for
//! checking that the crate compiles against an older tch without installing its libtorch.

use std::path::Path;

include!("build/releases.rs");

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_BYPASS_VERSION_CHECK");
    println!("cargo:rerun-if-env-changed=TCH_STATE_DICT_DOC_ONLY_TCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/releases.rs");
    println!("cargo:rustc-check-cfg=cfg(tch_float8)");
    if std::env::var_os("CARGO_FEATURE_DOC_ONLY").is_some() {
        let minor = match std::env::var("TCH_STATE_DICT_DOC_ONLY_TCH") {
            Ok(v) => tch_minor(&v).unwrap_or_else(|| {
                eprintln!("\nTCH_STATE_DICT_DOC_ONLY_TCH={v:?} is not a tch of 0.17 to 0.24\n");
                std::process::exit(1)
            }),
            Err(_) => NEWEST.0,
        };
        set_cfgs(minor);
        return;
    }
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => lib,
        // torch-sys reports the libtorch directory on Linux and macOS only; elsewhere the
        // linker's defaults apply, and the tch is taken to be the newest.
        Err(_) => {
            set_cfgs(NEWEST.0);
            return;
        }
    };
    let minor = tch_of(Path::new(&lib));
    set_cfgs(minor);
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

/// The `cfg`s of tch 0.`minor`, and `TCH_STATE_DICT_TCH` (`0.24`) for the crate's code and
/// tests to read.
fn set_cfgs(minor: u32) {
    println!("cargo:rustc-env=TCH_STATE_DICT_TCH=0.{minor}");
    if minor >= FLOAT8_FROM {
        println!("cargo:rustc-cfg=tch_float8");
    }
}

/// The tch minor release made for the libtorch whose `lib` directory is given (its
/// version from `build-version` in a standalone libtorch, `version.py` in a PyTorch wheel).
/// Stops, saying what to run, when it is none of [`RELEASES`]; with
/// `LIBTORCH_BYPASS_VERSION_CHECK`, or when the version cannot be read, the newest.
fn tch_of(lib: &Path) -> u32 {
    let found = lib.parent().and_then(|root| {
        std::fs::read_to_string(root.join("build-version"))
            .ok()
            .map(|s| s.trim().to_string())
            .or_else(|| {
                let py = std::fs::read_to_string(root.join("version.py")).ok()?;
                let line = py.lines().find(|l| l.starts_with("__version__"))?;
                Some(line.split(['\'', '"']).nth(1)?.to_string())
            })
    });
    let Some(found) = found else {
        return NEWEST.0;
    };
    if let Some(minor) = tch_for_libtorch(&found) {
        return minor;
    }
    if std::env::var_os("LIBTORCH_BYPASS_VERSION_CHECK").is_some() {
        return NEWEST.0;
    }
    let (oldest, newest_release) = (RELEASES[0].1, NEWEST.1);
    // Cargo shows a failed build script's stderr; a panic would add a backtrace.
    eprintln!(
        "\ntch-state-dict needs the libtorch of a tch from 0.17 to 0.24 (libtorch {oldest}.x to\n\
         {newest_release}.x: tch 0.17 is made for 2.4, 0.24 for 2.11), but {} holds {found}.\n\
         In this crate's repository, run cargo through `scripts/cargo` (for example\n\
         `scripts/cargo test`): it installs torch {newest_release} in ~/.cache/tch-state-dict\n\
         and builds against it. Elsewhere, point LIBTORCH at the libtorch your tch is made for,\n\
         or set LIBTORCH_USE_PYTORCH=1 with a Python whose torch is that release first on PATH.\n\
         LIBTORCH_BYPASS_VERSION_CHECK=1 builds anyway, at your own risk.\n",
        lib.parent().unwrap_or(lib).display()
    );
    std::process::exit(1);
}
