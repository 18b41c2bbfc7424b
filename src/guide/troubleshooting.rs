//! Troubleshooting: CUDA not found, libtorch versions, Python for the tests, files PyTorch
//! refuses.
//!
//! # CUDA is not found
//!
//! `tch::Cuda::is_available()` is false though `nvidia-smi` sees the GPU. Either the libtorch
//! you built against is a CPU build (`python -c "import torch; print(torch.version.cuda)"`
//! prints `None` in that environment), or your binary dropped `libtorch_cuda.so`: the linker's
//! `--as-needed` removes `libtorch.so`, through which it comes, since no symbol of it is used
//! (tch issue #980). Depend on `torch-sys` directly and add the `build.rs` lines of the
//! README's "Using it in your crate":
//!
//! ```no_run
//! // build.rs
//! fn main() {
//!     let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
//!     match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
//!         Ok("linux") => {
//!             println!("cargo:rustc-link-arg=-Wl,-rpath={lib}");
//!             println!("cargo:rustc-link-arg=-L{lib}");
//!             println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
//!             println!("cargo:rustc-link-arg=-ltorch");
//!         }
//!         Ok("macos") => println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}"),
//!         _ => {}
//!     }
//! }
//! ```
//!
//! `readelf -d target/debug/your-binary | grep NEEDED` then lists `libtorch.so`, which needs
//! `libtorch_cuda.so`. This crate's own `build.rs` does the same for its tests, examples and
//! benches, and `tests/linking.rs` checks that `libtorch.so` and `libtorch_cuda.so` are
//! loaded. On macOS only the run path is needed: its linker keeps every library it is given,
//! and libtorch for macOS has no CUDA library to keep.
//!
//! # libtorch version mismatch
//!
//! tch 0.24 needs libtorch 2.11. The build stops with:
//!
//! ```text
//! tch-state-dict needs libtorch 2.11.x (tch 0.24), but /tmp/libtorch-2.10.0 holds 2.10.0+cpu.
//! In this crate's repository, run cargo through `scripts/cargo` (for example
//! `scripts/cargo test`): it installs torch 2.11 in ~/.cache/tch-state-dict
//! and builds against it. Elsewhere, point LIBTORCH at a libtorch 2.11.x, or set
//! LIBTORCH_USE_PYTORCH=1 with a Python whose torch is 2.11.0 first on PATH
//! (torch-sys 0.24.0 itself accepts only 2.11.0 from Python).
//! LIBTORCH_BYPASS_VERSION_CHECK=1 builds anyway, at your own risk.
//! ```
//!
//! or, through `LIBTORCH_USE_PYTORCH=1`, with torch-sys's own `this tch version expects
//! PyTorch 2.11.0, got ...`. A binary whose libtorch was moved or deleted after the build
//! fails at start with `error while loading shared libraries: libtorch_cpu.so`: rebuild it
//! (the path is recorded at build time).
//!
//! # No python3, or no venv
//!
//! `scripts/cargo` needs Python 3.10 or newer with `pip` and `venv`:
//!
//! ```text
//! tch-state-dict: needs python3 (3.10 or newer) with pip and venv on PATH
//! ```
//!
//! On Debian and Ubuntu, `python3 -m venv` also needs `apt-get install python3-venv`; without
//! it, the script ends with `tch-state-dict: installing the PyTorch environment failed`.
//! Another interpreter: `TCH_STATE_DICT_BASE_PYTHON=/usr/bin/python3.12 scripts/cargo ...`;
//! another place for the 4.7 GB environment: `TCH_STATE_DICT_CACHE=/big/disk`. Building and
//! using the crate needs no Python when `LIBTORCH` points at a libtorch 2.11; only the tests
//! use Python torch, as their oracle.
//!
//! # A checkpoint PyTorch itself refuses
//!
//! A damaged file is refused too, with a typed error naming the file and the defect (exit 2
//! from the tool); a file PyTorch refuses only for its classes opens here, without running
//! anything:
//!
//! | file | `torch.load` (2.11) | tch-state-dict |
//! |---|---|---|
//! | truncated or corrupted | `PytorchStreamReader failed reading zip archive: failed finding central directory` | `truncated_zip.pth: malformed zip archive: invalid Zip archive: Could not find EOCD` |
//! | a Git LFS pointer | `WeightsUnpickler error: Unsupported operand 118` | ``lfs_pointer.pth: this is a Git LFS pointer, not the checkpoint itself; fetch it with `git lfs pull` `` |
//! | a class outside the allowlist (`{'opt': argparse.Namespace(...), 'model': ...}`) | `WeightsUnpickler error: Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default` | opens; `opt` is an object, `load_key(p, "model")` the state dict (see [`training_checkpoints`](super::training_checkpoints)); with `ReadOptions::weights_only(true)`, refused as PyTorch does, naming `argparse.Namespace` |
//!
//! A damaged file has to be downloaded or saved again.
//!
//! # The top-level object is not a state dict
//!
//! `StateDict::load` of a training checkpoint (`{'model': ..., 'epoch': 240}`) is
//! [`Error::NotAStateDict`](crate::Error::NotAStateDict), whose message lists what each key
//! holds and names the call that loads the state dict under `model`:
//! [`StateDict::load_key(path, "model")`](crate::StateDict::load_key) (`torch.load(path)["model"]`);
//! the tool says `hint: pass --key model` (see [`cli`](super::cli)).
//!
//! # `size mismatch`, missing or unexpected keys
//!
//! The error's `hint:` lines, after PyTorch's text, name the fix: a prefix to strip, a key to
//! rename, a classifier head to drop or replace, a submodule to drop, torchvision's legacy
//! DenseNet names (see [`rules`](super::rules) and [`tch_vision`](super::tch_vision)).

// The example is a whole build.rs, whose `fn main` is the point.
#![allow(clippy::needless_doctest_main)]
