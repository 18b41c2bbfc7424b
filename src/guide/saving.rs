//! Saving: `torch.save` and safetensors files, replaced whole or not at all.
//!
//! [`StateDict::save`](crate::StateDict::save) writes `torch.save`'s zip format (protocol 2,
//! an `OrderedDict` with `_metadata`, 64-byte aligned storages), or safetensors when the path
//! ends in `.safetensors`; [`StateDict::save_as`](crate::StateDict::save_as) takes the
//! [`Format`](crate::Format) whatever the extension, and
//! [`StateDict::to_bytes`](crate::StateDict::to_bytes) gives the bytes.
//! [`Value::save`](crate::Value::save) writes a whole checkpoint (`{'model': sd, 'epoch': 240,
//! 'acc': 0.9}`), lists and dicts that hold themselves as the cycles they are. What they
//! write, `torch.load(weights_only=True)` accepts. Tensors keep their strides, and those
//! that shared a storage (tied weights, views of one flat buffer) share one in the file, each
//! at its offset; a storage is written as far as its tensors span it, so an expanded tensor
//! (stride 0) costs one element, not its shape's worth.
//!
//! # Writing a training checkpoint back, objects and all
//!
//! A checkpoint read from training code holds objects: an `argparse.Namespace` of options,
//! omegaconf configs whose nodes point at their parents, a Lightning `AttributeDict`.
//! `Value::save` refuses them ([`Error::Unwritable`](crate::Error::Unwritable)), since
//! `weights_only=True` would. To edit such a checkpoint in Rust (a new head, a stripped
//! prefix) and resume training from it in Python, save it with
//! [`SaveOptions::objects`](crate::SaveOptions::objects): each object is written as the pickle
//! that was read made it (its class, its arguments by `NEWOBJ`, `NEWOBJ_EX` or `REDUCE`, its
//! items, its `BUILD` state), each global as the global it names, and each reference back as
//! the cycle it was. `torch.load(p, weights_only=False)`, where the classes import, gives the
//! same objects back (`tests/training.rs` checks argparse, omegaconf, whose interpolations
//! resolve through the rebuilt parents, a Lightning checkpoint with an edited head, and an
//! object made with keyword arguments, from protocol 4's `NEWOBJ_EX` and from the
//! `functools.partial` of `cls.__new__` that torch.save's default protocol 2 writes for it,
//! which is written back as `NEWOBJ_EX`). The tool does the same with `convert --objects`.
//!
//! It is not the default, for the reason `weights_only=False` is not PyTorch's: loading such
//! a file imports and calls what it names. A faithful save of a hostile file (one that names
//! `os.system`) writes the same call back, so save this way only what came from code you
//! trust. What it cannot give back is listed at
//! [`SaveOptions::objects`](crate::SaveOptions::objects): sharing that was no cycle (written
//! twice), numpy values, paths and datetimes (written as the plain values they were read as),
//! `nn.Parameter` (a tensor with its `requires_grad`).
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::{Device, Kind, Tensor};
//! use tch_state_dict::{SaveOptions, Value};
//!
//! let mut ckpt = Value::load("epoch=29-step=900.ckpt")?;
//! // A new 3-class head in the Lightning state dict.
//! if let Value::Dict(top) = &mut ckpt {
//!     for (k, v) in &mut top.items {
//!         if let (Some("state_dict"), Value::Dict(sd)) = (k.as_str(), v) {
//!             for (name, t) in &mut sd.items {
//!                 match name.as_str() {
//!                     Some("model.linear.weight") => {
//!                         *t = Value::Tensor(Tensor::zeros([3, 2048], (Kind::Float, Device::Cpu)))
//!                     }
//!                     Some("model.linear.bias") => {
//!                         *t = Value::Tensor(Tensor::zeros([3], (Kind::Float, Device::Cpu)))
//!                     }
//!                     _ => {}
//!                 }
//!             }
//!         }
//!     }
//! }
//! ckpt.save_with("resume.ckpt", &SaveOptions::new().objects(true))?;
//! # Ok(())
//! # }
//! ```
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
