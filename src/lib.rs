//! PyTorch's `load_state_dict` for Rust on libtorch, through [tch].
//!
//! A checkpoint trained with 100 classes, loaded into a 10-class model, fails in PyTorch with
//! `size mismatch for linear.weight`, even with `strict=False`. tch's `VarStore::load` does
//! worse: it stops at the first missing key, ignores unexpected ones, lets `copy_` broadcast a
//! wrong shape, changes the model's dtype, and leaves the model half written on failure. This
//! crate gives tch users PyTorch's semantics and words, and an all-or-nothing guarantee:
//!
//! * [`StateDict`]: an ordered name → tensor map with Python dict manners (`pop`, prefixes,
//!   renames).
//! * [`load_state_dict`]: PyTorch's rules (strict or not, shapes always checked, BatchNorm's
//!   `num_batches_tracked`), structured reports ([`IncompatibleKeys`], [`LoadError`]) that
//!   print as PyTorch prints them, and a model left untouched when it fails.
//! * [`state_dict`]: a model's tensors in PyTorch's order, sharing storage with the model.
//! * [`LazyStateDict`]: a checkpoint file's state dict before its tensors are read, with the
//!   same key surgery; [`load_state_dict`] reads each remaining tensor straight from the file
//!   into the model, so popping a head or stripping `module.` costs nothing.
//! * [`Checkpoint`], [`StateDict::load`], [`StateDict::load_key`], [`StateDict::save`]:
//!   `torch.save` files (zip and legacy), nested checkpoints, safetensors and sharded
//!   checkpoints, training checkpoints with options objects and numpy values, whole pickled
//!   modules, tch's `.ot` files and TorchScript archives, all read by a pickle machine that
//!   never imports, calls or runs anything ([`Value::Object`] records what it does not
//!   know), and written so that `torch.load(weights_only=True)` accepts them.
//! * [`models`] (feature `models`, on by default): ResNets with PyTorch-identical state
//!   dicts, and [`models::replace_head`].
//!
//! # Quick start
//!
//! ```
//! use tch::{nn, Device, Kind, Tensor};
//! use tch_state_dict::{load_state_dict, state_dict, Error, StateDict};
//!
//! # fn main() -> Result<(), Error> {
//! // A model built the tch way.
//! let vs = nn::VarStore::new(Device::Cpu);
//! let _backbone = nn::linear(vs.root() / "fc1", 32, 64, Default::default());
//! let _head = nn::linear(vs.root() / "linear", 64, 10, Default::default());
//!
//! // A checkpoint whose head has 100 classes.
//! let mut checkpoint = StateDict::new();
//! checkpoint.insert("fc1.weight", Tensor::zeros([64, 32], (Kind::Float, Device::Cpu)));
//! checkpoint.insert("fc1.bias", Tensor::zeros([64], (Kind::Float, Device::Cpu)));
//! checkpoint.insert("linear.weight", Tensor::zeros([100, 64], (Kind::Float, Device::Cpu)));
//! checkpoint.insert("linear.bias", Tensor::zeros([100], (Kind::Float, Device::Cpu)));
//!
//! // As in PyTorch, a shape mismatch fails even when not strict; nothing was written.
//! let err = load_state_dict(&vs, &checkpoint, false).unwrap_err();
//! assert!(err.to_string().contains("size mismatch for linear.weight"));
//!
//! // Fix: drop the head's keys and load the rest.
//! checkpoint.pop("linear.weight");
//! checkpoint.pop("linear.bias");
//! let report = load_state_dict(&vs, &checkpoint, false)?;
//! assert_eq!(report.missing_keys, ["linear.bias", "linear.weight"]); // VarStore: natural order
//! assert_eq!(state_dict(&vs)?.len(), 4);
//! # Ok(())
//! # }
//! ```
//!
//! # The two fixes, on a training checkpoint
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{load_state_dict, models, LazyStateDict};
//!
//! // Fix 1: sd = torch.load(p)["model"]; pop the head; model.load_state_dict(sd, strict=False).
//! // Nothing is read until the load, which reads each tensor straight into the model.
//! let vs = nn::VarStore::new(tch::Device::cuda_if_available());
//! let model = models::cifar_resnet50(&vs, 10)?;
//! let mut sd = LazyStateDict::load_key("ckpt_epoch_240.pth", "model")?;
//! sd.pop("linear.weight");
//! sd.pop("linear.bias");
//! let report = load_state_dict(&model, &sd, false)?;
//! assert_eq!(report.missing_keys, ["linear.weight", "linear.bias"]);
//! # Ok(())
//! # }
//! ```
//!
//! Fix 2: build with the checkpoint's class count, load, then replace the head.
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::models::{self, replace_head};
//! use tch_state_dict::{Checkpoint, LoadOptions};
//!
//! let vs = nn::VarStore::new(tch::Device::cuda_if_available());
//! let mut model = models::cifar_resnet50(&vs, 100)?;
//! // model.load_state_dict(torch.load("ckpt_epoch_240.pth")["model"]), read straight into
//! // the model's tensors.
//! Checkpoint::open("ckpt_epoch_240.pth")?.load_into_at("model", &model, &LoadOptions::new())?;
//! replace_head(&mut model, 10)?; // model.linear = nn.Linear(2048, 10)
//! model.freeze_backbone();
//! # Ok(())
//! # }
//! ```
//!
//! # Targets
//!
//! Anything that implements [`StateDictModule`] can be loaded into: a `tch::nn::VarStore`
//! (keys in natural order, since a VarStore records no registration order), or a
//! [`ModuleTree`], which describes a model's modules and tensors in PyTorch's registration
//! order and names its type for the error header. The module docs of [`ModuleTree`] and of
//! [`load_state_dict`] explain the choices behind them.
//!
//! # Features
//!
//! * `models` (default): the [`models`] module, ResNets with PyTorch's keys,
//!   `replace_head` and freezing. Without it the crate is the reader, the writer and
//!   `load_state_dict`.
//! * `cli`: the `tch-state-dict` command-line tool, `cargo install tch-state-dict --features
//!   cli`: `inspect`, `convert` (`.pth`, `.safetensors`, tch's `.ot`), `check` (would this
//!   checkpoint load into this architecture?) and `diff`.
//! * `doc-only`: builds the documentation without libtorch, as docs.rs does (it forwards
//!   tch's `doc-only`). Nothing built with it can link.
//!
//! # Which tch
//!
//! Any tch from 0.17 (rust-bert's, libtorch 2.4) to 0.24 (libtorch 2.11): the crate depends
//! on `tch = ">=0.17, <0.25"`. torch-sys links libtorch, so a build holds one torch-sys, and
//! Cargo picks the tch your crate already has; with nothing else asking, the newest. The
//! crate's `build.rs` tells which from the libtorch torch-sys found. Everything works the same
//! on each, but for one thing: a tch before 0.19 has no float8 kinds, so a float8 entry is
//! refused by itself ([`Error::UnsupportedDtype`]), as any dtype tch lacks.
//! [`guide::troubleshooting`] has the run of the test suite against libtorch 2.4.
//!
//! # Linking
//!
//! A binary that uses tch must find libtorch at run time and keep its CUDA library; see the
//! README's "Using it in your crate", or [`guide::troubleshooting`], for the `build.rs`
//! lines.
//!
//! # The guide
//!
//! The manual lives in [`guide`]: the whole Python → Rust table and recipes
//! ([`guide::cookbook`]), the [rules](guide::rules), the [formats](guide::formats),
//! [lazy loads](guide::lazy), [training](guide::training_checkpoints) and
//! [distributed](guide::distributed) checkpoints, [safety](guide::safety),
//! [`tch::vision` models](guide::tch_vision), the [tool](guide::cli) and
//! [troubleshooting](guide::troubleshooting).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod checkpoint;
mod dtype;
mod error;
pub mod guide;
mod load;
#[cfg(feature = "models")]
pub mod models;
mod module_tree;
mod natural;
mod pyfmt;
mod read;
mod report;
mod state_dict;
mod value;
mod write;

pub use checkpoint::Checkpoint;
pub use error::{Error, PickleError};
pub use load::{
    check_state_dict, load_checkpoint, load_state_dict, load_state_dict_with, state_dict,
    LoadOptions, StateDictSource,
};
pub use module_tree::{ModuleKind, ModuleTree, StateDictModule};
pub use pyfmt::{device_name, dtype_name};
pub use read::{Format, ReadLimits, ReadOptions};
pub use report::{IncompatibleKeys, LoadError, ShapeMismatch};
pub use state_dict::{LazyStateDict, LazyTensor, StateDict};
pub use value::{Dict, Metadata, Object, Value};
pub use write::SaveOptions;
