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
//!
//! The same plan and commit serve every source ([`source`]): a [`StateDict`] in memory, or a
//! [`LazyStateDict`](crate::LazyStateDict) whose entries are byte ranges in files, read
//! straight into the model's tensors ([`direct`], [`convert`], [`commit`]). A
//! [`Checkpoint`]'s `load_into` is a lazy state dict loaded this way.
//!
//! The rules live in [`plan`]; the writing in [`commit`].

mod cast;
mod commit;
mod convert;
mod direct;
mod plan;
mod route;
mod source;
mod stage;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;

use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::module_tree::{ModuleTree, StateDictModule};
use crate::report::IncompatibleKeys;
use crate::state_dict::StateDict;
use crate::value::{Metadata, Value};
use commit::Tracker;
use plan::plan;
pub use source::StateDictSource;
use source::{Any, Entry, SourceDict};

/// How [`load_state_dict_with`] loads. Setters cannot fail and name their default.
///
/// ```
/// use tch_state_dict::LoadOptions;
///
/// let options = LoadOptions::new().strict(false).skip_mismatched(true);
/// assert!(!options.is_strict());
/// ```
#[derive(Clone)]
pub struct LoadOptions {
    strict: bool,
    skip_mismatched: bool,
    assign: bool,
    progress: Option<ProgressFn>,
}

/// A progress callback: bytes written into the model so far, bytes in all.
type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            strict: true,
            skip_mismatched: false,
            assign: false,
            progress: None,
        }
    }
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("strict", &self.strict)
            .field("skip_mismatched", &self.skip_mismatched)
            .field("assign", &self.assign)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Two options are equal when their settings are, and they hold the same callback (or none).
impl PartialEq for LoadOptions {
    fn eq(&self, other: &Self) -> bool {
        self.strict == other.strict
            && self.skip_mismatched == other.skip_mismatched
            && self.assign == other.assign
            && match (&self.progress, &other.progress) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for LoadOptions {}

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

    /// PyTorch's `assign` (default `false`): instead of copying values into the model's
    /// tensors, the model's tensors take the checkpoint's tensors themselves, with their
    /// dtype, device and storage (`set_data`): a bf16 checkpoint makes a bf16 model without a
    /// second copy of the weights. `requires_grad` is kept, every module holding the tensor
    /// sees the new value, and the rule of all or nothing holds: every value is read and
    /// checked before the first tensor changes.
    pub fn assign(mut self, assign: bool) -> Self {
        self.assign = assign;
        self
    }

    /// Calls `progress(bytes_done, bytes_total)` as the load writes into the model: from the
    /// load's threads (the reading threads, or a GPU load's copier thread), at most every 4
    /// MiB, with `bytes_done` increasing, and once with `bytes_done == bytes_total` at the end
    /// (default: none).
    pub fn progress(mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Whether the model's tensors take the checkpoint's (`assign=True`).
    pub fn is_assign(&self) -> bool {
        self.assign
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
pub fn load_state_dict<M: StateDictModule + ?Sized, S: StateDictSource + ?Sized>(
    module: &M,
    state_dict: &S,
    strict: bool,
) -> Result<IncompatibleKeys, Error> {
    load_state_dict_with(module, state_dict, &LoadOptions::new().strict(strict))
}

/// [`load_state_dict`] with [`LoadOptions`].
///
/// # Errors
///
/// As [`load_state_dict`].
pub fn load_state_dict_with<M: StateDictModule + ?Sized, S: StateDictSource + ?Sized>(
    module: &M,
    state_dict: &S,
    options: &LoadOptions,
) -> Result<IncompatibleKeys, Error> {
    match state_dict.source().0 {
        Any::Memory(sd) => load(module, sd, options, true),
        Any::Lazy(sd) => load(module, sd, options, true),
    }
}

/// Plans, then commits when `write` and the plan is clean.
fn load<M: StateDictModule + ?Sized, D: SourceDict + ?Sized>(
    module: &M,
    sd: &D,
    options: &LoadOptions,
    write: bool,
) -> Result<IncompatibleKeys, Error> {
    let start = Instant::now();
    let tree = module.module_tree()?;
    let plan = plan(&tree, sd, options).map_err(|e| Error::from(*e))?;
    // An entry that would be loaded but is of a dtype this crate cannot read (a uint64
    // buffer) is refused before anything is written; left out (popped, unexpected), it is
    // never read.
    for c in &plan.copies {
        match sd.entry(c.src) {
            Entry::File(file, index) => file.check_readable(index, Some(c.key))?,
            Entry::Chunked(t) => {
                t.check_readable(Some(c.key))?;
            }
            Entry::Memory(_) => {}
        }
    }
    if !write {
        return Ok(plan.report);
    }
    log_report(tree.type_name(), &plan.report);
    let tracker = Tracker::new(&plan.copies, options.progress.as_deref());
    if options.assign {
        commit::assign(&plan.copies, sd)?;
    } else {
        commit::commit(&plan.copies, sd, &tracker)?;
    }
    tracker.finish();
    log::debug!(
        "loaded {} tensors into {} in {:.1} ms",
        plan.copies.len(),
        tree.type_name(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(plan.report)
}

/// Logs what a load leaves out: missing, unexpected and skipped keys at `warn` (a non-strict
/// load that drops half the model should not be silent), consumed BatchNorm counters at
/// `info`. Long lists are cut to their first keys.
fn log_report(type_name: &str, report: &IncompatibleKeys) {
    fn summary<S: AsRef<str>>(keys: &[S]) -> String {
        const SHOWN: usize = 8;
        let shown: Vec<&str> = keys.iter().take(SHOWN).map(AsRef::as_ref).collect();
        let more = keys.len().saturating_sub(SHOWN);
        if more == 0 {
            shown.join(", ")
        } else {
            format!("{}, and {more} more", shown.join(", "))
        }
    }
    if !report.missing_keys.is_empty() {
        log::warn!(
            "{type_name}: {} key(s) of the model not in the state dict, left as they are: {}",
            report.missing_keys.len(),
            summary(&report.missing_keys)
        );
    }
    if !report.unexpected_keys.is_empty() {
        log::warn!(
            "{type_name}: {} key(s) of the state dict not used by the model: {}",
            report.unexpected_keys.len(),
            summary(&report.unexpected_keys)
        );
    }
    if !report.mismatched_keys.is_empty() {
        let keys: Vec<&str> = report
            .mismatched_keys
            .iter()
            .map(|m| m.key.as_str())
            .collect();
        log::warn!(
            "{type_name}: {} key(s) skipped for their shapes, left as they are: {}",
            keys.len(),
            summary(&keys)
        );
    }
    if !report.dropped_keys.is_empty() {
        log::info!(
            "{type_name}: {} BatchNorm counter(s) the model has no buffer for, dropped: {}",
            report.dropped_keys.len(),
            summary(&report.dropped_keys)
        );
    }
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
pub fn check_state_dict<M: StateDictModule + ?Sized, S: StateDictSource + ?Sized>(
    module: &M,
    state_dict: &S,
    options: &LoadOptions,
) -> Result<IncompatibleKeys, Error> {
    match state_dict.source().0 {
        Any::Memory(sd) => load(module, sd, options, false),
        Any::Lazy(sd) => load(module, sd, options, false),
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

impl Checkpoint<'_> {
    /// `model.load_state_dict(torch.load(path))` in one step, at memory speed: the state
    /// dict at the top of the file is checked against the model with `load_state_dict`'s
    /// rules and words, then each tensor's bytes are read from the file straight into the
    /// model's tensor (or, where dtype, device or byte order differ, converted in chunks as
    /// they are read). Nothing is read when the check fails, and the model is then unchanged.
    ///
    /// The same as `load_state_dict(module, &self.lazy_state_dict()?, ..)`.
    ///
    /// # Errors
    ///
    /// As [`load_state_dict`] and [`state_dict`](Self::state_dict). A file that changed
    /// since it was opened gives [`Error::FileChanged`] before anything is written; an I/O
    /// error during the copy itself ([`Error::Io`]), or a GPU out of memory for the bytes in
    /// flight ([`Error::Copy`]), can leave the model partly written.
    pub fn load_into<M: StateDictModule + ?Sized>(
        &self,
        module: &M,
        options: &LoadOptions,
    ) -> Result<IncompatibleKeys, Error> {
        load_state_dict_with(module, &self.lazy_state_dict()?, options)
    }

    /// [`load_into`](Self::load_into) of the state dict under `key` of the top-level dict:
    /// `model.load_state_dict(torch.load(path)[key])`.
    ///
    /// # Errors
    ///
    /// As [`load_into`](Self::load_into) and [`state_dict_at`](Self::state_dict_at).
    pub fn load_into_at<M: StateDictModule + ?Sized>(
        &self,
        key: &str,
        module: &M,
        options: &LoadOptions,
    ) -> Result<IncompatibleKeys, Error> {
        load_state_dict_with(module, &self.lazy_state_dict_at(key)?, options)
    }
}

/// `model.load_state_dict(torch.load(path))`: opens the checkpoint at `path` and loads the
/// state dict at its top into `module`, reading each tensor straight into the model (see
/// [`Checkpoint::load_into`]).
///
/// # Errors
///
/// As [`Checkpoint::open`] and [`Checkpoint::load_into`].
pub fn load_checkpoint<M: StateDictModule + ?Sized>(
    module: &M,
    path: impl AsRef<Path>,
    strict: bool,
) -> Result<IncompatibleKeys, Error> {
    Checkpoint::open(path)?.load_into(module, &LoadOptions::new().strict(strict))
}
