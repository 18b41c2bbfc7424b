//! Safety: a pickle is data, never code; one memory budget; CRC-32; hostile files.
//!
//! # The pickle machine
//!
//! The pickle runs in a machine of this crate's that never imports or calls anything. Only an
//! allowlist (the `torch._utils._rebuild_*` functions, `collections.OrderedDict`, torch
//! storage types and dtypes, `torch.Size`, `torch.device`, `_codecs.encode`, `builtins.set`)
//! makes tensors, storages and containers; any other `GLOBAL` becomes an opaque object
//! recording its class, arguments and state (see
//! [`training_checkpoints`](super::training_checkpoints)), or, with
//! [`ReadOptions::weights_only(true)`](crate::ReadOptions::weights_only), an error naming
//! `module.name` ([`Error::DisallowedGlobal`](crate::Error::DisallowedGlobal)).
//! [`ReadLimits`](crate::ReadLimits) bounds the pickle's size, objects, memo, nesting depth,
//! tensors, memo expansion and compression ratio; every size, stride and offset is checked
//! with checked arithmetic against the storage's real length before anything is allocated. A
//! malformed or hostile file gives a typed [`Error`](crate::Error) naming the file and the
//! defect; the corpus of 92 files in `tests/fixtures/hostile/` (made by
//! `tests/fixtures/make_hostile.py`) pins each one down. A pickle whose objects form cycles
//! is read as Python rebuilds it, each cycle cut where it closes
//! ([`Value::Recursive`](crate::Value::Recursive)), within the same limits: a graph whose
//! paths multiply (24 lists that each hold all 24) is refused by `max_values`, a module among
//! its own submodules by [`PickleError::Cycle`](crate::PickleError::Cycle); a list that
//! holds itself, a state dict whose `_metadata` holds it and an object whose state holds it
//! read, in bounded time and memory.
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::{Error, ReadOptions, StateDict};
//!
//! // torch.load(p, weights_only=True): only tensors and plain values.
//! let options = ReadOptions::new().weights_only(true);
//! match StateDict::load_with("download.pth", &options) {
//!     Ok(sd) => println!("{} tensors", sd.len()),
//!     Err(Error::DisallowedGlobal { module, name, .. }) => eprintln!("refused: {module}.{name}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # CRC-32
//!
//! `torch.load` checks no CRCs. This crate checks every zip record it reads whole against the
//! CRC-32 the archive records: `data.pkl`, `byteorder`, deflated storages, and stored storages
//! of up to 1 MiB. A mismatch is [`Error::CrcMismatch`](crate::Error::CrcMismatch), naming the
//! record. A CRC of zero, which some writers leave, counts as not recorded.
//!
//! Large stored storages are checked when
//! [`ReadOptions::verify_crc(true)`](crate::ReadOptions::verify_crc) asks. A load into a model
//! then checks every storage before its first write, so a corrupt file leaves the model
//! unchanged. This is off by default: on a 1 GiB file in the page cache it added 10–70% to a
//! read into memory and 75–120% to a load into a model (a second pass over the file), measured
//! with a timing program over 15 runs on this project's machine. Storages mapped with
//! `mmap(true)` are not read, so they are not checked.
//!
//! # Hardening
//!
//! - **One memory budget**: opening a file of S bytes and building its value may use at most
//!   [`ReadLimits::max_memory(S)`](crate::ReadLimits::max_memory), by default 256 MiB + 8·S.
//!   Everything the reader allocates is charged: the inflated pickle, every object, the stack,
//!   marks and memo, tensor descriptions, opaque objects, copies a memo reference makes, then
//!   the `Value`s. A file that needs more is
//!   [`Error::LimitExceeded { limit: "max_memory", .. }`](crate::Error::LimitExceeded).
//!   `tests/budget.rs` reads every file of the hostile corpus in a child process and asserts
//!   peak RSS growth ≤ 256 MiB + 8·S, including a 400 KB zip whose deflated pickle inflates to
//!   400 MiB of `None`s and 1 KB memo-copy bombs (before: up to 6.9 GB). The tensors a value
//!   or state dict holds are charged too, before libtorch makes any: their bytes and
//!   libtorch's bookkeeping of each (896 bytes a tensor, 512 a storage, measured). So a
//!   safetensors file of a million one-element tensors (74 MB) opens (595 MiB) and its
//!   `value()` and `state_dict()` are `LimitExceeded`, with peak RSS growth 756 MiB against a
//!   bound of 823 MiB (before: 2.1 GB); a state dict of 100,000 tensors of 1 KiB reads and
//!   loads (`tests/budget.rs`). Lower the budget for files from strangers
//!   (`max_memory_base`, `max_memory_per_file_byte`); raise it for a trusted file of tiny
//!   tensors. A DCP checkpoint has one budget for its `.metadata` and `.distcp` files together
//!   (see [`distributed`](super::distributed)).
//! - A zip that holds one record name twice is refused. `torch.load` would read either copy,
//!   depending on the directory's order. Records flagged as encrypted are refused, as
//!   `torch.load` refuses them.
//! - A zip's directory is read by this crate as `torch.load`'s miniz reads it: offsets from
//!   the start of the file, names compared as bytes (never decoded), every record within
//!   the directory's declared size, each sized field marked for zip64 given by its zip64
//!   field. A directory that breaks one of these is [`Error::Zip`](crate::Error::Zip).
//! - safetensors shapes must fit libtorch: every dimension below 2^63, and strides that do not
//!   overflow.
//! - Only a legacy file's pickles count against `max_pickle_bytes`, so legacy checkpoints over
//!   1 GiB load.
//! - Big-endian complex tensors swap each half (real, imaginary), as `torch.load` does.
//! - `mmap(true)` maps the file that was opened, through its descriptor. A file renamed over
//!   the path afterwards is never read. Where that is not possible (Windows), storages are
//!   copied.
//! - A sharded index's shards must stay in the index's directory once symlinks are resolved.
//!   The one exception is the Hugging Face hub cache's `snapshots/<revision>` → `blobs` links.
//!   An index that names itself, or two that name each other, is a typed error.
//! - A FIFO, directory or device given as a checkpoint or shard is refused at once with
//!   `Error::Io`; nothing waits on it.
//! - An unknown format is described ("text of 80 bytes"), never quoted: the path may name any
//!   file.
//! - A load reads every tensor it must materialize (deflated storages) and checks each file's
//!   length before its first write: a corrupt deflated storage or a truncated file leaves the
//!   model untouched (`tests/all_or_nothing.rs`, `tests/lazy.rs`).
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::{Error, ReadLimits, ReadOptions, StateDict};
//!
//! // A file from a stranger: 64 MiB plus 4 bytes per byte of the file, and every CRC.
//! let mut limits = ReadLimits::default();
//! limits.max_memory_base = 64 << 20;
//! limits.max_memory_per_file_byte = 4;
//! let options = ReadOptions::new().limits(limits).verify_crc(true);
//! match StateDict::load_with("download.pth", &options) {
//!     Err(Error::LimitExceeded { limit, max, .. }) => eprintln!("over {limit} = {max}"),
//!     Err(Error::CrcMismatch { record, .. }) => eprintln!("{record} is corrupt"),
//!     other => println!("{} tensors", other?.len()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Fuzzing
//!
//! `fuzz/` holds cargo-fuzz targets for the whole reader (`checkpoint`) and for the pickle
//! machine (`pickle`, whose input is wrapped into a valid zip); `fuzz/README.md` says how to
//! run them on a stable toolchain (`RUSTC_BOOTSTRAP=1 scripts/cargo fuzz run checkpoint`) and
//! gives the last run: 4,650,572 executions of `checkpoint` and 1,091,076 of `pickle`, 10
//! minutes each, no crash.
