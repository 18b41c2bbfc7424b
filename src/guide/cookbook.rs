//! The cookbook: the whole Python → Rust table, and recipes that compile.
//!
//! In the table, `sd` is a [`StateDict`] or a [`LazyStateDict`], `model` anything that
//! implements [`StateDictModule`] (a `tch::nn::VarStore`, a [`ModuleTree`], this crate's
//! ResNets), `vs` a `VarStore`, and `p` a path. Every `sd` method of the table (`pop`,
//! `insert`, `strip_prefix`, `add_prefix`, `rename`, `rename_prefix`, `retain`, `metadata`,
//! `shallow_clone`) works the same on a `StateDict` and a `LazyStateDict`, and
//! [`load_state_dict`], [`load_state_dict_with`] and [`check_state_dict`] take either.
//!
//! # Python → Rust
//!
//! | PyTorch | tch-state-dict |
//! |---|---|
//! | `sd = model.state_dict()` | `let sd = state_dict(&model)?;` |
//! | `model.load_state_dict(sd)` | `load_state_dict(&model, &sd, true)?;` |
//! | `r = model.load_state_dict(sd, strict=False)` | `let r = load_state_dict(&model, &sd, false)?;` |
//! | `r.missing_keys`, `r.unexpected_keys` | `r.missing_keys`, `r.unexpected_keys` |
//! | `print(r)` → `<All keys matched successfully>` | `println!("{r}")`, same text |
//! | `except RuntimeError as e: print(e)` | `Err(Error::Load(e))`: `e.missing_keys`, `e.unexpected_keys`, `e.mismatched_keys`; `e.pytorch_message()` |
//! | `model.load_state_dict(sd, assign=True)` | `load_state_dict_with(&model, &sd, &LoadOptions::new().assign(true))?` |
//! | transformers' `ignore_mismatched_sizes=True` | `load_state_dict_with(&model, &sd, &LoadOptions::new().skip_mismatched(true))?` |
//! | `sd.pop("linear.weight")` | `sd.pop("linear.weight")` |
//! | `sd["k"] = t` | `sd.insert("k", t)` |
//! | `"k" in sd`, `sd["k"]`, `len(sd)` | `sd.contains_key("k")`, `sd.get("k")`, `sd.len()` |
//! | `consume_prefix_in_state_dict_if_present(sd, "module.")` | `sd.strip_prefix("module.")` |
//! | `{"module." + k: v for k, v in sd.items()}` | `sd.add_prefix("module.")` |
//! | `{k.replace("fc.", "linear.", 1) if k.startswith("fc.") else k: v ...}` | `sd.rename_prefix("fc.", "linear.")?` |
//! | `{f(k): v for k, v in sd.items()}` | `sd.rename(f)?` |
//! | `{k: v for k, v in sd.items() if keep(k, v)}` | `sd.retain(keep)` |
//! | `sd._metadata` | `sd.metadata()` |
//! | `sd.copy()` | `sd.shallow_clone()` |
//! | `torch.load(p)` | `Value::load(p)?` (or `Checkpoint::open(p)?.value()?`) |
//! | `torch.load(p, weights_only=False)['hyper_parameters']` | `Checkpoint::open(p)?.value_at("hyper_parameters")?` (only that value is read) |
//! | `sd = torch.load(p)` | `let sd = StateDict::load(p)?;` |
//! | `sd = torch.load(p)['model']` | `let sd = StateDict::load_key(p, "model")?;` |
//! | `sd = torch.load(p, mmap=True)['model']`, to pop or rename keys and load | `let mut sd = LazyStateDict::load_key(p, "model")?;` (nothing read yet) |
//! | `sd.pop("fc.weight"); model.load_state_dict(sd, strict=False)` on it | `sd.pop("fc.weight"); load_state_dict(&model, &sd, false)?` (reads straight into the model) |
//! | `sd["k"].shape`, `sd["k"].dtype` | `sd.get("k").unwrap().size()`, `.kind()` (not read; `None` for a dtype tch has no kind for, whose name `.dtype_name()` gives) |
//! | `t = sd["k"]` (one tensor) | `let t = sd.get("k").unwrap().read()?;` |
//! | `{k: v.clone() for k, v in sd.items()}` (everything in memory) | `let sd: StateDict = sd.into_state_dict()?;` |
//! | `torch.load(p, map_location="cuda:0")` | `StateDict::load_with(p, &ReadOptions::new().device(Device::Cuda(0)))?` |
//! | `torch.load(p, mmap=True)` | `StateDict::load_with(p, &ReadOptions::new().mmap(true))?`, or `LazyStateDict::load(p)?` to read nothing until a load |
//! | `safetensors.torch.load_file(p)` | `StateDict::load(p)?` (the format comes from the bytes) |
//! | `model.load_state_dict(torch.load(p))` | `load_checkpoint(&model, p, true)?` (reads straight into the model) |
//! | `model.load_state_dict(torch.load(p)["model"])` | `Checkpoint::open(p)?.load_into_at("model", &model, &LoadOptions::new())?` |
//! | `torch.set_num_threads(n)` (for loading) | `ReadOptions::new().threads(Some(n))` |
//! | `torch.save(sd, "model.pth")` | `sd.save("model.pth")?` |
//! | `safetensors.torch.save_file(sd, "model.safetensors")` | `sd.save("model.safetensors")?` |
//! | `torch.save({"model": sd, "epoch": 240, "acc": 0.9}, p)` | `Value::dict([("model", sd.into()), ("epoch", 240.into()), ("acc", 0.9.into())]).save(p)?` |
//! | `ckpt["epoch"]` | `value.get("epoch").and_then(Value::as_int)` |
//! | `model = torchvision.models.resnet50(num_classes=10)` | `let mut model = models::resnet50(&vs, 10)?;` |
//! | `model = ResNet50(num_classes=100)` (CIFAR, head `linear`) | `let mut model = models::cifar_resnet50(&vs, 100)?;` |
//! | `model = resnet32x4(num_classes=100)` (CIFAR, head `fc`) | `let mut model = models::resnet32x4(&vs, 100)?;` |
//! | `model.fc = nn.Linear(model.fc.in_features, n_cls)` | `replace_head(&mut model, n_cls)?;` |
//! | `model.linear = nn.Linear(in_channel, n_cls)` | `replace_head(&mut model, n_cls)?;` |
//! | `model.classifier = nn.Linear(16, n_cls)` (any tch model) | `net.classifier = replace_linear(&vs, "classifier", n_cls)?;` |
//! | `model.fc.in_features`, `model.fc.out_features` | `model.in_features()`, `model.num_classes()` |
//! | freeze all but the head (`p.requires_grad = False`) | `model.freeze_backbone()`; `model.unfreeze()`; `models::freeze(&vs, keep)` |
//! | `model.eval(); model(x)` / `model.train(); model(x)` | `model.forward_t(&x, false)` / `model.forward_t(&x, true)` |
//! | `torch.load(p)` in a notebook, to look at keys, shapes and dtypes | `tch-state-dict inspect p` (`--key model` for one entry) |
//! | `safetensors.torch.save_file(torch.load(p)["model"], "model.safetensors")` | `tch-state-dict convert p model.safetensors --key model` |
//! | `torch.save(safetensors.torch.load_file(p), "model.pth")` | `tch-state-dict convert p model.pth` |
//! | none: tch users load the `.pth` in Rust and call `vs.save("model.ot")` | `tch-state-dict convert p model.ot` |
//! | `model.load_state_dict(torch.load(p)["model"], strict=False)` in a notebook, to see whether it fails | `tch-state-dict check p --key model --arch cifar_resnet50 --classes 10 --no-strict` (exit 1 when it would fail) |
//! | a notebook loop over `a.keys() - b.keys()` and `(a[k].double() - b[k].double()).abs().max()` | `tch-state-dict diff a.pth b.pth` (exit 1 when they differ) |
//!
//! `model` is anything that implements `StateDictModule`: a `tch::nn::VarStore`, or a
//! `ModuleTree` that records a model's modules in PyTorch's order
//! (`ModuleTree::from_var_store_ordered(&vs, keys)?.with_type_name("Net")`; see
//! [`rules`](super::rules#targets)).
//!
//! # Fine-tune from a training checkpoint
//!
//! The crate's [quick start](crate#the-two-fixes-on-a-training-checkpoint) shows both fixes of
//! the failing `size mismatch for linear.weight`: pop the head and load non-strictly, or build
//! with the checkpoint's classes, load strictly and [replace the
//! head](super::fine_tuning). Straight from the file, with nothing staged:
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{load_state_dict, models, LazyStateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::cuda_if_available());
//! let model = models::cifar_resnet50(&vs, 10)?;
//! let mut sd = LazyStateDict::load_key("ckpt_epoch_240.pth", "model")?;
//! sd.retain(|key, _| !key.starts_with("linear.")); // or sd.pop each key
//! let report = load_state_dict(&model, &sd, false)?;
//! assert_eq!(report.missing_keys, ["linear.weight", "linear.bias"]);
//! # Ok(())
//! # }
//! ```
//!
//! # Key surgery: wrappers, renamed heads
//!
//! ```
//! use tch::{Device, Kind, Tensor};
//! use tch_state_dict::{Error, StateDict};
//!
//! # fn main() -> Result<(), Error> {
//! let t = || Tensor::zeros([2], (Kind::Float, Device::Cpu));
//! let mut sd = StateDict::new();
//! sd.insert("module.conv1.weight", t());
//! sd.insert("module.fc.weight", t());
//!
//! // consume_prefix_in_state_dict_if_present(sd, "module.") (DataParallel; "_orig_mod."
//! // for torch.compile)
//! assert_eq!(sd.strip_prefix("module."), 2);
//! // A torchvision-style head into a CIFAR-style model.
//! sd.rename_prefix("fc.", "linear.")?;
//! // Any renaming: {f(k): v for k, v in sd.items()}
//! sd.rename(|k| k.replace("conv1", "stem"))?;
//! assert_eq!(sd.keys().collect::<Vec<_>>(), ["stem.weight", "linear.weight"]);
//! // Into a wrapped model again.
//! sd.add_prefix("module.");
//! assert!(sd.contains_key("module.linear.weight"));
//! # Ok(())
//! # }
//! ```
//!
//! # Load what fits, skip what does not
//!
//! Like transformers' `ignore_mismatched_sizes=True`:
//!
//! ```
//! use tch::{nn, Device, Kind, Tensor};
//! use tch_state_dict::{load_state_dict_with, Error, LoadOptions, StateDict};
//!
//! # fn main() -> Result<(), Error> {
//! let vs = nn::VarStore::new(Device::Cpu);
//! let _head = nn::linear(vs.root() / "head", 8, 10, Default::default());
//!
//! let mut sd = StateDict::new();
//! sd.insert("head.weight", Tensor::zeros([100, 8], (Kind::Float, Device::Cpu)));
//! sd.insert("head.bias", Tensor::zeros([100], (Kind::Float, Device::Cpu)));
//! let options = LoadOptions::new().strict(false).skip_mismatched(true);
//! let report = load_state_dict_with(&vs, &sd, &options)?;
//! assert_eq!(report.mismatched_keys.len(), 2); // left as they were
//! # Ok(())
//! # }
//! ```
//!
//! # A bf16 model from a bf16 checkpoint, with one copy of the weights
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{load_state_dict_with, models, LoadOptions, StateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let model = models::resnet50(&vs, 1000)?;
//! // model.load_state_dict(torch.load(p), assign=True): the model takes the tensors, dtype
//! // and all.
//! let sd = StateDict::load("resnet50.bf16.safetensors")?;
//! load_state_dict_with(&model, &sd, &LoadOptions::new().assign(true))?;
//! # Ok(())
//! # }
//! ```
//!
//! # What else a checkpoint holds
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::{Checkpoint, Value};
//!
//! let ckpt = Checkpoint::open("ckpt_epoch_240.pth")?;
//! let value = ckpt.value()?; // torch.load(p)
//! let epoch = value.get("epoch").and_then(Value::as_int); // ckpt["epoch"]
//! let acc = value.get("acc").and_then(Value::as_float);
//! println!("epoch {epoch:?}, acc {acc:?}");
//! # Ok(())
//! # }
//! ```
//!
//! # Convert between formats
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::StateDict;
//!
//! // safetensors.torch.save_file(torch.load(p)["model"], "model.safetensors")
//! StateDict::load_key("ckpt_epoch_240.pth", "model")?.save("model.safetensors")?;
//! // torch.save(safetensors.torch.load_file(p), "model.pth")
//! StateDict::load("model.safetensors")?.save("model.pth")?;
//! # Ok(())
//! # }
//! ```
//!
//! Or with the tool: `tch-state-dict convert ckpt_epoch_240.pth model.safetensors --key
//! model` (see [`cli`](super::cli)), which also writes tch's `.ot`.
//!
//! [`StateDict`]: crate::StateDict
//! [`LazyStateDict`]: crate::LazyStateDict
//! [`StateDictModule`]: crate::StateDictModule
//! [`ModuleTree`]: crate::ModuleTree
//! [`load_state_dict`]: crate::load_state_dict
//! [`load_state_dict_with`]: crate::load_state_dict_with
//! [`check_state_dict`]: crate::check_state_dict
