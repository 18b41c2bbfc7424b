//! The state dict of a module object: a pickled `nn.Module` (`torch.save(model)`) or a
//! TorchScript module (`torch.jit.save`, tch's `VarStore::save`), read without importing its
//! class or running its code.
//!
//! # Design note
//!
//! `model.state_dict()` is, for the modules of `torch.nn` and any module that does not
//! override `_save_to_state_dict`, a walk of the module tree in pre-order: each module's
//! parameters that are not `None`, then its buffers that are not `None` and not in
//! `_non_persistent_buffers_set`, then its children that are not `None`, keys joined with
//! `.`, and `_metadata[path] = {'version': type(module)._version}` for each module visited.
//! A pickled module records exactly those attributes in its `BUILD` state (`_parameters`,
//! `_buffers`, `_non_persistent_buffers_set`, `_modules`), so the walk is done on the opaque
//! objects, with the tensors still descriptions in the file.
//!
//! `_version` is a class attribute and is not pickled; [`class_version`] knows the classes
//! of torch and torchvision whose `_version` is not 1 (BatchNorm's is 2, which the
//! `num_batches_tracked` rule depends on). A user class that sets its own `_version` is read
//! as version 1: its module path and name are all the file says about it.
//!
//! A TorchScript module keeps parameters, buffers and submodules as plain attributes in
//! slot order; its class's `__parameters__` and `__buffers__` (read from the archive's code
//! as text, see [`super::torchscript`]) say which tensor attributes are which. That is what
//! `scripted.state_dict()` walks too, with every module at version 1 and every buffer
//! persistent. tch's names join path components with `|` (attribute names cannot hold a
//! `.`); they are turned back into `.`.

use std::borrow::Cow;

use indexmap::IndexMap;

use super::budget::heap;
use super::materialize::{Materializer, SdEntries};
use super::pickle::{Id, Obj, OpaqueObj, PickleError};
use crate::error::Error;
use crate::value::{Metadata, Value};

/// How a module object records its state.
#[derive(Clone, Copy)]
enum Style {
    /// A pickled `nn.Module`: `_parameters`, `_buffers`, `_modules` in its `__dict__`.
    Pickled,
    /// A TorchScript module: attributes, classified by its class's declarations.
    Script,
}

/// The `_version` of the classes of torch and torchvision that set one other than 1.
fn class_version(module: &str, name: &str) -> i64 {
    match (module, name) {
        (
            "torch.nn.modules.batchnorm",
            "BatchNorm1d" | "BatchNorm2d" | "BatchNorm3d" | "LazyBatchNorm1d" | "LazyBatchNorm2d"
            | "LazyBatchNorm3d" | "SyncBatchNorm",
        )
        | (
            "torch.nn.modules.instancenorm",
            "InstanceNorm1d" | "InstanceNorm2d" | "InstanceNorm3d" | "LazyInstanceNorm1d"
            | "LazyInstanceNorm2d" | "LazyInstanceNorm3d",
        )
        | ("torch.ao.nn.intrinsic.qat.modules.conv_fused", _)
        | ("torch.ao.nn.quantized.dynamic.modules.rnn", _)
        | ("torchvision.ops.feature_pyramid_network", "FeaturePyramidNetwork")
        | ("torchvision.models.vision_transformer", "MLPBlock")
        | ("torchvision.models.densenet", "_DenseBlock")
        | ("torchvision.models.quantization.mobilenetv3", "QuantizableSqueezeExcitation")
        | ("torchvision.models.mnasnet", "MNASNet")
        | ("torchvision.models._utils", "IntermediateLayerGetter")
        | ("torchvision.models.detection.rpn", "RPNHead")
        | ("torchvision.models.detection.mask_rcnn", "MaskRCNNHeads") => 2,
        _ => 1,
    }
}

/// What a module's entry in `_metadata` costs beside its key's string: a map of one
/// `version` (its table, its entries' vector, the string `version`), and its bucket and
/// index in the metadata's map. About 480 bytes with glibc's chunks; before this was
/// charged, the hostile `module_shared_children.pth` grew peak RSS 12% past a 64 MiB budget
/// (`tests/budget.rs`).
const METADATA_ENTRY: u64 = 512;

impl<'c> Materializer<'c, '_> {
    /// The state dict of `object` when it is a module, its tensors not read; `None` when it
    /// is some other object.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidModule`] for a module whose parameters, buffers or children are not
    /// what a module holds; [`Error::Pickle`] with [`PickleError::TooDeep`] for modules
    /// nested deeper than the depth limit, and with [`PickleError::Cycle`] for a module
    /// among its own submodules (PyTorch's `state_dict()` would recurse forever);
    /// [`Error::LimitExceeded`] past the budget of values (modules shared many times) or
    /// the memory budget.
    pub(crate) fn module_entries(
        &mut self,
        object: &'c OpaqueObj,
        at: Option<&str>,
    ) -> Result<Option<SdEntries<'c>>, Error> {
        let Some(style) = self.module_style(object) else {
            return Ok(None);
        };
        let mut sd = SdEntries {
            entries: Vec::new(),
            metadata: Some(Metadata::new()),
            from_module: true,
        };
        self.walk(object, style, String::new(), &mut Vec::new(), at, &mut sd)?;
        Ok(Some(sd))
    }

    fn module_style(&self, object: &OpaqueObj) -> Option<Style> {
        let arena = &self.parsed.arena;
        let class = arena.class_of(object)?;
        if let Some(classes) = &self.parsed.script_classes {
            let qualified = format!("{}.{}", class.module, class.name);
            return classes
                .get(&qualified)
                .filter(|c| c.is_module)
                .map(|_| Style::Script);
        }
        let attrs = arena.attributes(object);
        let has = |name: &str| attrs.iter().any(|(k, _)| *k == name);
        (has("_parameters") && has("_buffers") && has("_modules")).then_some(Style::Pickled)
    }

    fn walk(
        &mut self,
        object: &'c OpaqueObj,
        style: Style,
        prefix: String,
        enclosing: &mut Vec<*const OpaqueObj>,
        at: Option<&str>,
        sd: &mut SdEntries<'c>,
    ) -> Result<(), Error> {
        let max_depth = self.options.limits.max_depth;
        if enclosing.len() > max_depth {
            return Err(self.pickle_error(PickleError::TooDeep(max_depth)));
        }
        if enclosing.contains(&(object as *const OpaqueObj)) {
            let what = format!(
                "the submodule `{}` is the module that holds it, or one that holds that, so \
                 state_dict() would never end",
                prefix.strip_suffix('.').unwrap_or(&prefix)
            );
            return Err(self.pickle_error(PickleError::Cycle(what)));
        }
        self.spend(1)?;
        // A visit reads the module's attributes several times (what it is, then each of
        // its dicts); a module shared by many parents is read at each visit. That work is
        // charged to the memory budget, so that it is bounded with the rest, and so is the
        // visit's entry in `_metadata`.
        let attributes = self.parsed.arena.attributes(object).len() as u64;
        self.charge(64 * attributes + 128 + METADATA_ENTRY + heap(prefix.len()))?;
        let (tensors, children, version) = match style {
            Style::Pickled => self.pickled_module(object, &prefix, at)?,
            Style::Script => self.script_module(object, &prefix, at)?,
        };
        let mut entry = IndexMap::new();
        entry.insert("version".to_string(), Value::Int(version));
        if let Some(metadata) = &mut sd.metadata {
            metadata.insert(prefix.strip_suffix('.').unwrap_or("").to_string(), entry);
        }
        self.spend(tensors.len() as u64)?;
        for (name, tensor) in tensors {
            let key = match style {
                Style::Pickled => format!("{prefix}{name}"),
                Style::Script => format!("{prefix}{name}").replace('|', "."),
            };
            // The entry, and its key.
            self.charge(32 + heap(key.len()))?;
            sd.entries.push((Cow::Owned(key), tensor));
        }
        enclosing.push(object);
        for (name, child) in children {
            let child_prefix = format!("{prefix}{name}.");
            self.walk(child, style, child_prefix, enclosing, at, sd)?;
        }
        enclosing.pop();
        Ok(())
    }

    /// A pickled `nn.Module`'s parameters and persistent buffers (each name with its
    /// tensor), its children, and its version.
    #[allow(clippy::type_complexity)]
    fn pickled_module(
        &self,
        object: &'c OpaqueObj,
        prefix: &str,
        at: Option<&str>,
    ) -> Result<(Vec<(&'c str, usize)>, Vec<(&'c str, &'c OpaqueObj)>, i64), Error> {
        let parsed = self.parsed;
        let arena = &parsed.arena;
        let attribute = |name: &str| arena.attribute(object, name);
        let items = |name: &'static str| -> Result<Vec<(&'c str, Id)>, Error> {
            let Some(id) = attribute(name) else {
                return Ok(Vec::new());
            };
            match arena.get(id) {
                Obj::Dict(d) => d
                    .items
                    .iter()
                    .map(|&(k, v)| match arena.get(k) {
                        Obj::Str(k) => Ok((k.as_str(), v)),
                        other => Err(self.bad_module(
                            object,
                            prefix,
                            at,
                            format!("{name} has a key of type {}", other.type_name()),
                        )),
                    })
                    .collect(),
                other => Err(self.bad_module(
                    object,
                    prefix,
                    at,
                    format!("{name} is a {}, not a dict", other.type_name()),
                )),
            }
        };
        let non_persistent: Vec<&str> =
            match attribute("_non_persistent_buffers_set").map(|id| arena.get(id)) {
                Some(Obj::Set(v)) | Some(Obj::List(v)) => v
                    .iter()
                    .filter_map(|&i| match arena.get(i) {
                        Obj::Str(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
        let mut tensors = Vec::new();
        for (kind, attr) in [("parameter", "_parameters"), ("buffer", "_buffers")] {
            for (name, v) in items(attr)? {
                if kind == "buffer" && non_persistent.contains(&name) {
                    continue;
                }
                match arena.get(v) {
                    Obj::None => {}
                    Obj::Tensor(t) => tensors.push((name, *t)),
                    _ => {
                        return Err(self.bad_module(
                            object,
                            prefix,
                            at,
                            format!("{kind} {name:?} is {}", self.describe(v)),
                        ))
                    }
                }
            }
        }
        let mut children = Vec::new();
        for (name, v) in items("_modules")? {
            match arena.get(v) {
                Obj::None => {}
                Obj::Object(child) if matches!(self.module_style(child), Some(Style::Pickled)) => {
                    children.push((name, &**child))
                }
                _ => {
                    return Err(self.bad_module(
                        object,
                        prefix,
                        at,
                        format!("submodule {name:?} is {}", self.describe(v)),
                    ))
                }
            }
        }
        let version = match attribute("_version").map(|id| arena.get(id)) {
            Some(Obj::Int(v)) => *v,
            _ => arena
                .class_of(object)
                .map_or(1, |c| class_version(&c.module, &c.name)),
        };
        Ok((tensors, children, version))
    }

    /// A TorchScript module's parameters then buffers (each in slot order), its submodules,
    /// and its version (1, as `scripted.state_dict()` gives).
    #[allow(clippy::type_complexity)]
    fn script_module(
        &self,
        object: &'c OpaqueObj,
        prefix: &str,
        at: Option<&str>,
    ) -> Result<(Vec<(&'c str, usize)>, Vec<(&'c str, &'c OpaqueObj)>, i64), Error> {
        let parsed = self.parsed;
        let arena = &parsed.arena;
        let declared = arena
            .class_of(object)
            .and_then(|c| {
                let classes = parsed.script_classes.as_ref()?;
                classes.get(&format!("{}.{}", c.module, c.name))
            })
            .cloned()
            .unwrap_or_default();
        let attrs = arena.attributes(object);
        let mut tensors = Vec::new();
        for names in [&declared.parameters, &declared.buffers] {
            for &(name, v) in &attrs {
                if !names.iter().any(|n| n == name) {
                    continue;
                }
                match arena.get(v) {
                    Obj::None => {}
                    Obj::Tensor(t) => tensors.push((name, *t)),
                    _ => {
                        return Err(self.bad_module(
                            object,
                            prefix,
                            at,
                            format!("declared tensor {name:?} is {}", self.describe(v)),
                        ))
                    }
                }
            }
        }
        let children = attrs
            .iter()
            .filter_map(|&(name, v)| match arena.get(v) {
                Obj::Object(child) if matches!(self.module_style(child), Some(Style::Script)) => {
                    Some((name, &**child))
                }
                _ => None,
            })
            .collect();
        Ok((tensors, children, 1))
    }

    fn bad_module(
        &self,
        object: &OpaqueObj,
        prefix: &str,
        at: Option<&str>,
        reason: String,
    ) -> Error {
        Error::InvalidModule {
            path: self.path.to_path_buf(),
            at: at.map(str::to_string),
            module: prefix.strip_suffix('.').unwrap_or("").to_string(),
            reason: format!("a {} whose {reason}", self.parsed.arena.class_name(object)),
        }
    }
}
