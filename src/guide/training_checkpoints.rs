//! Checkpoints from training code: options objects, numpy values, configs that refer to
//! themselves, whole models (torch.fx GraphModules too), TorchScript archives and tch's `.ot`
//! files.
//!
//! Most checkpoints hold more than a state dict: the training script's options, numpy values,
//! whole models, or a file written by another tool. PyTorch 2.11 refuses them by default
//! (`weights_only=True`); its own advice, `weights_only=False`, runs whatever code the file
//! names. This crate reads them all, and imports, calls or runs nothing. `examples/finetune
//! --checkpoint` takes any of them (`--key ""` for a whole pickled model).
//!
//! | kind of file | PyTorch 2.11, `torch.load(p)` with its defaults | this crate |
//! |---|---|---|
//! | a state dict, or `{'model': sd, 'epoch': ..., 'optimizer': ...}` of plain values | loads | reads (`StateDict::load`, `StateDict::load_key(p, "model")`, or lazily `LazyStateDict::load_key`) |
//! | RepDistiller's `{'opt': argparse.Namespace, 'model': sd, 'optimizer': ...}` | refused: `Unsupported global: GLOBAL argparse.Namespace` | opens; `opt` is a `Value::Object` whose attributes read as values (`v.get("opt")?.attr("lr")`); `load_key(p, "model")` |
//! | timm's `{..., 'args': argparse.Namespace, 'metric': numpy.float64}` | refused (`argparse.Namespace`, `numpy._core.multiarray.scalar`) | `metric` is a `Float`; `args` an object; `load_key(p, "state_dict")` |
//! | a Lightning `.ckpt` (`hyper_parameters` an `AttributeDict`, keys prefixed `model.`) | refused; with `weights_only=False`, also needs Lightning installed to import the class | opens without the package; `hyper_parameters` is an object with its items; `load_key(p, "state_dict")` then `strip_prefix("model.")` |
//! | a Lightning or Hydra `.ckpt` whose `hyper_parameters` hold omegaconf configs (`DictConfig`, `ListConfig`): each node keeps a `_parent` pointer to the node that holds it, so the pickle's objects form cycles | refused; with `weights_only=False`, needs omegaconf installed | opens without omegaconf; each config node is an object whose `_content` holds its children, and each `_parent` is a [`Value::Recursive`](crate::Value::Recursive), printed `...` as Python prints a reference back (below) |
//! | a whole `torch.fx.GraphModule` (`torch.fx.symbolic_trace`, onnx2torch), pickled as a call of `torch.fx.graph_module.reduce_graph_module` | refused; with `weights_only=False`, runs the module's generated Python code to rebuild it | `StateDict::load(p)` is `gm.state_dict()`, as for any pickled module; the generated code is the string attribute `_code` of the object, never run |
//! | numpy arrays, `pathlib` paths, `datetime`s in a checkpoint | refused | tensors of the same dtype and shape; strings; `isoformat()` strings |
//! | `torch.save(model)`, a whole pickled `nn.Module` | refused; with `weights_only=False`, needs the model's class importable and runs the pickle | `StateDict::load(p)` is `model.state_dict()`: same keys, order, values and `_metadata` versions (BatchNorm's 2), without the class |
//! | `{'model': <nn.Module>, ...}` | as above | `load_key(p, "model")`, `Checkpoint::load_into_at("model", ...)` |
//! | `torch.jit.save` of a scripted module, from torch 1.x (archive version 1, whose storages' persistent ids have a sixth item) to 2.11 | `RuntimeError: Cannot use weights_only=True with TorchScript archives`; `torch.jit.load` runs the archive's code | parameters and buffers as `scripted.state_dict()` gives them; `data.pkl` read as data, the code never run |
//! | tch's `VarStore::save` (`.ot`) and `Tensor::save_multi` | as TorchScript | a state dict with `\|` turned back into `.`: `load_state_dict` into the VarStore that wrote it is a strict, exact round trip; `tch-state-dict convert model.ot model.pth` converts |
//! | storages saved on a GPU (`cuda:0`), read on a CPU machine | `RuntimeError: Attempting to deserialize object on a CUDA device` unless `map_location` is given | placed by `ReadOptions::device`, the CPU by default |
//! | a hostile pickle (`os.system(...)`, `builtins.eval(...)`) | refused; with `weights_only=False`, runs it | opens as an object of class `os.system`, never called; asking for a state dict is `Error::OpaqueObject` |
//!
//! [`ReadOptions::new().weights_only(true)`](crate::ReadOptions::weights_only) refuses what
//! PyTorch's default refuses: any global outside this crate's allowlist fails to open with
//! [`Error::DisallowedGlobal`](crate::Error::DisallowedGlobal) naming `module.name`, and
//! TorchScript archives (tch's `.ot` files among them) with
//! [`Error::TorchScript`](crate::Error::TorchScript). Without it (the default), such a global
//! is recorded as an opaque object ([`Value::Object`](crate::Value::Object)): the allowlist
//! still decides what can make tensors, storages and containers, nothing else is imported or
//! called, and the same limits on size, depth and memo expansion apply. Use
//! `weights_only(true)` when a file may only hold tensors and plain values, and anything else
//! should be an error. The fixtures are made by the real libraries
//! (`tests/fixtures/make_training.py`: argparse, numpy, a stand-in package for Lightning's
//! class, `torch.save(model)`, `torch.jit.save`, tch's `VarStore::save`), and
//! `tests/training.rs`, `tests/modules.rs` and `tests/torchscript.rs` compare every tensor
//! with Python's `torch.load(weights_only=False)` or `scripted.state_dict()`.
//!
//! # Values that refer to themselves: omegaconf configs and other cycles
//!
//! A pickle is a graph, not a tree: `l = []; l.append(l)` or an omegaconf node whose
//! `_parent` is the node that holds it. Python rebuilds the cycle; a [`Value`](crate::Value)
//! is a tree, so where a value would hold one of the values that enclose it, it holds a
//! [`Value::Recursive`](crate::Value::Recursive) instead: `up` says how many levels up the
//! value it refers to is, and `Display` prints it as Python's `repr` does (`[...]`, `{...}`,
//! or `...` for an object). Every entry point reads such files: [`Value::load`](crate::Value::load),
//! [`Checkpoint::value`](crate::Checkpoint::value), `value_at`, `value_with_unreadable`, `load_key` of
//! any key, and the tool's `inspect` (with `--key` too). A value shared without a cycle (one
//! dict under two keys) is read twice, as two equal values that share their tensors.
//!
//! An omegaconf config node is an object of class `omegaconf.dictconfig.DictConfig` (or
//! `ListConfig`, or `omegaconf.nodes.AnyNode` for a leaf) whose attributes are its pickled
//! state: `_content` (a dict of the children, or a list), `_metadata` (an object with the
//! key, the types and the flags) and `_parent`. A leaf's value is its `_val`, the
//! interpolations (`"${trainer.max_epochs}"`) and missing values (`"???"`) as the strings the
//! config holds; nothing is resolved.
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::{StateDict, Value};
//!
//! let ckpt = Value::load("epoch=29-step=900.ckpt")?;
//! // torch.load(p, weights_only=False)['hyper_parameters']['cfg'].optim.lr
//! let hparams = ckpt.get("hyper_parameters").and_then(Value::as_object).unwrap();
//! let cfg = &hparams.dict_items().iter().find(|(k, _)| k.as_str() == Some("cfg")).unwrap().1;
//! let lr = cfg
//!     .attr("_content")
//!     .and_then(|c| c.get("optim"))
//!     .and_then(|optim| optim.attr("_content"))
//!     .and_then(|c| c.get("lr"))
//!     .and_then(|lr| lr.attr("_val"))
//!     .and_then(Value::as_float);
//! // The weights, as from any Lightning checkpoint.
//! let mut sd = StateDict::load_key("epoch=29-step=900.ckpt", "state_dict")?;
//! sd.strip_prefix("model.");
//! # let _ = lr;
//! # Ok(())
//! # }
//! ```
//!
//! Cycles stay bounded: each value made counts against
//! [`ReadLimits::max_values`](crate::ReadLimits), so a graph whose paths multiply (24 lists
//! that each hold all 24) is refused with `Error::LimitExceeded`, and a module that is one of
//! its own submodules, whose `state_dict()` PyTorch would recurse into forever, is refused
//! with `PickleError::Cycle`. `Value::save` writes no `Value::Recursive` (see
//! [`saving`](super::saving)).
//!
//! # torch.fx GraphModules
//!
//! `torch.save(torch.fx.symbolic_trace(model))` pickles the module's `__dict__` and the
//! Python code torch.fx generated for its `forward`, to be rebuilt by running that code. This
//! crate reads the `__dict__` as it reads any pickled module's: [`StateDict::load`](crate::StateDict::load),
//! [`LazyStateDict`](crate::LazyStateDict), [`load_checkpoint`](crate::load_checkpoint), and the
//! tool's `check` and `convert` give `gm.state_dict()`. The value is an object of class
//! `torch.fx.graph_module.reduce_graph_module` whose attributes are that `__dict__`; its
//! `_code` is the generated code, a string that is never run.
//!
//! # RepDistiller: the options object and the model
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::{Checkpoint, Value};
//!
//! let ckpt = Checkpoint::open("resnet32x4_best.pth")?;
//! let value = ckpt.value()?;
//! // torch.load(p, weights_only=False)["opt"].learning_rate, with nothing imported.
//! let opt = value.get("opt").and_then(Value::as_object).expect("an argparse.Namespace");
//! println!("{}", opt.qualified_name()); // argparse.Namespace
//! let lr = value.get("opt").and_then(|o| o.attr("learning_rate")).and_then(Value::as_float);
//! for (name, v) in opt.attrs() {
//!     println!("{name} = {}", v.type_name());
//! }
//! let model = ckpt.state_dict_at("model")?; // torch.load(p)["model"]
//! # let _ = (lr, model);
//! # Ok(())
//! # }
//! ```
//!
//! # Lightning: the state dict under `state_dict`, prefixed `model.`
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch::nn;
//! use tch_state_dict::{load_state_dict, models, LazyStateDict};
//!
//! let vs = nn::VarStore::new(tch::Device::Cpu);
//! let model = models::resnet18(&vs, 10)?;
//! let mut sd = LazyStateDict::load_key("epoch=9-step=1000.ckpt", "state_dict")?;
//! sd.strip_prefix("model.");
//! load_state_dict(&model, &sd, true)?;
//! # Ok(())
//! # }
//! ```
//!
//! # A whole pickled model, a TorchScript archive, a tch `.ot` file
//!
//! ```no_run
//! # fn main() -> Result<(), tch_state_dict::Error> {
//! use tch_state_dict::{Checkpoint, Format, StateDict};
//!
//! // torch.save(model): the state dict model.state_dict() would give, without the class.
//! let sd = StateDict::load("whole_model.pth")?;
//! // torch.jit.save(torch.jit.script(model)) or tch's vs.save("model.ot"): the parameters
//! // and buffers; the archive's code is never run.
//! let ckpt = Checkpoint::open("model.ot")?;
//! assert_eq!(ckpt.format(), Format::TorchScript);
//! let ot = ckpt.state_dict()?;
//! # let _ = (sd, ot);
//! # Ok(())
//! # }
//! ```
