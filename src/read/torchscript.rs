//! TorchScript archives (`torch.jit.save`, and tch's `VarStore::save` and
//! `Tensor::save_multi`, which write one through libtorch's `OutputArchive`): a torch zip
//! whose `data.pkl` holds the module objects, with each module's parameters, buffers and
//! submodules as attributes, and whose `code/` holds the modules' classes as TorchScript
//! source.
//!
//! # Design note
//!
//! `torch.jit.load` compiles and runs that source (it had a remote-code CVE,
//! CVE-2025-32434). This crate never does: `data.pkl` goes through the same pickle machine as
//! any checkpoint, its module objects staying opaque objects, and only two lines of each
//! class's source are read, as text: the list literals
//!
//! ```text
//! class Linear(Module):
//!   __parameters__ = ["weight", "bias", ]
//!   __buffers__ = []
//! ```
//!
//! which say which tensor attributes are parameters and which are buffers (the rest, plain
//! tensor attributes, are not in `state_dict()`). A class is found from the global that
//! names it: `__torch__.torch.nn.modules.linear.___torch_mangle_0.Linear` is `class Linear`
//! of `code/__torch__/torch/nn/modules/linear/___torch_mangle_0.py`.

use std::collections::HashMap;

/// What a TorchScript class declares: whether it is a module, and its parameters and
/// buffers by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ScriptClass {
    pub is_module: bool,
    pub parameters: Vec<String>,
    pub buffers: Vec<String>,
}

/// The classes of an archive's `code/`, by qualified name (`__torch__.M`).
pub(crate) type ScriptClasses = HashMap<String, ScriptClass>;

/// The Python module a code record defines: `code/__torch__/torch/nn/modules/linear.py` is
/// `__torch__.torch.nn.modules.linear`. `rel` is the record's name after `code/`.
pub(crate) fn module_of_record(rel: &str) -> Option<String> {
    let stem = rel.strip_suffix(".py")?;
    if stem.is_empty() || stem.split('/').any(str::is_empty) {
        return None;
    }
    Some(stem.replace('/', "."))
}

/// Reads the class declarations of one code record (the source of Python module `module`)
/// into `out`. Only `class NAME(...):` lines and the `__parameters__` and `__buffers__` list
/// literals directly under them are read; everything else is skipped.
pub(crate) fn read_declarations(module: &str, source: &str, out: &mut ScriptClasses) {
    let mut current: Option<String> = None;
    for line in source.lines() {
        if let Some(rest) = line.strip_prefix("class ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let bases = rest[name.len()..].trim_start();
            let is_module = bases.starts_with("(Module)");
            let qualified = format!("{module}.{name}");
            out.insert(
                qualified.clone(),
                ScriptClass {
                    is_module,
                    ..ScriptClass::default()
                },
            );
            current = Some(qualified);
            continue;
        }
        if !line.starts_with(' ') {
            // Anything else at the top level ends the class.
            if !line.trim().is_empty() {
                current = None;
            }
            continue;
        }
        let Some(class) = current.as_ref().and_then(|c| out.get_mut(c)) else {
            continue;
        };
        // Class-level lines are indented by two spaces; method bodies by more.
        let Some(body) = line.strip_prefix("  ").filter(|b| !b.starts_with(' ')) else {
            continue;
        };
        if let Some(list) = body.strip_prefix("__parameters__ = ") {
            class.parameters = string_list(list);
        } else if let Some(list) = body.strip_prefix("__buffers__ = ") {
            class.buffers = string_list(list);
        }
    }
}

/// The strings of a one-line list literal of double-quoted strings, as TorchScript writes
/// them: `["weight", "bias", ]`. Backslash escapes are kept as they are (names of tensors
/// have none).
fn string_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        let mut escaped = false;
        for c in chars.by_ref() {
            match c {
                '"' if !escaped => break,
                '\\' if !escaped => escaped = true,
                c => {
                    s.push(c);
                    escaped = false;
                }
            }
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_read_as_text() {
        let source = "class Linear(Module):\n  __parameters__ = [\"weight\", \"bias\", ]\n  \
                      __buffers__ = []\n  weight : Tensor\n  def forward(self: \
                      __torch__.Linear,\n    input: Tensor) -> Tensor:\n    return input\n\
                      class Point:\n  __parameters__ = [\"x\", ]\n";
        let mut out = ScriptClasses::new();
        read_declarations("__torch__.torch.nn.modules.linear", source, &mut out);
        let linear = &out["__torch__.torch.nn.modules.linear.Linear"];
        assert!(linear.is_module);
        assert_eq!(linear.parameters, ["weight", "bias"]);
        assert!(linear.buffers.is_empty());
        assert!(!out["__torch__.torch.nn.modules.linear.Point"].is_module);
        assert_eq!(
            module_of_record("__torch__/torch/nn/modules/linear/___torch_mangle_0.py").unwrap(),
            "__torch__.torch.nn.modules.linear.___torch_mangle_0"
        );
        assert_eq!(module_of_record("__torch__.py").unwrap(), "__torch__");
        assert!(module_of_record("a//b.py").is_none());
        assert_eq!(
            string_list("[\"fc|weight\", \"a\\\"b\", ]"),
            ["fc|weight", "a\"b"]
        );
    }
}
