//! Plan: match a state dict's keys against the model and build the whole report with
//! PyTorch's rules, touching nothing. The plan is the same for every source (a [`StateDict`]
//! in memory, or a [`LazyStateDict`] whose tensors are still in the file): it needs only keys,
//! shapes and `_metadata`.
//!
//! [`StateDict`]: crate::StateDict
//! [`LazyStateDict`]: crate::LazyStateDict

use tch::Tensor;

use super::source::SourceDict;
use super::LoadOptions;
use crate::module_tree::{ModuleKind, ModuleTree, Slot};
use crate::report::{self, IncompatibleKeys, LoadError, ShapeMismatch};
use crate::value::{Metadata, Value};

/// A checked copy: the model's tensor and the source entry to copy into it.
pub(crate) struct PlannedCopy<'a> {
    pub key: &'a str,
    pub dst: &'a Tensor,
    /// The entry's position in the source.
    pub src: usize,
    /// PyTorch 0.3 saved scalars as `[1]` tensors; they load into 0-dim tensors.
    pub squeeze: bool,
}

/// A load that PyTorch's rules accept: the copies to make, and the report to return.
pub(crate) struct Plan<'a> {
    pub copies: Vec<PlannedCopy<'a>>,
    pub report: IncompatibleKeys,
}

/// Builds the report and the list of copies without touching the model; the error PyTorch
/// would raise, with its hints, when its rules refuse the load.
pub(crate) fn plan<'a, D: SourceDict + ?Sized>(
    tree: &'a ModuleTree,
    sd: &D,
    options: &LoadOptions,
) -> Result<Plan<'a>, Box<LoadError>> {
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

    // A tch model's BatchNorms consume the checkpoint's counters (see
    // `ModuleTree::drop_batch_norm_counters`).
    let dropped = if tree.drops_batch_norm_counters() && found < sd.entry_count() {
        dropped_counters(tree, sd)
    } else {
        Vec::new()
    };
    // Every key of the state dict matched one of the model's: nothing is unexpected.
    let unexpected = if found + dropped.len() == sd.entry_count() {
        Vec::new()
    } else {
        unexpected_keys(tree, sd, &dropped)
    };
    let refused =
        !messages.is_empty() || (options.strict && (!missing.is_empty() || !unexpected.is_empty()));
    if refused {
        let heads = head_modules(tree);
        // Whether the model has any key under a prefix: told exactly, so that the hint for
        // keys under a submodule the model lacks (inception's `AuxLogits.`) never guesses.
        let has_prefix = |p: &str| tree.slots().any(|s| s.key.starts_with(p));
        let hints = report::hints_for_model(
            &missing,
            &unexpected,
            &mismatched,
            &heads,
            Some(&has_prefix),
        );
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
        return Err(Box::new(error));
    }
    Ok(Plan {
        copies,
        report: IncompatibleKeys {
            missing_keys: missing,
            unexpected_keys: unexpected,
            mismatched_keys: mismatched,
            dropped_keys: dropped
                .into_iter()
                .map(|p| sd.key_at(p).to_string())
                .collect(),
        },
    })
}

/// The positions of the checkpoint's `P.num_batches_tracked` that a tch BatchNorm consumes:
/// the model has `P.running_mean` and `P.running_var` but no `P.num_batches_tracked`.
fn dropped_counters<D: SourceDict + ?Sized>(tree: &ModuleTree, sd: &D) -> Vec<usize> {
    const COUNTER: &str = "num_batches_tracked";
    (0..sd.entry_count())
        .filter(|&position| {
            let key = sd.key_at(position);
            let Some(module) = key.strip_suffix(COUNTER) else {
                return false;
            };
            if !(module.is_empty() || module.ends_with('.')) || tree.contains_key(key) {
                return false;
            }
            tree.contains_key(&format!("{module}running_mean"))
                && tree.contains_key(&format!("{module}running_var"))
        })
        .collect()
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
fn unexpected_keys<D: SourceDict + ?Sized>(
    tree: &ModuleTree,
    sd: &D,
    dropped: &[usize],
) -> Vec<String> {
    const EXTRA_STATE: &str = "_extra_state";
    let mut found: Vec<(&str, bool, usize)> = Vec::new();
    for position in 0..sd.entry_count() {
        let key = sd.key_at(position);
        // A key of the model's is never unexpected (its modules all exist); neither is a
        // counter a tch BatchNorm consumed.
        if tree.contains_key(key) || dropped.binary_search(&position).is_ok() {
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
