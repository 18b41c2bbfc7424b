//! What `load_state_dict` reports: [`IncompatibleKeys`] when it loads, [`LoadError`] when it
//! refuses. Both are data first (lists a caller can match on) and print as PyTorch prints
//! them.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::pyfmt::{self, TorchSize};

/// A key whose tensor has a different shape in the checkpoint than in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The state-dict key.
    pub key: String,
    /// The shape in the checkpoint (the state dict being loaded).
    pub checkpoint_shape: Vec<i64>,
    /// The shape in the model.
    pub model_shape: Vec<i64>,
}

/// PyTorch's line: `size mismatch for linear.weight: copying a param with shape
/// torch.Size([100, 2048]) from checkpoint, the shape in current model is
/// torch.Size([10, 2048]).`
impl fmt::Display for ShapeMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "size mismatch for {}: copying a param with shape {} from checkpoint, \
             the shape in current model is {}.",
            self.key,
            TorchSize(&self.checkpoint_shape),
            TorchSize(&self.model_shape)
        )
    }
}

/// What a successful `load_state_dict` did not load: PyTorch's `_IncompatibleKeys`.
///
/// `missing_keys` are in the model and not in the state dict, in the model's `state_dict()`
/// order; `unexpected_keys` are in the state dict and not in the model, in PyTorch's order
/// (module by module, in pre-order). Both are empty after a strict load. `mismatched_keys`
/// is this crate's addition: the keys left as they were because of
/// [`LoadOptions::skip_mismatched`](crate::LoadOptions::skip_mismatched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IncompatibleKeys {
    /// Keys of the model that the state dict lacks.
    pub missing_keys: Vec<String>,
    /// Keys of the state dict that the model lacks.
    pub unexpected_keys: Vec<String>,
    /// Keys skipped because their shapes differ (only with `skip_mismatched`).
    pub mismatched_keys: Vec<ShapeMismatch>,
    /// This crate's addition: the checkpoint's BatchNorm counters (`num_batches_tracked`)
    /// consumed by a model whose BatchNorm has none (a tch model; see
    /// [`ModuleTree::drop_batch_norm_counters`](crate::ModuleTree::drop_batch_norm_counters)).
    /// They are not part of PyTorch's text, and [`is_empty`](Self::is_empty) ignores them.
    pub dropped_keys: Vec<String>,
}

impl IncompatibleKeys {
    /// Whether every key matched: nothing missing, unexpected or skipped.
    pub fn is_empty(&self) -> bool {
        self.missing_keys.is_empty()
            && self.unexpected_keys.is_empty()
            && self.mismatched_keys.is_empty()
    }
}

/// As PyTorch prints it: `<All keys matched successfully>`, or
/// `_IncompatibleKeys(missing_keys=['a'], unexpected_keys=['b'])`. Skipped mismatches, which
/// PyTorch has no field for, are added as `mismatched_keys=[('key', torch.Size([..]),
/// torch.Size([..]))]` (checkpoint shape, then model shape) when there are any.
impl fmt::Display for IncompatibleKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("<All keys matched successfully>");
        }
        write!(
            f,
            "_IncompatibleKeys(missing_keys={}, unexpected_keys={}",
            pyfmt::repr_str_list(&self.missing_keys),
            pyfmt::repr_str_list(&self.unexpected_keys)
        )?;
        if !self.mismatched_keys.is_empty() {
            f.write_str(", mismatched_keys=[")?;
            for (i, m) in self.mismatched_keys.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(
                    f,
                    "({}, {}, {})",
                    pyfmt::repr_str(&m.key),
                    TorchSize(&m.checkpoint_shape),
                    TorchSize(&m.model_shape)
                )?;
            }
            f.write_str("]")?;
        }
        f.write_str(")")
    }
}

/// Why `load_state_dict` refused a state dict. The model is unchanged.
///
/// The lists are always filled, whatever `strict` was; the message, like PyTorch's, names
/// missing and unexpected keys only when `strict` is set. `Display` prints
/// [`pytorch_message`](Self::pytorch_message), then one line per hint.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoadError {
    /// The model's type name, as the message's header prints it.
    pub type_name: String,
    /// Whether the load was strict.
    pub strict: bool,
    /// Keys of the model that the state dict lacks.
    pub missing_keys: Vec<String>,
    /// Keys of the state dict that the model lacks.
    pub unexpected_keys: Vec<String>,
    /// Keys whose shapes differ.
    pub mismatched_keys: Vec<ShapeMismatch>,
    /// Keys of the state dict whose tensor is undefined (`Tensor::new()`), which PyTorch
    /// sees as a value that is not a tensor.
    pub undefined_keys: Vec<String>,
    /// PyTorch's per-key error lines in the order PyTorch produces them.
    pub(crate) messages: Vec<String>,
    /// Advice beyond PyTorch's text.
    pub hints: Vec<String>,
}

impl LoadError {
    /// The message PyTorch 2.11's `load_state_dict` raises for the same model and state dict,
    /// character for character: `Error(s) in loading state_dict for ResNet:\n\t...`.
    pub fn pytorch_message(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        if self.strict {
            if !self.missing_keys.is_empty() {
                lines.push(format!(
                    "Missing key(s) in state_dict: {}. ",
                    quoted_list(&self.missing_keys)
                ));
            }
            if !self.unexpected_keys.is_empty() {
                lines.push(format!(
                    "Unexpected key(s) in state_dict: {}. ",
                    quoted_list(&self.unexpected_keys)
                ));
            }
        }
        lines.extend(self.messages.iter().cloned());
        format!(
            "Error(s) in loading state_dict for {}:\n\t{}",
            self.type_name,
            lines.join("\n\t")
        )
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pytorch_message())?;
        for hint in &self.hints {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

fn quoted_list(keys: &[String]) -> String {
    let mut out = String::new();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('"');
        out.push_str(k);
        out.push('"');
    }
    out
}

/// Prefixes whose origin a hint can name.
fn prefix_origin(prefix: &str) -> &'static str {
    match prefix {
        "module." => " (added by DataParallel / DistributedDataParallel)",
        "_orig_mod." => " (added by torch.compile)",
        _ => "",
    }
}

/// The hints for a refused or partial load, in the order they are printed.
///
/// `head_modules` are the modules that look like a classifier head (see `load.rs`).
pub(crate) fn hints(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[ShapeMismatch],
    head_modules: &[&str],
) -> Vec<String> {
    let mut hints = Vec::new();
    let mut explained: HashSet<&str> = HashSet::new();
    if let Some((hint, covered)) = prefix_hint(missing, unexpected) {
        hints.push(hint);
        explained.extend(covered);
    }
    hints.extend(rename_hints(missing, unexpected, &explained));
    hints.extend(head_hints(mismatched, head_modules));
    hints
}

/// When the unexpected keys are the missing keys with a prefix (or the other way round).
fn prefix_hint<'a>(
    missing: &'a [String],
    unexpected: &'a [String],
) -> Option<(String, Vec<&'a str>)> {
    if missing.is_empty() || unexpected.is_empty() {
        return None;
    }
    let found = |longer: &'a [String], shorter: &'a [String]| -> Option<(&'a str, Vec<&'a str>)> {
        let short: HashSet<&str> = shorter.iter().map(String::as_str).collect();
        let prefix = longer.iter().find_map(|k| {
            k.match_indices('.')
                .map(|(i, _)| i + 1)
                .find(|&i| short.contains(&k[i..]))
                .map(|i| &k[..i])
        })?;
        let covered: Vec<&str> = longer
            .iter()
            .filter(|k| k.starts_with(prefix) && short.contains(&k[prefix.len()..]))
            .map(String::as_str)
            .collect();
        // At least half of the shorter side must be explained by the prefix.
        (covered.len() * 2 >= shorter.len()).then_some((prefix, covered))
    };
    if let Some((prefix, covered)) = found(unexpected, missing) {
        let hint = format!(
            "the checkpoint's keys carry the prefix \"{prefix}\"{} that the model's keys lack; \
             strip it first: state_dict.strip_prefix(\"{prefix}\")",
            prefix_origin(prefix)
        );
        let stripped = covered.iter().map(|k| &k[prefix.len()..]);
        let all = covered.iter().copied().chain(stripped).collect();
        return Some((hint, all));
    }
    if let Some((prefix, covered)) = found(missing, unexpected) {
        let hint = format!(
            "the model's keys carry the prefix \"{prefix}\"{} that the checkpoint's keys lack; \
             add it first: state_dict.add_prefix(\"{prefix}\")",
            prefix_origin(prefix)
        );
        let stripped = covered.iter().map(|k| &k[prefix.len()..]);
        let all = covered.iter().copied().chain(stripped).collect();
        return Some((hint, all));
    }
    None
}

/// When an unexpected key is a missing one with one module renamed (`fc.weight` for
/// `linear.weight`): one hint per renamed module path.
fn rename_hints(
    missing: &[String],
    unexpected: &[String],
    explained: &HashSet<&str>,
) -> Vec<String> {
    const MAX_HINTS: usize = 3;
    let mut used: HashSet<&str> = HashSet::new();
    // (from prefix, to prefix) -> pairs, in the order the missing keys come.
    type Group<'a> = ((String, String), Vec<(&'a str, &'a str)>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut group_index: HashMap<(String, String), usize> = HashMap::new();
    for m in missing.iter().filter(|m| !explained.contains(m.as_str())) {
        let ms: Vec<&str> = m.split('.').collect();
        let candidate = unexpected
            .iter()
            .filter(|u| !explained.contains(u.as_str()) && !used.contains(u.as_str()))
            .find_map(|u| {
                let us: Vec<&str> = u.split('.').collect();
                if us.len() != ms.len() || us.last() != ms.last() {
                    return None;
                }
                let mut diffs = us.iter().zip(&ms).enumerate().filter(|(_, (a, b))| a != b);
                let (j, _) = diffs.next()?;
                diffs.next().is_none().then_some((u.as_str(), j))
            });
        if let Some((u, j)) = candidate {
            used.insert(u);
            let from = format!(
                "{}.",
                u.split('.').take(j + 1).collect::<Vec<_>>().join(".")
            );
            let to = format!("{}.", ms[..=j].join("."));
            let id = *group_index
                .entry((from.clone(), to.clone()))
                .or_insert_with(|| {
                    groups.push(((from, to), Vec::new()));
                    groups.len() - 1
                });
            groups[id].1.push((u, m.as_str()));
        }
    }
    groups
        .into_iter()
        .take(MAX_HINTS)
        .map(|((from, to), pairs)| {
            let quote = |keys: Vec<&str>| {
                keys.iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "the checkpoint's {} look{} like the model's missing {}; rename them first: \
                 state_dict.rename_prefix(\"{from}\", \"{to}\")",
                quote(pairs.iter().map(|p| p.0).collect()),
                if pairs.len() == 1 { "s" } else { "" },
                quote(pairs.iter().map(|p| p.1).collect()),
            )
        })
        .collect()
}

/// When a classifier head's class count differs: name both fixes.
fn head_hints(mismatched: &[ShapeMismatch], head_modules: &[&str]) -> Vec<String> {
    let mut hints = Vec::new();
    for head in head_modules {
        let weight_key = format!("{head}.weight");
        let Some(weight) = mismatched.iter().find(|m| m.key == weight_key) else {
            continue;
        };
        let (ckpt, model) = (&weight.checkpoint_shape, &weight.model_shape);
        let is_head_change = ckpt.len() == 2 && model.len() == 2 && ckpt[1] == model[1];
        if !is_head_change {
            continue;
        }
        let keys: Vec<&str> = mismatched
            .iter()
            .filter(|m| m.key.strip_prefix(head).is_some_and(|r| r.starts_with('.')))
            .map(|m| m.key.as_str())
            .collect();
        let pops: String = keys
            .iter()
            .map(|k| format!("state_dict.pop(\"{k}\"); "))
            .collect();
        hints.push(format!(
            "\"{head}\" looks like a classifier head: {} classes in the checkpoint, {} in the \
             model. To fine-tune, either drop the head and load the rest: {pops}\
             load_state_dict(&model, &state_dict, false); or build the model with {} classes, \
             load strictly, then replace the head with a new {}-class Linear \
             (replace_head(&mut model, {}))",
            ckpt[0], model[0], ckpt[0], model[0], model[0]
        ));
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn prefix_hint_names_the_call_that_strips_it() {
        let h = hints(
            &s(&["fc.weight", "fc.bias"]),
            &s(&["module.fc.weight", "module.fc.bias"]),
            &[],
            &[],
        );
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].contains("strip_prefix(\"module.\")"), "{}", h[0]);
        assert!(h[0].contains("DataParallel"));
        let h = hints(&s(&["_orig_mod.fc.weight"]), &s(&["fc.weight"]), &[], &[]);
        assert!(h[0].contains("add_prefix(\"_orig_mod.\")"), "{h:?}");
        assert!(h[0].contains("torch.compile"));
    }

    #[test]
    fn rename_hint_pairs_close_keys() {
        let h = hints(
            &s(&["linear.weight", "linear.bias", "layer1.0.bn.weight"]),
            &s(&["fc.weight", "fc.bias", "extra"]),
            &[],
            &[],
        );
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].contains("\"fc.weight\", \"fc.bias\" look like the model's missing \"linear.weight\", \"linear.bias\""), "{}", h[0]);
        assert!(h[0].contains("rename_prefix(\"fc.\", \"linear.\")"));
        // Different leaf names or depths are not close.
        assert!(hints(
            &s(&["linear.weight"]),
            &s(&["fc.bias", "a.b.weight"]),
            &[],
            &[]
        )
        .is_empty());
    }

    #[test]
    fn head_hint_needs_a_class_count_change_on_a_head() {
        let mm = |k: &str, c: Vec<i64>, m: Vec<i64>| ShapeMismatch {
            key: k.into(),
            checkpoint_shape: c,
            model_shape: m,
        };
        let head = vec![
            mm("linear.weight", vec![100, 2048], vec![10, 2048]),
            mm("linear.bias", vec![100], vec![10]),
        ];
        let h = hints(&[], &[], &head, &["linear"]);
        assert_eq!(h.len(), 1);
        assert!(
            h[0].contains("100 classes in the checkpoint, 10 in the model"),
            "{}",
            h[0]
        );
        assert!(
            h[0].contains("state_dict.pop(\"linear.weight\"); state_dict.pop(\"linear.bias\");")
        );
        assert!(h[0].contains("replace_head(&mut model, 10)"));
        // Not a head: no hint. A change of in_features: no hint.
        assert!(hints(&[], &[], &head, &[]).is_empty());
        let wide = vec![mm("linear.weight", vec![10, 512], vec![10, 2048])];
        assert!(hints(&[], &[], &wide, &["linear"]).is_empty());
    }
}
