//! Lazy state dicts: key surgery on a file's state dict before its tensors are read, and loads
//! that read each tensor straight into the model.
//!
//! [`LazyStateDict::load(p)`](crate::LazyStateDict::load) and
//! [`load_key(p, key)`](crate::LazyStateDict::load_key) (or
//! [`Checkpoint::lazy_state_dict_at`](crate::Checkpoint::lazy_state_dict_at)) parse the file
//! and return its state dict with each entry still in the file: its key, shape, dtype and byte
//! range. `pop`, `strip_prefix`, `rename_prefix`, `retain` (whose predicate sees shape and
//! dtype) and the rest change keys without reading anything; `insert` adds a tensor in memory.
//! [`load_state_dict(&model, &sd, strict)`](crate::load_state_dict) then plans with the same
//! rules and words, and writes each entry by the cheapest route:
//!
//! - the bytes lie in the file as the model's tensor lays them out (same dtype,
//!   little-endian, contiguous, CPU): `pread` straight into the model's tensor, across
//!   threads;
//! - another dtype (a bf16 or fp16 file into an fp32 model, fp32 into bf16) or byte order, into
//!   a CPU model: read in 128 KiB blocks into a buffer per thread and converted by this
//!   crate's kernels into the matching slice of the model's tensor, across threads, with no
//!   intermediate tensor. The kernels round as libtorch does, bit for bit (every bf16 and
//!   fp16 pattern is compared with libtorch's conversion in the tests), and run faster than
//!   libtorch's own in-memory `copy_` (below); pairs without a kernel (fp64, integers) are
//!   converted by libtorch's `copy_`, a megabyte at a time;
//! - a tensor on a GPU (one model may span several): the staged route. The file is read
//!   once, in file order, into two reused pinned buffers, allocated before anything is
//!   written; while one is read, a copier thread copies the other to its tensors' devices
//!   with `non_blocking`, converts there (the dtype conversion runs on the GPU, after the raw
//!   bytes), and synchronizes once per buffer. A model's tensors on the CPU take the routes
//!   above;
//! - a deflated storage, a strided view, or a cast asked for with
//!   [`ReadOptions::kind`](crate::ReadOptions::kind): the tensor is read, then copied;
//! - an inserted tensor: copied (a plain `memcpy` across threads when dtype and layout
//!   match).
//!
//! Before the first write, the tensors of the third route are read and every file is checked
//! to be as long as when it was parsed: a file truncated or replaced since it was opened gives
//! [`Error::FileChanged`](crate::Error::FileChanged) and the model is untouched. An I/O error
//! during the copy itself can still leave the model partly written. Reads use `pread`, never
//! a map, so a file truncated under a [`LazyTensor::read`](crate::LazyTensor::read) is an
//! [`Error::Io`](crate::Error::Io), not SIGBUS. A sharded checkpoint is a lazy state dict
//! whose entries point into its shards: it loads tensor by tensor, and
//! `load_key(index, "model")` selects the entries under `model.` (the submodule's state
//! dict).
//!
//! [`load_checkpoint(&model, path, strict)`](crate::load_checkpoint),
//! [`Checkpoint::load_into`](crate::Checkpoint::load_into) and `load_state_dict` of a
//! `LazyStateDict` all take this path: they check the file against the model without reading
//! tensor data, then read each tensor's bytes from the file straight into the model's tensor
//! with `pread`, split across libtorch's thread count
//! ([`ReadOptions::threads`](crate::ReadOptions::threads)) when there are 8 MiB or more; other
//! dtypes and byte orders are converted in parts of 1 MiB across threads, other devices
//! staged as above. Nothing of the checkpoint is held in memory: loading a 1 GiB checkpoint
//! grows the peak RSS by under 5 MB, from one file or from four shards, and a GPU load holds
//! two pinned buffers of at most 64 MiB each.
//!
//! # How fast, against what
//!
//! Each route is measured against its own floor in one run of `scripts/cargo bench --bench
//! floors` (the tables are in the repository's `benches/README.md`): the direct route against
//! a `memcpy` of the same bytes, the converting route against libtorch's `copy_` of the same
//! tensors already in memory, both against PyTorch's `safetensors.torch.load_file` +
//! `load_state_dict` and `torch.load(mmap=True)` + `load_state_dict`. On the project's
//! 2-core machine a 4 GiB bf16 checkpoint loads into an fp32 model faster than libtorch's
//! in-memory conversion of the same tensors, since the kernels write the model's memory with
//! non-temporal stores. The staged GPU route is built to overlap reading the file with the
//! copy to the device; its figures come from `scripts/device-check` on a GPU machine.
//!
//! `tests/memory.rs` measures peak RSS in a child process: the seed's fix on a 269 MB
//! checkpoint grows it by under 1 MB where the eager path grows it by the whole checkpoint, an
//! fp16 file converted into an fp32 model by two 1 MiB-ish chunk buffers per thread, and a
//! four-shard checkpoint by under the largest tensor plus 64 MiB. The load times, against the
//! eager route, PyTorch and tch, are in the repository's
//! [`benches/README.md`](https://github.com/tch-state-dict/tch-state-dict/blob/main/benches/README.md).
//!
//! # The seed's fix: open, pop the head, load non-strictly
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{load_state_dict, models, LazyStateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::cuda_if_available());
//! let model = models::cifar_resnet50(&vs, 10)?;
//! // sd = torch.load(p, mmap=True)["model"]: nothing is read yet.
//! let mut sd = LazyStateDict::load_key("ckpt_epoch_240.pth", "model")?;
//! println!("{} entries, {} bytes", sd.len(), sd.nbytes());
//! sd.pop("linear.weight");
//! sd.pop("linear.bias");
//! // Each remaining tensor is read from the file into the model's tensor.
//! let report = load_state_dict(&model, &sd, false)?;
//! assert_eq!(report.missing_keys, ["linear.weight", "linear.bias"]);
//! # Ok(())
//! # }
//! ```
//!
//! # A DataParallel checkpoint, with progress
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{load_state_dict_with, models, LazyStateDict, LoadOptions};
//!
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let model = models::resnet50(&vs, 1000)?;
//! let mut sd = LazyStateDict::load("dataparallel.pth")?;
//! sd.strip_prefix("module."); // consume_prefix_in_state_dict_if_present(sd, "module.")
//! let options = LoadOptions::new().progress(|done, total| eprint!("\r{done} / {total} bytes"));
//! load_state_dict_with(&model, &sd, &options)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Look before loading
//!
//! [`check_state_dict`](crate::check_state_dict) is the dry run: the report a load would give,
//! nothing read or written. A single tensor is read with
//! [`LazyTensor::read`](crate::LazyTensor::read); the whole state dict into memory with
//! [`into_state_dict`](crate::LazyStateDict::into_state_dict).
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{check_state_dict, models, LazyStateDict, LoadOptions, StateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let model = models::resnet18(&vs, 10)?;
//! let sd = LazyStateDict::load("resnet18.pth")?;
//!
//! let fc = sd.get("fc.weight").expect("a head");
//! println!("fc.weight: {:?} {:?}", fc.size(), fc.kind()); // not read
//! let weight = fc.read()?; // t = sd["fc.weight"]
//!
//! let report = check_state_dict(&model, &sd, &LoadOptions::new().strict(false))?;
//! println!("{report}");
//!
//! let in_memory: StateDict = sd.into_state_dict()?; // {k: v.clone() for k, v in sd.items()}
//! # let _ = (weight, in_memory);
//! # Ok(())
//! # }
//! ```
