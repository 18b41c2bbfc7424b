//! Checkpoints from distributed training: `torch.distributed.checkpoint` (DCP) directories,
//! and model directories.
//!
//! FSDP2, DTensor and torchtitan save with `torch.distributed.checkpoint` (DCP): a directory
//! of a `.metadata` pickle and `.distcp` files, each tensor stored as chunks (boxes of the
//! global tensor) spread over the ranks' files. PyTorch reads it back only into a model of the
//! same sharding, or through `dcp_to_torch_save`, which builds the whole checkpoint in memory.
//! This crate opens the directory (or its `.metadata`) wherever it takes a path, as
//! [`Format::Distributed`](crate::Format::Distributed), and reads nothing until asked:
//!
//! | layout | Rust |
//! |---|---|
//! | a step folder of torchtitan or FSDP2 (`{'model', 'optimizer', ...}`) into a model | `let sd = LazyStateDict::load_key("step-1000", "model")?; load_state_dict(&model, &sd, true)?;` |
//! | the same, in memory (`torch.load(converted)["model"]`) | `StateDict::load_key("step-1000", "model")?` |
//! | everything `dcp_to_torch_save` writes: nested dicts, optimizer state, `lr_scheduler`, `train_state` | `Value::load("step-1000")?` |
//! | every tensor under DCP's flattened keys (`model.layer1.0.conv1.weight`, `optim.state.fc1.weight.exp_avg`) | `LazyStateDict::load("step-1000")?` |
//! | `dcp.save(sd, no_dist=True)`, `FileSystemWriter(single_file_per_rank=False)`, `thread_count=N`, `_extensions=[ZStandard()]` | the same calls |
//! | a model directory (`model.safetensors`, its index, `pytorch_model.bin`, its index; what `from_pretrained(dir)` finds), and `HuggingFaceStorageWriter`'s safetensors shards with their index | `StateDict::load("model_dir")?` |
//! | the tool | `tch-state-dict inspect step-1000`, `convert step-1000 model.safetensors --key model`, `check`, `diff` |
//!
//! - **Straight into the model**: each chunk is read into its box of the model's tensor. A box
//!   of whole rows (`Shard(0)`, FSDP2's layout) is one `pread`; a box of columns (`Shard(1)`)
//!   is read in blocks of whole rows of about 1 MiB through a buffer; another dtype (an fp32
//!   checkpoint into a bf16 model) converts chunk by chunk. A 256 MiB two-rank checkpoint of
//!   `Shard(0)` and `Shard(1)` layers loads with 17 MB of peak RSS growth
//!   (`tests/memory.rs`). It is 7× to 18× faster than PyTorch's own `dcp.load` into a model,
//!   but not quite at the `.pth`'s pace: a 2-rank `Shard(0)` checkpoint opens, loads and
//!   drops in about 1.2× to 1.3× the time of the same state dict as one `.pth` at 1 GiB, and
//!   1.3× to 2.6× for resnet50's 100 MB (benches/README.md, with where the time goes):
//!   parsing the per-chunk `torch.save` items, and copying chunks whose bytes DCP leaves
//!   unaligned. `.metadata` is read in place, field by field; a field
//!   this crate does not use is never looked at, as for `dcp.load`.
//! - **Checked first**: every tensor's chunks must lie inside its shape, not overlap and cover
//!   it exactly ([`Error::ChunkLayout`](crate::Error::ChunkLayout)), and each chunk's own dtype
//!   and shape must be the metadata's. A field of `.metadata` that is not what DCP writes, a
//!   `relative_path` outside the directory (`..`, absolute, a symlink out), a range past a
//!   file's end, a slice that is no `torch.save` zip, or a transform other than
//!   `stream.zstd/1` is [`Error::InvalidDistributed`](crate::Error::InvalidDistributed) naming
//!   the field. Each `.distcp` file read is checked to be the file that was resolved inside
//!   the directory (no symlink swapped in). zstd items are inflated, a piece at a time, within
//!   the memory budget: one budget for the whole checkpoint, its `.metadata` and `.distcp`
//!   files together (see [`safety`](super::safety)).
//! - **Values**: byte items are read as any `torch.save` (ints, floats, lists,
//!   `param_groups`); keys nest by `planner_data`, dicts for names and lists for indices, as
//!   `dcp_to_torch_save` nests them. Tensors read this way are assembled in memory, chunk by
//!   chunk.
//! - **Tested** on directories written by real `torch.distributed` runs on CPU with gloo
//!   (`tests/fixtures/make_distributed.py`: one process, a file per item, 3 writer threads,
//!   zstd, 2 ranks of DTensor `Shard(0)`, `Shard(1)` and `Replicate()` with an uneven split and
//!   an empty chunk, FSDP2 `fully_shard` with AdamW state, torchtitan step folders), each
//!   compared with `dcp_to_torch_save`'s file (`tests/distributed.rs`).
//! - **Left out**: DeepSpeed ZeRO's shards (`zero_to_fp32.py` is DeepSpeed's own format and
//!   merge); DCP's `serialization_format=SAFETENSORS`, which torch 2.11 itself cannot read
//!   back; per-rank `__<rank>.metadata` files written with `use_collectives=False`; and
//!   `HuggingFaceStorageWriter(save_distributed=True)` shards without an index.
//!
//! # A torchtitan step folder into a model
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{load_state_dict, models, Checkpoint, Format, LazyStateDict, Value};
//!
//! let vs = nn::VarStore::new(tch::Device::cuda_if_available());
//! let model = models::resnet50(&vs, 1000)?;
//! assert_eq!(Checkpoint::open("step-1000")?.format(), Format::Distributed);
//!
//! // Each chunk of each tensor is read into its box of the model's tensor.
//! let sd = LazyStateDict::load_key("step-1000", "model")?;
//! load_state_dict(&model, &sd, true)?;
//!
//! // What dcp_to_torch_save would write, in memory: optimizer state, train_state, ...
//! let everything = Value::load("step-1000")?;
//! for (key, value) in &everything.as_dict().expect("a dict").items {
//!     println!("{key:?}: {}", value.type_name()); // "model": dict, "optimizer": dict, ...
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # A model directory
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::StateDict;
//!
//! // What from_pretrained("model_dir") finds: model.safetensors, pytorch_model.bin, or
//! // their sharded indexes.
//! let sd = StateDict::load("model_dir")?;
//! # let _ = sd;
//! # Ok(())
//! # }
//! ```
