//! The `tch-state-dict` tool (feature `cli`): `inspect`, `check`, `convert` and `diff`.
//!
//! | in a notebook | the tool |
//! |---|---|
//! | `torch.load(p)`, to look at keys, shapes and dtypes | `tch-state-dict inspect p` (`--key model` for one entry) |
//! | `safetensors.torch.save_file(torch.load(p)["model"], "model.safetensors")` | `tch-state-dict convert p model.safetensors --key model` |
//! | `torch.save(safetensors.torch.load_file(p), "model.pth")` | `tch-state-dict convert p model.pth` |
//! | `torch.save(torch.load(p, weights_only=False), "copy.ckpt")`, objects and all | `tch-state-dict convert p copy.ckpt --objects` (see [`saving`](super::saving)) |
//! | none: tch users load the `.pth` in Rust and call `vs.save("model.ot")` | `tch-state-dict convert p model.ot` |
//! | `model.load_state_dict(torch.load(p)["model"], strict=False)`, to see whether it fails | `tch-state-dict check p --key model --arch cifar_resnet50 --classes 10 --no-strict` (exit 1 when it would fail) |
//! | a loop over `a.keys() - b.keys()` and `(a[k].double() - b[k].double()).abs().max()` | `tch-state-dict diff a.pth b.pth` (exit 1 when they differ) |
//!
//! Every command takes every format the library reads, DCP directories and model directories
//! included (see [`formats`](super::formats)). `--arch` takes the names of
//! [`models::Arch`](crate::models::Arch) ([`Arch::name`](crate::models::Arch::name)).
//!
//! # Install
//!
//! ```sh
//! cargo install tch-state-dict --features cli          # in this repository: scripts/cargo install --path . --features cli
//! ```
//!
//! It builds against libtorch as the library does, and finds it at run time through the path it was
//! built with. Exit codes: 0 yes; 1 no (`check`: the load would fail, `diff`: they differ); 2 an
//! error (unreadable input, a bad argument), printed on stderr. Below, `ckpt_epoch_240.pth` is a
//! 100-class CIFAR ResNet50 saved by a training script as `{'model': ..., 'epoch': 240, 'acc': ...}`,
//! and `finetuned.pth` the same network after one SGD step with a 10-class head.
//!
//! `inspect` prints the tree without reading more than it shows (objects of classes the reader
//! does not import print as Python's repr, and tch's `.ot` files and TorchScript archives open too):
//!
//! ```text
//! $ tch-state-dict inspect ckpt_epoch_240.pth | head -n 6
//! ckpt_epoch_240.pth (TorchZip, 320 tensors)
//! dict of 3 items
//!   "model"  OrderedDict of 320 items, 320 tensors, 95033912 bytes, _metadata for 145 modules
//!     "conv1.weight"                             tensor torch.Size([64, 3, 3, 3]) float32 (6912 bytes)
//!     "bn1.weight"                               tensor torch.Size([64]) float32 (256 bytes)
//!     "bn1.bias"                                 tensor torch.Size([64]) float32 (256 bytes)
//! $ tch-state-dict inspect ckpt_epoch_240.pth --key acc
//! ckpt_epoch_240.pth (TorchZip, 320 tensors)
//! ["acc"]  0.7712
//! ```
//!
//! `check` says what `model.load_state_dict(sd, strict)` would print, without loading (`--strict`
//! is the default, as in PyTorch; `--arch` takes the names of `models::Arch`):
//!
//! ```text
//! $ tch-state-dict check ckpt_epoch_240.pth --key model --arch cifar_resnet50 --classes 100
//! <All keys matched successfully>
//! $ tch-state-dict check ckpt_epoch_240.pth --key model --arch cifar_resnet50 --classes 10 --no-strict; echo "exit $?"
//! Error(s) in loading state_dict for ResNet:
//! 	size mismatch for linear.weight: copying a param with shape torch.Size([100, 2048]) from checkpoint, the shape in current model is torch.Size([10, 2048]).
//! 	size mismatch for linear.bias: copying a param with shape torch.Size([100]) from checkpoint, the shape in current model is torch.Size([10]).
//! hint: "linear" looks like a classifier head: 100 classes in the checkpoint, 10 in the model. To fine-tune, either drop the head and load the rest: state_dict.pop("linear.weight"); state_dict.pop("linear.bias"); load_state_dict(&model, &state_dict, false); or build the model with 100 classes, load strictly, then replace the head with a new 10-class Linear (replace_head(&mut model, 10))
//! exit 1
//! $ tch-state-dict check ckpt_epoch_240.pth --arch cifar_resnet50 --classes 10; echo "exit $?"
//! error: ckpt_epoch_240.pth: the top-level object is not a state dict: it is a dict of 3 items, holding 'model': a state dict of 320 tensors, 'epoch': the int 240, 'acc': the float 0.7712; load that state dict with StateDict::load_key(path, "model") (torch.load(path)["model"])
//! hint: pass --key model
//! exit 2
//! ```
//!
//! `convert` writes `.pth` (also `.pt`, `.bin`, `.ckpt`), `.safetensors` or tch's `.ot` (what
//! `VarStore::load` reads), from the output's extension. It writes a state dict; with
//! `--objects`, the whole checkpoint (or the value under `--key`, read alone: not a training
//! checkpoint's optimizer state when its `hyper_parameters` are asked for), with its options,
//! configs and other objects written back as they came, for `torch.load(weights_only=False)`
//! to resume from (torch.save's format only):
//!
//! ```text
//! $ tch-state-dict convert ckpt_epoch_240.pth model.safetensors --key model
//! wrote 320 tensors (90.63 MiB) to model.safetensors (safetensors)
//! $ tch-state-dict convert model.safetensors model.ot
//! wrote 320 tensors (90.63 MiB) to model.ot (tch VarStore)
//! $ tch-state-dict convert last.ckpt resume.ckpt --objects
//! wrote the checkpoint with its objects to resume.ckpt (torch.save; torch.load(weights_only=False) reads it)
//! ```
//!
//! Over 64 MiB, on a terminal, a bar follows the read, then a spinner the write:
//! `reading ██████████████████████░░░░░░░ 552.00 MiB/1.56 GiB 814.79 MiB/s 1s`. (Read tensor by
//! tensor, a file over 64 MiB is written without the storage sharing of tied weights; below that,
//! tensors that shared a storage still share it.)
//!
//! `diff` lists keys only in one file, shape and dtype differences, and the largest absolute
//! difference of each common tensor that is not equal:
//!
//! ```text
//! $ tch-state-dict diff ckpt_epoch_240.pth model.safetensors --key-a model; echo "exit $?"
//! a: ckpt_epoch_240.pth["model"]: 320 tensors, 90.63 MiB
//! b: model.safetensors: 320 tensors, 90.63 MiB
//! 320 of 320 common tensors equal (keys in another order)
//! exit 0
//! $ tch-state-dict diff ckpt_epoch_240.pth finetuned.pth --key-a model > diff.txt; echo "exit $?"
//! exit 1
//! $ head -n 8 diff.txt; tail -n 1 diff.txt
//! a: ckpt_epoch_240.pth["model"]: 320 tensors, 90.63 MiB
//! b: finetuned.pth: 320 tensors, 89.93 MiB
//! shape differs (2):
//!   linear.weight  [100, 2048] float32 in a, [10, 2048] float32 in b
//!   linear.bias    [100] float32 in a, [10] float32 in b
//! values differ (318):
//!   conv1.weight                             max |a - b| = 6.353e-2
//!   bn1.weight                               max |a - b| = 2.408e-2
//! 0 of 320 common tensors equal
//! ```
//!
//! `tests/cli.rs` runs the built tool as a person does and checks stdout, stderr and exit codes of
//! each command and its failures.

// The transcripts are the tool's output, whose PyTorch message is indented with tabs.
#![allow(clippy::tabs_in_doc_comments)]
