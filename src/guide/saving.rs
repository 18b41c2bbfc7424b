//! Saving: `torch.save` and safetensors files, replaced whole or not at all.
//!
//! [`StateDict::save`](crate::StateDict::save) writes `torch.save`'s zip format (protocol 2,
//! an `OrderedDict` with `_metadata`, 64-byte aligned storages), or safetensors when the path
//! ends in `.safetensors`; [`StateDict::save_as`](crate::StateDict::save_as) takes the
//! [`Format`](crate::Format) whatever the extension, and
//! [`StateDict::to_bytes`](crate::StateDict::to_bytes) gives the bytes.
//! [`Value::save`](crate::Value::save) writes a whole checkpoint (`{'model': sd, 'epoch': 240,
//! 'acc': 0.9}`). What they write, `torch.load(weights_only=True)` accepts.
//!
//! # Saving safely
//!
//! `StateDict::save`, `save_as` and `Value::save` replace the file whole or not at all.
//! - The bytes go to a new temporary file in the same directory,
//!   `.{name}.tch-state-dict-XXXXXX.tmp`. It is created exclusively with a random suffix, so
//!   it never follows a symlink.
//! - It takes the old file's permissions (a `0600` checkpoint stays `0600`), is fsynced and
//!   renamed over the target, and then the directory is fsynced.
//! - Of two saves to one path at the same time, the later rename wins. The file is always one
//!   of the two, complete, never a mix (`tests/safe_save.rs`).
//! - A symlink at the target is replaced, not followed. A directory there is refused with
//!   [`Error::Unwritable`](crate::Error::Unwritable).
//! - A failed save removes its temporary file. If a process dies during a save, the next save
//!   to the same path removes the leftover: a temporary file that no save holds a lock on and
//!   that has not been modified for a minute (an hour on Windows).
//! - Tensors memory-mapped from the old file ([`ReadOptions::mmap`](crate::ReadOptions::mmap))
//!   stay valid: the old file is replaced, never written in place.
//!
//! # Examples
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::{Format, StateDict, Value};
//!
//! let sd = StateDict::load("model.pth")?;
//! sd.save("model.safetensors")?; // safetensors.torch.save_file(sd, "model.safetensors")
//! sd.save_as("weights.bin", Format::TorchZip)?; // torch.save(sd, "weights.bin")
//!
//! // torch.save({"model": sd, "epoch": 240, "acc": 0.9}, p)
//! let ckpt = Value::dict([("model", sd.into()), ("epoch", 240.into()), ("acc", 0.9.into())]);
//! ckpt.save("ckpt_epoch_240.pth")?;
//! # Ok(())
//! # }
//! ```
