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
/// `head_modules` are the modules that look like a classifier head (see `load.rs`). Loads call
/// [`hints_for_model`], which knows the model's keys; this is the tests' way in.
#[cfg(test)]
pub(crate) fn hints(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[ShapeMismatch],
    head_modules: &[&str],
) -> Vec<String> {
    hints_for_model(missing, unexpected, mismatched, head_modules, None)
}

/// [`hints`], told by `model_has_prefix` whether any of the model's keys starts with a
/// prefix (`"AuxLogits."`). Without it, the hint for unexpected keys under a submodule the
/// model lacks judges from the keys it has: the model has that submodule when a missing key
/// lies under it, and is taken to have it when the unexpected keys under it are all tensors
/// of it (not of its own submodules), the common case of an extra buffer in a module.
pub(crate) fn hints_for_model(
    missing: &[String],
    unexpected: &[String],
    mismatched: &[ShapeMismatch],
    head_modules: &[&str],
    model_has_prefix: Option<&dyn Fn(&str) -> bool>,
) -> Vec<String> {
    let mut hints = Vec::new();
    let mut explained: HashSet<&str> = HashSet::new();
    if let Some((hint, covered)) = prefix_hint(missing, unexpected) {
        hints.push(hint);
        explained.extend(covered);
    }
    if let Some((hint, covered)) = legacy_densenet_hint(missing, unexpected, &explained) {
        hints.push(hint);
        explained.extend(covered);
    }
    let (renames, renamed) = rename_hints(missing, unexpected, &explained);
    hints.extend(renames);
    explained.extend(renamed);
    hints.extend(absent_submodule_hint(
        missing,
        unexpected,
        &explained,
        model_has_prefix,
    ));
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
/// `linear.weight`): one hint per renamed module path, and the unexpected keys paired.
fn rename_hints<'a>(
    missing: &'a [String],
    unexpected: &'a [String],
    explained: &HashSet<&str>,
) -> (Vec<String>, Vec<&'a str>) {
    const MAX_HINTS: usize = 3;
    let mut used: HashSet<&str> = HashSet::new();
    // (from prefix, to prefix) -> pairs, in the order the missing keys come.
    type Group<'a> = ((String, String), Vec<(&'a str, &'a str)>);
    let mut groups: Vec<Group<'a>> = Vec::new();
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
    let hinted = groups.iter().take(MAX_HINTS);
    let paired: Vec<&'a str> = hinted
        .flat_map(|(_, pairs)| pairs.iter().map(|p| p.0))
        .collect();
    let hints = groups
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
        .collect();
    (hints, paired)
}

/// The renames of torchvision's `densenet._load_state_dict`, as code a hint can print and as
/// the function that decides whether to print it.
const LEGACY_DENSENET_RENAME: &str = "state_dict.rename(|k| k.replace(\".norm.1.\", \".norm1.\")\
     .replace(\".relu.1.\", \".relu1.\").replace(\".conv.1.\", \".conv1.\")\
     .replace(\".norm.2.\", \".norm2.\").replace(\".relu.2.\", \".relu2.\")\
     .replace(\".conv.2.\", \".conv2.\"))";

fn rename_legacy_densenet(key: &str) -> String {
    key.replace(".norm.1.", ".norm1.")
        .replace(".relu.1.", ".relu1.")
        .replace(".conv.1.", ".conv1.")
        .replace(".norm.2.", ".norm2.")
        .replace(".relu.2.", ".relu2.")
        .replace(".conv.2.", ".conv2.")
}

/// When unexpected keys are missing ones in the layout of torchvision's published DenseNet
/// files (`features.denseblock1.denselayer1.norm.1.weight` for `...norm1.weight`: names from
/// before PyTorch forbade dots in module names, which torchvision renames as it loads them).
fn legacy_densenet_hint<'a>(
    missing: &'a [String],
    unexpected: &'a [String],
    explained: &HashSet<&str>,
) -> Option<(String, Vec<&'a str>)> {
    let missing_set: HashSet<&str> = missing.iter().map(String::as_str).collect();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for u in unexpected
        .iter()
        .filter(|u| !explained.contains(u.as_str()))
    {
        let renamed = rename_legacy_densenet(u);
        if renamed != *u {
            if let Some(&m) = missing_set.get(renamed.as_str()) {
                pairs.push((u, m));
            }
        }
    }
    let &(old, new) = pairs.first()?;
    let hint = format!(
        "the checkpoint's keys use the names of torchvision's published DenseNet files ({} \
         keys, such as \"{old}\" for the model's \"{new}\"), which torchvision renames as it \
         loads them; rename them first: {LEGACY_DENSENET_RENAME}",
        pairs.len()
    );
    let covered = pairs.iter().flat_map(|&(u, m)| [u, m]).collect();
    Some((hint, covered))
}

/// When the unexpected keys all lie under one submodule that the model does not have
/// (torchvision's `AuxLogits.` for tch's inception_v3): the `retain` that drops it.
fn absent_submodule_hint(
    missing: &[String],
    unexpected: &[String],
    explained: &HashSet<&str>,
    model_has_prefix: Option<&dyn Fn(&str) -> bool>,
) -> Option<String> {
    let keys: Vec<&str> = unexpected
        .iter()
        .map(String::as_str)
        .filter(|k| !explained.contains(k))
        .collect();
    // The deepest module every key lies under: "AuxLogits." for "AuxLogits.fc.bias" and
    // "AuxLogits.conv0.conv.weight".
    let first = keys.first()?;
    let mut prefix = &first[..first.rfind('.')? + 1];
    for k in &keys[1..] {
        while !k.starts_with(prefix) {
            prefix = &prefix[..prefix[..prefix.len() - 1].rfind('.')? + 1];
        }
    }
    let absent = match model_has_prefix {
        Some(has) => !has(prefix),
        None => {
            !missing.iter().any(|m| m.starts_with(prefix))
                && keys.iter().any(|k| k[prefix.len()..].contains('.'))
        }
    };
    absent.then(|| {
        format!(
            "the unexpected keys all lie under \"{prefix}\", a submodule the model does not \
             have ({} key{}); if the model is not meant to have it (an auxiliary head, say), \
             drop it first: state_dict.retain(|k, _| !k.starts_with(\"{prefix}\"))",
            keys.len(),
            if keys.len() == 1 { "" } else { "s" }
        )
    })
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
    fn absent_submodule_hint_names_the_prefix_and_the_retain_that_drops_it() {
        let aux = s(&[
            "AuxLogits.conv0.conv.weight",
            "AuxLogits.conv0.bn.weight",
            "AuxLogits.fc.weight",
            "AuxLogits.fc.bias",
        ]);
        let h = hints(&[], &aux, &[], &[]);
        assert_eq!(
            h,
            [
                "the unexpected keys all lie under \"AuxLogits.\", a submodule the model does \
              not have (4 keys); if the model is not meant to have it (an auxiliary head, \
              say), drop it first: state_dict.retain(|k, _| !k.starts_with(\"AuxLogits.\"))"
            ]
        );
        // The deepest module they share.
        let h = hints(&[], &s(&["head.aux.a.weight", "head.aux.b.bias"]), &[], &[]);
        assert!(h[0].contains("!k.starts_with(\"head.aux.\")"), "{h:?}");
        // Not one module: no hint.
        assert!(hints(&[], &s(&["aux.a.weight", "extra.b.weight"]), &[], &[]).is_empty());
        // A missing key under it: the model has that module.
        let missing = s(&["AuxLogits.fc.weight"]);
        let unexpected = s(&["AuxLogits.conv0.conv.weight", "AuxLogits.conv1.conv.weight"]);
        assert!(hints(&missing, &unexpected, &[], &[]).is_empty());
        // Only tensors of the module itself, the common case of an extra buffer in a module
        // the model has: no hint, unless the model's keys say the module is absent.
        let extra = s(&["fc.extra_weight", "fc.extra_bias"]);
        assert!(hints(&[], &extra, &[], &[]).is_empty());
        let absent = |_: &str| false;
        let h = hints_for_model(&[], &extra, &[], &[], Some(&absent));
        assert!(h[0].contains("under \"fc.\""), "{h:?}");
        let present = |p: &str| p == "AuxLogits.";
        assert!(hints_for_model(&[], &aux, &[], &[], Some(&present)).is_empty());
    }

    #[test]
    fn legacy_densenet_hint_gives_torchvisions_renames() {
        let layer = "features.denseblock1.denselayer1";
        let missing = s(&[
            &format!("{layer}.norm1.weight"),
            &format!("{layer}.conv1.weight"),
            &format!("{layer}.norm2.running_var"),
            &format!("{layer}.conv2.weight"),
        ]);
        let unexpected = s(&[
            &format!("{layer}.norm.1.weight"),
            &format!("{layer}.conv.1.weight"),
            &format!("{layer}.norm.2.running_var"),
            &format!("{layer}.conv.2.weight"),
        ]);
        let h = hints(&missing, &unexpected, &[], &[]);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(
            h[0],
            format!(
                "the checkpoint's keys use the names of torchvision's published DenseNet files \
                 (4 keys, such as \"{layer}.norm.1.weight\" for the model's \
                 \"{layer}.norm1.weight\"), which torchvision renames as it loads them; \
                 rename them first: state_dict.rename(|k| k.replace(\".norm.1.\", \
                 \".norm1.\").replace(\".relu.1.\", \".relu1.\").replace(\".conv.1.\", \
                 \".conv1.\").replace(\".norm.2.\", \".norm2.\").replace(\".relu.2.\", \
                 \".relu2.\").replace(\".conv.2.\", \".conv2.\"))"
            )
        );
        // What the hint prints is what decides it.
        let renamed: Vec<String> = unexpected
            .iter()
            .map(|k| rename_legacy_densenet(k))
            .collect();
        assert_eq!(renamed, missing);
        // A legacy-looking key with no missing counterpart: no hint.
        assert!(hints(&[], &unexpected[..1], &[], &[]).is_empty());
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
