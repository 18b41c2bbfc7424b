//! The rules of `load_state_dict`: PyTorch's, and this crate's own.
//!
//! These are PyTorch 2.11's, checked against Python torch in `tests/pytorch_messages.rs`,
//! except where marked as this crate's own.
//!
//! - **Keys** match exactly. Missing keys come in the model's `state_dict()` order. Unexpected
//!   keys come as PyTorch reports them: module by module in pre-order, each key reported by the
//!   deepest module its name reaches (a model with `linear`, given `linear.extra_weight` then
//!   `head.fc.bias`, reports `"head.fc.bias", "linear.extra_weight"`).
//! - **strict**: missing or unexpected keys are an error when `strict` is true, and are
//!   returned in [`IncompatibleKeys`] when it is false.
//! - **Shapes** are compared explicitly, and a difference is an error in both modes. A `[1]`
//!   tensor never broadcasts into a `[10]` one; it loads into a 0-dim tensor, as PyTorch
//!   allows for old checkpoints.
//! - **Dtype and device**: values are converted to the model tensor's dtype and moved to its
//!   device, as `copy_` does. The model's dtypes, devices and `requires_grad` never change;
//!   copies run without autograd.
//! - **BatchNorm's `num_batches_tracked`**: a checkpoint that lacks it keeps the model's value
//!   when its `_metadata` gives that module no version, or a version below 2.
//! - **tch's BatchNorms** (this crate's): tch's `batch_norm` keeps `running_mean` and
//!   `running_var` but no `num_batches_tracked`. When the target is a bare `VarStore` (a tch
//!   model, such as `tch::vision::resnet50`), a checkpoint's `P.num_batches_tracked` whose
//!   module `P` has both running statistics and no counter is consumed: not loaded, not
//!   unexpected, listed in [`IncompatibleKeys::dropped_keys`] and logged at `info`. So a
//!   torchvision checkpoint loads strictly into `tch::vision::resnet18` to `resnet152` with no
//!   key surgery, and the logits are torchvision's (`tests/tch_models.rs`). A [`ModuleTree`]
//!   describes a PyTorch model and keeps PyTorch's semantics (the counter is unexpected)
//!   unless you call [`.drop_batch_norm_counters(true)`](crate::ModuleTree::drop_batch_norm_counters).
//! - **tch::vision and torchvision checkpoints** (measured in `tests/tch_models.rs`): every
//!   tch::vision model loads torchvision's state dict of the same name strictly (inception_v3
//!   non-strictly: its 14 `AuxLogits.*` keys are unexpected, and the error's hint gives the
//!   `retain` that drops them). The eval logits are torchvision's for the resnets, vgg11–19
//!   with and without `_bn`, squeezenet1_0/1_1 and mobilenet_v2 (within 1e-5, relative). They
//!   are not for alexnet (tch's second conv has padding 1 and stride 2: up to 0.52), densenet
//!   (tch's pools sum instead of averaging: about 2e3), or efficientnet_b0–b4 (tch's BatchNorm
//!   eps is 1e-3: about 1e-3), and efficientnet at even input sizes (TensorFlow-style
//!   padding). torchvision's published densenet files use older keys
//!   (`denselayer1.norm.1.weight`); the error's hint gives the `rename` that maps them. The
//!   whole table, with the causes in tch's source: [`tch_vision`](super::tch_vision).
//! - **assign** ([`LoadOptions::new().assign(true)`](crate::LoadOptions::assign), PyTorch's
//!   `assign=True`): the model's tensors take the checkpoint's tensors themselves, with their
//!   dtype, device and storage (`set_data`, so every module holding the tensor sees it);
//!   `requires_grad` is kept. A bf16 checkpoint makes a bf16 model without a second copy of
//!   the weights. Every value is read before the first tensor changes.
//! - **skip_mismatched** ([`LoadOptions::skip_mismatched`], like transformers'
//!   `ignore_mismatched_sizes=True`): everything else loads; the tensors whose shapes differ
//!   keep their values and are listed in [`IncompatibleKeys::mismatched_keys`].
//! - **Logging** (this crate's): through the `log` facade, a load warns of the keys it leaves
//!   out (missing, unexpected, skipped for their shapes; the first 8 of each, then a count),
//!   and logs each file's format, size and parse time, and each load's time, at `debug`.
//! - **Progress**: [`LoadOptions::progress(|done, total| ..)`](crate::LoadOptions::progress) is
//!   called from the reading threads at most every 4 MiB, in increasing order, and once at the
//!   end.
//! - **All or nothing** (this crate's): the whole report is built before anything is written;
//!   when [`load_state_dict`] returns an error, every tensor of the model is bit-identical to
//!   what it was. (Loads straight from a file: see [`lazy`](super::lazy) for the one
//!   exception, an I/O error during the copy itself.)
//! - **Hints** (this crate's), after PyTorch's text ([`LoadError::hints`]): a `module.` or
//!   `_orig_mod.` prefix and the call that strips it; a key close to a missing one
//!   (`fc.weight` for `linear.weight`) and the rename; a classifier head whose class count
//!   differs, and both fixes; unexpected keys that all lie under a submodule the model lacks
//!   (`AuxLogits.`) and the `retain` that drops them; torchvision's legacy DenseNet keys and
//!   the `rename` that maps them.
//! - **Bare VarStores** record no registration order: their keys come in natural order
//!   (`layer1.9` before `layer1.10`, a module's own tensors before its submodules'), and their
//!   type name is `VarStore` unless you set one with [`ModuleTree::with_type_name`].
//!
//! # Missing, unexpected, mismatched: data first
//!
//! A refused load is [`Error::Load`]: its [`LoadError`] has the lists to match on, and prints
//! PyTorch's message ([`LoadError::pytorch_message`]) followed by the hints.
//!
//! ```
//! use tch::{nn, Device, Kind, Tensor};
//! use tch_state_dict::{load_state_dict, Error, StateDict};
//!
//! # fn main() -> Result<(), Error> {
//! let vs = nn::VarStore::new(Device::Cpu);
//! let _fc = nn::linear(vs.root() / "fc", 4, 10, Default::default());
//!
//! let mut sd = StateDict::new();
//! sd.insert("fc.weight", Tensor::zeros([10, 4], (Kind::Float, Device::Cpu)));
//! sd.insert("fc.extra", Tensor::zeros([3], (Kind::Float, Device::Cpu)));
//!
//! // strict: fc.bias is missing and fc.extra unexpected; nothing was written.
//! let Err(Error::Load(e)) = load_state_dict(&vs, &sd, true) else {
//!     panic!("a strict load with a missing key fails");
//! };
//! assert_eq!(e.missing_keys, ["fc.bias"]);
//! assert_eq!(e.unexpected_keys, ["fc.extra"]);
//! assert!(e.pytorch_message().starts_with("Error(s) in loading state_dict for VarStore:"));
//!
//! // Not strict: the same lists, returned; fc.weight is loaded.
//! let report = load_state_dict(&vs, &sd, false)?;
//! assert_eq!(report.missing_keys, ["fc.bias"]);
//! assert_eq!(report.unexpected_keys, ["fc.extra"]);
//!
//! // A shape that differs fails in both modes, and is named.
//! sd.insert("fc.weight", Tensor::zeros([100, 4], (Kind::Float, Device::Cpu)));
//! let Err(Error::Load(e)) = load_state_dict(&vs, &sd, false) else {
//!     panic!("a shape mismatch fails even when not strict");
//! };
//! assert_eq!(e.mismatched_keys[0].key, "fc.weight");
//! assert_eq!(e.mismatched_keys[0].checkpoint_shape, [100, 4]);
//! assert_eq!(e.mismatched_keys[0].model_shape, [10, 4]);
//! # Ok(())
//! # }
//! ```
//!
//! # Dtypes and devices stay the model's
//!
//! ```
//! use tch::{nn, Device, Kind, Tensor};
//! use tch_state_dict::{load_state_dict, state_dict, Error, StateDict};
//!
//! # fn main() -> Result<(), Error> {
//! let vs = nn::VarStore::new(Device::Cpu);
//! let fc = nn::linear(vs.root() / "fc", 4, 2, Default::default());
//!
//! // An fp16 checkpoint into an fp32 model: converted as copy_ converts.
//! let mut sd = StateDict::new();
//! sd.insert("fc.weight", Tensor::ones([2, 4], (Kind::Half, Device::Cpu)));
//! sd.insert("fc.bias", Tensor::ones([2], (Kind::Half, Device::Cpu)));
//! load_state_dict(&vs, &sd, true)?;
//! assert_eq!(fc.ws.kind(), Kind::Float);
//! assert!(fc.ws.requires_grad());
//!
//! // state_dict(&model) shares storage with the model, in its order.
//! let mine = state_dict(&vs)?;
//! assert_eq!(mine.keys().collect::<Vec<_>>(), ["fc.bias", "fc.weight"]); // natural order
//! # Ok(())
//! # }
//! ```
//!
//! # Targets
//!
//! `model` is anything that implements [`StateDictModule`]: a `tch::nn::VarStore`, or a
//! [`ModuleTree`] that records a model's modules in PyTorch's order
//! (`ModuleTree::from_var_store_ordered(&vs, keys)?.with_type_name("Net")`), or this crate's
//! [`ResNet`](crate::models::ResNet)s.
//!
//! ```
//! use tch::{nn, Device};
//! use tch_state_dict::{state_dict, Error, ModuleTree};
//!
//! # fn main() -> Result<(), Error> {
//! let vs = nn::VarStore::new(Device::Cpu);
//! let _conv = nn::linear(vs.root() / "features", 4, 8, Default::default());
//! let _head = nn::linear(vs.root() / "classifier", 8, 2, Default::default());
//!
//! // Python's list(model.state_dict()), so that reports and state_dict() follow it.
//! let keys = ["features.weight", "features.bias", "classifier.weight", "classifier.bias"];
//! let model = ModuleTree::from_var_store_ordered(&vs, keys)?.with_type_name("Net");
//! assert_eq!(state_dict(&model)?.keys().collect::<Vec<_>>(), keys);
//! # Ok(())
//! # }
//! ```
//!
//! Every `sd` method of the [cookbook](super::cookbook)'s table (`pop`, `insert`,
//! `strip_prefix`, `add_prefix`, `rename`, `rename_prefix`, `retain`, `metadata`,
//! `shallow_clone`) works the same on a [`StateDict`] and a [`LazyStateDict`], and
//! [`load_state_dict`], [`load_state_dict_with`] and [`check_state_dict`] take either.
//!
//! [`IncompatibleKeys`]: crate::IncompatibleKeys
//! [`IncompatibleKeys::dropped_keys`]: crate::IncompatibleKeys::dropped_keys
//! [`IncompatibleKeys::mismatched_keys`]: crate::IncompatibleKeys::mismatched_keys
//! [`ModuleTree`]: crate::ModuleTree
//! [`ModuleTree::with_type_name`]: crate::ModuleTree::with_type_name
//! [`LoadOptions::skip_mismatched`]: crate::LoadOptions::skip_mismatched
//! [`load_state_dict`]: crate::load_state_dict
//! [`load_state_dict_with`]: crate::load_state_dict_with
//! [`check_state_dict`]: crate::check_state_dict
//! [`Error::Load`]: crate::Error::Load
//! [`LoadError`]: crate::LoadError
//! [`LoadError::hints`]: crate::LoadError::hints
//! [`LoadError::pytorch_message`]: crate::LoadError::pytorch_message
//! [`StateDictModule`]: crate::StateDictModule
//! [`StateDict`]: crate::StateDict
//! [`LazyStateDict`]: crate::LazyStateDict
