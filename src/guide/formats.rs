//! Checkpoint files: what is read and written, the values in them, and where tensors go.
//!
//! [`Checkpoint::open(path)`](crate::Checkpoint::open) tells the format from the bytes (never
//! the extension), parses the file and checks every tensor against its storage, without
//! reading tensor data. [`StateDict::load`], [`StateDict::load_key`] and [`Value::load`] are
//! shortcuts through it.
//!
//! | format | read | written |
//! |---|---|---|
//! | `torch.save` zip (PyTorch 1.6+): any root name, aligned or not, CRCs zero or not, stored or deflated, `byteorder` little or big | yes | yes: protocol 2, `OrderedDict` with `_metadata`, 64-byte aligned storages |
//! | `torch.save` legacy (PyTorch 0.4 to 1.5, `_use_new_zipfile_serialization=False`), pickle protocols 2 to 5 | yes | no |
//! | safetensors, with `__metadata__` | yes | yes (through the `safetensors` crate; it keeps no key order) |
//! | sharded `*.index.json` with a `weight_map` (safetensors or `.bin` shards) | yes, as one state dict in `weight_map` order | no |
//! | `torch.distributed.checkpoint` (DCP) directories, or their `.metadata` (FSDP2, DTensor, torchtitan; zstd items too) | yes, lazily, chunk by chunk into the model (see [`distributed`](super::distributed)) | no |
//! | model directories (`model.safetensors`, `pytorch_model.bin` or their indexes inside) | yes, as that file | no |
//! | TorchScript archives: `torch.jit.save` (archive versions 1 to 10, torch 1.3 to 2.11, as `torch.jit.load` 2.11 reads them: storages' persistent ids of five items or more, the rest ignored), tch's `VarStore::save` (`.ot`) and `Tensor::save_multi`; not the `model.json` archives of torch 1.0 to 1.2, which `torch.jit.load` 2.11 refuses too (an `Error::InvalidRecord` naming `model.json` says so) | the parameters and buffers, as a state dict; the code is never run | no (`convert` writes `.pth` or `.safetensors`) |
//!
//! [`Checkpoint::format`](crate::Checkpoint::format) says which it found, as a [`Format`].
//!
//! - **Values**: f64, f32, f16, bf16, i64, i32, i16, i8, u8, bool (and float8, complex)
//!   tensors; storage offsets and strides; tensors that share a storage share it after
//!   reading; 0-dim and empty tensors; `nn.Parameter`; `_rebuild_tensor_v2` and `_v3`. The
//!   whole object comes back as a [`Value`] tree: dicts in order (with integer keys too),
//!   lists, tuples, ints (also beyond 64 bits), floats, strings, bytes, bools, `None`,
//!   `torch.device`, `torch.dtype`. `requires_grad` is `torch.load`'s: kept on
//!   `nn.Parameter`s and tensors of every dtype that can have it (complex too); false
//!   everywhere in a module's state dict (a whole pickled module, a TorchScript archive), as
//!   `state_dict()` detaches.
//! - **Dtypes this crate cannot hold** (`uint16`, `uint32`, `uint64`, `complex32`, quantized
//!   dtypes, `float8_e8m0fnu`, `float4_e2m1fn_x2`, safetensors' `F4` and `F6`) refuse their
//!   entry, not the file: `Checkpoint::open`, `LazyStateDict::load` and `inspect` succeed and
//!   list the entry with PyTorch's dtype name ([`LazyTensor::dtype_name()`](crate::LazyTensor::dtype_name);
//!   [`kind()`](crate::LazyTensor::kind) is `None`). Reading, materializing or loading it is
//!   [`Error::UnsupportedDtype { key, dtype, .. }`](crate::Error::UnsupportedDtype) naming
//!   the key (for `Value::load`, the path from the root: `model.buf`); drop it first with
//!   `sd.retain(|_, t| t.kind().is_some())` or `sd.pop(key)`. A load refuses it only when it
//!   would read it: popped, or unexpected in a non-strict load, it is never read. A
//!   `torch.uint16` dtype value reads as `Value::Global { module: "torch", name: "uint16" }`
//!   and is written back as that global.
//! - **Storage sizes**: a storage whose record (or legacy size header) is shorter or longer
//!   than its persistent id declares is [`Error::StorageSizeMismatch`](crate::Error::StorageSizeMismatch),
//!   as `torch.load` refuses it.
//! - **`_metadata`** is read and kept, since BatchNorm's rule depends on it, and written back.
//! - **Placement**: [`ReadOptions::device`](crate::ReadOptions::device) (like `map_location`),
//!   [`ReadOptions::kind`](crate::ReadOptions::kind) (casts floating-point tensors),
//!   [`ReadOptions::mmap`](crate::ReadOptions::mmap) (views of a private memory map, like
//!   `torch.load(mmap=True)`), [`ReadOptions::threads`](crate::ReadOptions::threads) (like
//!   `torch.set_num_threads`, for reading).
//! - **Safety**: the pickle runs in a machine of this crate's that never imports or calls
//!   anything, and every size a file declares is checked before anything is allocated; see
//!   [`safety`](super::safety).
//! - **Writing** replaces the file whole or not at all (see [`saving`](super::saving)), and
//!   tensors memory-mapped from the old file stay valid.
//!
//! # Opening a file
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::{Device, Kind};
//! use tch_state_dict::{Checkpoint, Format, ReadOptions, StateDict, Value};
//!
//! let ckpt = Checkpoint::open("ckpt_epoch_240.pth")?;
//! assert_eq!(ckpt.format(), Format::TorchZip);
//! println!("{:?}, {} tensors", ckpt.keys(), ckpt.num_tensors()); // ["model", "epoch", "acc"]
//!
//! // torch.load(p): the whole object.
//! let value: Value = ckpt.value()?;
//! let epoch = value.get("epoch").and_then(Value::as_int);
//!
//! // torch.load(p, map_location="cuda:0")["model"], floating-point tensors as fp16.
//! let options = ReadOptions::new().device(Device::Cuda(0)).kind(Some(Kind::Half));
//! let sd = StateDict::load_key_with("ckpt_epoch_240.pth", "model", &options)?;
//!
//! // torch.load(p, mmap=True): views of a private map of the file.
//! let mapped = StateDict::load_with("model.pth", &ReadOptions::new().mmap(true))?;
//!
//! // safetensors.torch.load_file(p): the same call; the format comes from the bytes.
//! let st = StateDict::load("model.safetensors")?;
//! # let _ = (epoch, sd, mapped, st);
//! # Ok(())
//! # }
//! ```
//!
//! # An entry of a dtype tch has no kind for
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::LazyStateDict;
//!
//! let mut sd = LazyStateDict::load("quantized.pth")?;
//! for (key, t) in sd.iter() {
//!     if t.kind().is_none() {
//!         println!("{key}: {} {:?}, not readable here", t.dtype_name(), t.size());
//!     }
//! }
//! sd.retain(|_, t| t.kind().is_some());
//! let sd = sd.into_state_dict()?;
//! # let _ = sd;
//! # Ok(())
//! # }
//! ```
//!
//! # Inspecting and converting
//!
//! Inspect a checkpoint, or convert between formats, with the example of this repository
//! (the [`cli`](super::cli) tool does the same and more):
//!
//! ```sh
//! scripts/cargo run --example inspect -- ckpt_epoch_240.pth
//! scripts/cargo run --example inspect -- ckpt_epoch_240.pth --key model --to model.safetensors
//! ```
//!
//! The fixtures in `tests/fixtures/` are made by checked-in scripts with torch 2.11
//! (`scripts/python tests/fixtures/make_fixtures.py`, `make_hostile.py`); `scripts/python` is
//! the cached environment's python.
//!
//! [`StateDict::load`]: crate::StateDict::load
//! [`StateDict::load_key`]: crate::StateDict::load_key
//! [`Value::load`]: crate::Value::load
//! [`Value`]: crate::Value
//! [`Format`]: crate::Format
