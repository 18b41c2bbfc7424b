//! `load_state_dict` and `state_dict`: plan, then commit.
//!
//! # Design note
//!
//! PyTorch copies each tensor as it walks the model, so a failing load leaves the model half
//! written. Here a load has two phases:
//!
//! 1. **Plan** reads the model's [`ModuleTree`] and the state dict and builds the whole
//!    report (missing, unexpected, shape mismatches) with PyTorch's rules, touching nothing.
//! 2. **Commit** runs only when the plan is clean: it copies each checked value into the
//!    model's tensor with `copy_` under `no_grad`, which converts to the model's dtype and
//!    moves to its device, so the model keeps its dtype, device and `requires_grad`.
//!
//! Shapes are compared explicitly before any copy, since libtorch's `copy_` would broadcast a
//! `[1]` tensor into a `[10]` one.

use indexmap::IndexMap;
use tch::Tensor;

use crate::error::Error;
use crate::module_tree::{ModuleKind, ModuleTree, Slot, StateDictModule};
use crate::report::{self, IncompatibleKeys, LoadError, ShapeMismatch};
use crate::state_dict::StateDict;
use crate::value::{Metadata, Value};

/// How [`load_state_dict_with`] loads. Setters cannot fail and name their default.
///
/// ```
/// use tch_state_dict::LoadOptions;
///
/// let options = LoadOptions::new().strict(false).skip_mismatched(true);
/// assert!(!options.is_strict());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    strict: bool,
    skip_mismatched: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            strict: true,
            skip_mismatched: false,
        }
    }
}

impl LoadOptions {
    /// Strict, and failing on shape mismatches: PyTorch's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// PyTorch's `strict` (default `true`): whether missing or unexpected keys are an error.
    /// When `false`, they are returned in [`IncompatibleKeys`] instead.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Like transformers' `ignore_mismatched_sizes` (default `false`): load everything else,
    /// leave the tensors whose shapes differ as they are, and return them in
    /// [`IncompatibleKeys::mismatched_keys`] instead of failing.
    pub fn skip_mismatched(mut self, skip: bool) -> Self {
        self.skip_mismatched = skip;
        self
    }

    /// Whether missing and unexpected keys are an error.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Whether shape mismatches are skipped rather than an error.
    pub fn is_skip_mismatched(&self) -> bool {
        self.skip_mismatched
    }
}

/// `model.load_state_dict(state_dict, strict)`: copies the state dict into the model with
/// PyTorch's rules, all or nothing.
///
/// * Keys match exactly. With `strict`, a key of the model missing from the state dict, or a
///   key of the state dict the model lacks, is an error; without, they are returned.
/// * A shape that differs is an error either way, as in PyTorch.
/// * Values are converted to the dtype of the model's tensor and moved to its device; the
///   model's dtypes, devices and `requires_grad` never change. Copies run without autograd.
/// * A BatchNorm's `num_batches_tracked` missing from a checkpoint whose `_metadata` gives
///   the module no version, or a version below 2, keeps its value and is not missing.
///
/// It takes the model by shared reference: the model and its `VarStore` stay usable.
///
/// # Errors
///
/// [`Error::Load`] with the lists and PyTorch's message when the state dict is refused; the
/// model is then unchanged. [`Error::InvalidKey`] when the model cannot describe itself.
/// [`Error::Copy`] when libtorch fails on a checked copy (a device fault).
///
/// ```no_run
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// use tch::{nn, Device};
/// use tch_state_dict::{load_state_dict, StateDict};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = nn::linear(vs.root() / "fc", 4, 10, Default::default());
/// let mut sd: StateDict = StateDict::new(); // from a checkpoint, usually
/// # let _ = &net;
/// let report = load_state_dict(&vs, &sd, false)?;
/// println!("{report}"); // _IncompatibleKeys(missing_keys=['fc.weight', 'fc.bias'], ...)
/// # Ok(())
/// # }
/// ```
pub fn load_state_dict<M: StateDictModule + ?Sized>(
    module: &M,
    state_dict: &StateDict,
    strict: bool,
) -> Result<IncompatibleKeys, Error> {
    load_state_dict_with(module, state_dict, &LoadOptions::new().strict(strict))
}

/// [`load_state_dict`] with [`LoadOptions`].
///
/// # Errors
///
/// As [`load_state_dict`].
pub fn load_state_dict_with<M: StateDictModule + ?Sized>(
    module: &M,
    state_dict: &StateDict,
    options: &LoadOptions,
) -> Result<IncompatibleKeys, Error> {
    let tree = module.module_tree()?;
    let plan = plan(&tree, state_dict, options);
    if let Some(error) = plan.error {
        return Err(error.into());
    }
    commit(&plan.copies, state_dict)?;
    Ok(plan.report)
}

/// `model.state_dict()`: the model's tensors in PyTorch's order, detached and sharing storage
/// with the model, with `_metadata` giving each module its version.
///
/// # Errors
///
/// When the model cannot describe itself ([`Error::InvalidKey`]).
pub fn state_dict<M: StateDictModule + ?Sized>(module: &M) -> Result<StateDict, Error> {
    let tree = module.module_tree()?;
    Ok(tree_state_dict(&tree))
}

/// What [`load_state_dict_with`] would report, without copying anything: a dry run that
/// checks a state dict against a model.
///
/// # Errors
///
/// As [`load_state_dict`], [`Error::Copy`] excepted.
pub fn check_state_dict<M: StateDictModule + ?Sized>(
    module: &M,
    state_dict: &StateDict,
    options: &LoadOptions,
) -> Result<IncompatibleKeys, Error> {
    let tree = module.module_tree()?;
    let plan = plan(&tree, state_dict, options);
    match plan.error {
        Some(error) => Err(error.into()),
        None => Ok(plan.report),
    }
}

pub(crate) fn tree_state_dict(tree: &ModuleTree) -> StateDict {
    let mut sd = StateDict::with_capacity(tree.len());
    for (key, tensor) in tree.iter() {
        sd.insert(key, tensor.detach());
    }
    let metadata: Metadata = tree
        .modules()
        .map(|(path, kind)| {
            let mut entry = IndexMap::new();
            entry.insert("version".to_string(), Value::Int(kind.version()));
            (path.to_string(), entry)
        })
        .collect();
    sd.set_metadata(Some(metadata));
    sd
}

/// What `load_state_dict` needs of a state dict: keys in order, shapes, `_metadata`. A
/// [`StateDict`] is one; so is a checkpoint file's state dict before its tensors are read,
/// which lets a file be checked against a model without reading it.
pub(crate) trait SourceDict {
    fn entry_count(&self) -> usize;
    fn key_at(&self, index: usize) -> &str;
    fn position(&self, key: &str) -> Option<usize>;
    /// The entry's shape, or `None` for a value that is not a tensor.
    fn shape_at(&self, index: usize) -> Option<Vec<i64>>;
    /// Whether the entry has `dst`'s shape; the default asks [`shape_at`](Self::shape_at).
    fn same_shape(&self, index: usize, dst: &Tensor) -> bool {
        self.shape_at(index).is_some_and(|s| s == dst.size())
    }
    fn metadata(&self) -> Option<&Metadata>;
}

impl SourceDict for StateDict {
    fn entry_count(&self) -> usize {
        self.len()
    }

    fn key_at(&self, index: usize) -> &str {
        self.get_index(index).map_or("", |(k, _)| k)
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.get_index_of(key)
    }

    fn shape_at(&self, index: usize) -> Option<Vec<i64>> {
        let (_, t) = self.get_index(index)?;
        t.defined().then(|| t.size())
    }

    /// One call into libtorch and no allocation: matching a million keys is mostly this.
    fn same_shape(&self, index: usize, dst: &Tensor) -> bool {
        self.get_index(index)
            .is_some_and(|(_, t)| t.defined() && t.f_is_same_size(dst).unwrap_or(false))
    }

    fn metadata(&self) -> Option<&Metadata> {
        StateDict::metadata(self)
    }
}

/// A checked copy: the model's tensor and the source entry to copy into it.
pub(crate) struct PlannedCopy<'a> {
    pub key: &'a str,
    pub dst: &'a Tensor,
    /// The entry's position in the source.
    pub src: usize,
    /// PyTorch 0.3 saved scalars as `[1]` tensors; they load into 0-dim tensors.
    pub squeeze: bool,
}

pub(crate) struct Plan<'a> {
    pub copies: Vec<PlannedCopy<'a>>,
    pub report: IncompatibleKeys,
    pub error: Option<LoadError>,
}

/// Builds the report and the list of copies without touching the model.
pub(crate) fn plan<'a>(
    tree: &'a ModuleTree,
    sd: &impl SourceDict,
    options: &LoadOptions,
) -> Plan<'a> {
    let mut copies = Vec::with_capacity(tree.len().min(sd.entry_count()));
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut undefined = Vec::new();
    // PyTorch's error lines for the keys it found, in its traversal order.
    let mut messages = Vec::new();

    let mut found = 0;
    for slot in tree.slots() {
        let Some(src) = sd.position(slot.key) else {
            if !keeps_num_batches_tracked(&slot, sd.metadata()) {
                missing.push(slot.key.to_string());
            }
            continue;
        };
        found += 1;
        if sd.same_shape(src, slot.tensor) {
            copies.push(PlannedCopy {
                key: slot.key,
                dst: slot.tensor,
                src,
                squeeze: false,
            });
            continue;
        }
        let Some(checkpoint_shape) = sd.shape_at(src) else {
            messages.push(format!(
                "While copying the parameter named \"{}\", expected torch.Tensor or \
                 Tensor-like object from checkpoint but received <class 'NoneType'>",
                slot.key
            ));
            undefined.push(slot.key.to_string());
            continue;
        };
        let model_shape = slot.tensor.size();
        let squeeze = model_shape.is_empty() && checkpoint_shape == [1];
        if !squeeze && checkpoint_shape != model_shape {
            let mismatch = ShapeMismatch {
                key: slot.key.to_string(),
                checkpoint_shape,
                model_shape,
            };
            if !options.skip_mismatched {
                messages.push(mismatch.to_string());
            }
            mismatched.push(mismatch);
            continue;
        }
        copies.push(PlannedCopy {
            key: slot.key,
            dst: slot.tensor,
            src,
            squeeze,
        });
    }

    // Every key of the state dict matched one of the model's: nothing is unexpected.
    let unexpected = if found == sd.entry_count() {
        Vec::new()
    } else {
        unexpected_keys(tree, sd)
    };
    let refused =
        !messages.is_empty() || (options.strict && (!missing.is_empty() || !unexpected.is_empty()));
    if refused {
        let heads = head_modules(tree);
        let hints = report::hints(&missing, &unexpected, &mismatched, &heads);
        let error = LoadError {
            type_name: tree.type_name().to_string(),
            strict: options.strict,
            missing_keys: missing,
            unexpected_keys: unexpected,
            mismatched_keys: mismatched,
            undefined_keys: undefined,
            messages,
            hints,
        };
        return Plan {
            copies: Vec::new(),
            report: IncompatibleKeys::default(),
            error: Some(error),
        };
    }
    Plan {
        copies,
        report: IncompatibleKeys {
            missing_keys: missing,
            unexpected_keys: unexpected,
            mismatched_keys: mismatched,
        },
        error: None,
    }
}

/// BatchNorm's rule (`_NormBase._load_from_state_dict` in PyTorch 2.11): a checkpoint that
/// predates `num_batches_tracked` (no version for the module, or one below 2) leaves the
/// buffer as it is.
fn keeps_num_batches_tracked(slot: &Slot<'_>, metadata: Option<&Metadata>) -> bool {
    if slot.module_kind != ModuleKind::BatchNorm || slot.local_name != "num_batches_tracked" {
        return false;
    }
    let version = metadata
        .and_then(|m| m.get(slot.module_path))
        .and_then(|m| m.get("version"))
        .and_then(|v| match v {
            Value::Int(i) => Some(*i as f64),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Float(f) => Some(*f),
            _ => None,
        });
    version.is_none_or(|v| v < 2.0)
}

/// PyTorch's unexpected keys, in PyTorch's order. `load_state_dict` visits modules in
/// pre-order; each module reports the keys under its prefix that neither name one of its own
/// tensors nor continue into one of its children, so each key is reported by the deepest
/// module its name reaches. Within a module, `<prefix>_extra_state` comes first (none of
/// these modules has extra state), then the others in the state dict's order.
fn unexpected_keys(tree: &ModuleTree, sd: &impl SourceDict) -> Vec<String> {
    const EXTRA_STATE: &str = "_extra_state";
    let mut found: Vec<(&str, bool, usize)> = Vec::new();
    for position in 0..sd.entry_count() {
        let key = sd.key_at(position);
        // A key of the model's is never unexpected (its modules all exist).
        if tree.contains_key(key) {
            continue;
        }
        let mut module = "";
        let mut start = 0;
        loop {
            let rest = &key[start..];
            match rest.find('.') {
                None => {
                    if rest == EXTRA_STATE {
                        found.push((module, true, position));
                    } else if !tree.contains_key(key) {
                        found.push((module, false, position));
                    }
                    break;
                }
                Some(dot) => {
                    let child = &key[..start + dot];
                    if tree.has_module(child) {
                        module = child;
                        start += dot + 1;
                    } else {
                        found.push((module, false, position));
                        break;
                    }
                }
            }
        }
    }
    if found.is_empty() {
        return Vec::new();
    }
    let ranks = tree.module_ranks();
    let mut ranked: Vec<(usize, bool, usize)> = found
        .into_iter()
        .map(|(module, extra, position)| (ranks[module], !extra, position))
        .collect();
    ranked.sort_unstable();
    ranked
        .into_iter()
        .map(|(_, _, position)| sd.key_at(position).to_string())
        .collect()
}

/// Modules that look like a classifier head, for hints: the last module holding a 2-D
/// `weight`, and any module named `fc`, `linear`, `head` or `classifier`.
fn head_modules(tree: &ModuleTree) -> Vec<&str> {
    const HEAD_NAMES: [&str; 4] = ["fc", "linear", "head", "classifier"];
    let mut heads: Vec<&str> = Vec::new();
    let mut last_linear = None;
    for slot in tree.slots() {
        if slot.local_name == "weight" && slot.tensor.dim() == 2 {
            last_linear = Some(slot.module_path);
        }
        let name = slot.module_path.rsplit('.').next().unwrap_or("");
        if HEAD_NAMES.contains(&name) && !heads.contains(&slot.module_path) {
            heads.push(slot.module_path);
        }
    }
    if let Some(last) = last_linear {
        if !heads.contains(&last) {
            heads.push(last);
        }
    }
    heads
}

/// Copies every checked value of a state dict into the model, without autograd.
fn commit(copies: &[PlannedCopy<'_>], sd: &StateDict) -> Result<(), Error> {
    let _no_grad = tch::no_grad_guard();
    for c in copies {
        let (_, src) = sd.get_index(c.src).expect("planned from this state dict");
        copy_into(c.dst, src, c.squeeze).map_err(|source| Error::Copy {
            key: c.key.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// `dst.copy_(src)`, converting dtype and device; `squeeze` loads a `[1]` into a 0-dim.
pub(crate) fn copy_into(dst: &Tensor, src: &Tensor, squeeze: bool) -> Result<(), tch::TchError> {
    let mut dst = dst.shallow_clone();
    if squeeze {
        dst.f_copy_(&src.f_reshape([])?)
    } else {
        dst.f_copy_(src)
    }
}
