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
//! # Which tch, and libtorch version mismatch
//!
//! The crate works with tch 0.17 to 0.24 (`tch = ">=0.17, <0.25"`). torch-sys links libtorch
//! (`links = "tch"`), so a build holds one torch-sys, and Cargo settles on the tch your crate
//! pins: `tch = "0.17"` beside this crate gives 0.17 (rust-bert 0.23's), `"0.22"` gives 0.22
//! (Burn's), and with nothing else asking Cargo picks 0.24. Each tch is made for one libtorch:
//!
//! | tch | 0.17 | 0.18 | 0.19 | 0.20 | 0.22 | 0.23 | 0.24 |
//! |---|---|---|---|---|---|---|---|
//! | libtorch | 2.4 | 2.5 | 2.6 | 2.7 | 2.9 | 2.10 | 2.11 |
//!
//! (there is no tch 0.21). Cargo tells a build script nothing about the versions it resolved,
//! and torch-sys reports only its libtorch's directory, so this crate's `build.rs` reads that
//! libtorch's version, which torch-sys has already checked against its own release (it does
//! not when `LIBTORCH` names a Python installation, or with `LIBTORCH_BYPASS_VERSION_CHECK`),
//! and knows the tch from it. What differs between the tch releases: tch before 0.19 has no
//! float8 kinds, so a float8 entry is refused by itself (`Error::UnsupportedDtype`) as any
//! dtype tch lacks; the rest of the crate is the same code on all of them.
//!
//! With a libtorch that no tch of the range is made for, the build stops with:
//!
//! ```text
//! tch-state-dict needs the libtorch of a tch from 0.17 to 0.24 (libtorch 2.4.x to
//! 2.11.x: tch 0.17 is made for 2.4, 0.24 for 2.11), but /tmp/libtorch-2.8.0 holds 2.8.0+cpu.
//! In this crate's repository, run cargo through `scripts/cargo` (for example
//! `scripts/cargo test`): it installs torch 2.11 in ~/.cache/tch-state-dict
//! and builds against it. Elsewhere, point LIBTORCH at the libtorch your tch is made for,
//! or set LIBTORCH_USE_PYTORCH=1 with a Python whose torch is that release first on PATH.
//! LIBTORCH_BYPASS_VERSION_CHECK=1 builds anyway, at your own risk.
//! ```
//!
//! and with a libtorch of another tch than yours, torch-sys stops first, with its own `this
//! tch version expects PyTorch 2.4.0, got ...`. A binary whose libtorch was moved or deleted
//! after the build fails at start with `error while loading shared libraries:
//! libtorch_cpu.so`: rebuild it (the path is recorded at build time).
//!
//! ## The oldest end, checked
//!
//! CI compiles the crate, its tests, benches, examples and tool against tch 0.17 with
//! `doc-only` (`.ci/oldest-tch`: no libtorch 2.4 needed), as well as building and testing
//! everything against 0.24. The whole test suite was also run against libtorch 2.4.0 and tch
//! 0.17, its oracle still torch 2.11, in a copy of the repository whose `Cargo.lock` resolves
//! tch 0.17 (`cargo update -p tch --precise 0.17.0`, then
//! `TCH_STATE_DICT_TORCH=2.4.0 scripts/cargo test --features cli --no-fail-fast`), which one
//! command does:
//!
//! ```sh
//! .ci/oldest-tch --test
//! ```
//!
//! On 2026-12-06 (this project's 2-core VM, the commit that added this section): **517
//! passed, 0 failed, 12 ignored** (the tests that need CUDA, and two measurements run by
//! hand), as at 0.24 (517 passed, 12 ignored, `.ci/run` the same day), where
//! `tests/read_pytorch.rs` reads float8 entries instead of refusing them. A first run had
//! found the only difference: four tests read the float8 fixture as values, which tch 0.17
//! cannot hold; they now leave it out under `cfg(not(tch_float8))`, and
//! `float8_is_an_unsupported_dtype_before_tch_0_19` checks the refusal instead. No test
//! depends on a libtorch behaviour that changed from 2.4 to 2.11: the crate's bf16/fp16
//! kernels matched libtorch 2.4's conversions bit for bit, and `tch::vision`'s models
//! computed what torchvision 2.11 computes. Run again a session later, at 731aeb4 (the GPU
//! route's fixes and their CPU tests in, the kernels built for AVX-512): **537 passed, 0
//! failed, 12 ignored**, as at 0.24 the same day.
//!
//! The same day, a new crate as the README's "Using it in your crate" shows it (`tch =
//! "0.17"`, `torch-sys = "0.17"`, this crate, the `build.rs` lines above) built against
//! libtorch 2.4 (`TCH_STATE_DICT_TORCH=2.4.0`, Cargo resolving tch 0.17.0), and its
//! `load_checkpoint(&vs, "ckpt.pth", true)` of a `torch.save` state dict of two Linear
//! layers loaded with no missing or unexpected key, `head.weight` equal to Python's.
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
