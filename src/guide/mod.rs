//! The manual: one chapter a topic, with examples that compile. The README is the front
//! page.
//!
//! The [crate documentation](crate) opens with a quick start. These chapters hold the rest:
//!
//! * [`cookbook`]: the whole Python → Rust table, and recipes for the common jobs.
//! * [`rules`]: what `load_state_dict` checks and reports, PyTorch's rules and this crate's
//!   own (all or nothing, hints, tch's BatchNorms).
//! * [`fine_tuning`]: ResNets with PyTorch's keys, `replace_head`, `replace_linear` and
//!   freezing.
//! * [`formats`]: the checkpoint files that are read and written, the values and dtypes in
//!   them, and where tensors are placed.
//! * [`lazy`]: state dicts whose tensors are still in the file, and how a load reads them
//!   straight into the model.
//! * [`saving`]: writing `torch.save` and safetensors files that replace the old file whole
//!   or not at all, and training checkpoints written back with their objects.
//! * [`training_checkpoints`]: checkpoints that hold more than a state dict (options
//!   objects, numpy values, omegaconf configs and other values that refer to themselves,
//!   whole pickled models and torch.fx GraphModules, TorchScript archives, tch's `.ot`
//!   files).
//! * [`distributed`]: `torch.distributed.checkpoint` (DCP) directories from FSDP2, DTensor
//!   and torchtitan, and model directories.
//! * [`safety`]: the pickle machine that runs nothing, the memory budget, CRC-32 checks,
//!   hardening against hostile files, fuzzing.
//! * [`tch_vision`]: which `tch::vision` models take torchvision's checkpoints and compute
//!   what torchvision computes, measured.
//! * [`cli`]: the `tch-state-dict` tool: `inspect`, `check`, `convert`, `diff`.
//! * [`troubleshooting`]: CUDA not found, libtorch versions, Python for the tests, files
//!   PyTorch refuses.
//!
//! Benchmarks (load times against PyTorch and tch, memory) are in the repository's
//! [`benches/README.md`](https://github.com/tch-state-dict/tch-state-dict/blob/main/benches/README.md).

pub mod cli;
pub mod cookbook;
pub mod distributed;
pub mod fine_tuning;
pub mod formats;
pub mod lazy;
pub mod rules;
pub mod safety;
pub mod saving;
pub mod tch_vision;
pub mod training_checkpoints;
pub mod troubleshooting;
