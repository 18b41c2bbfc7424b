//! torch's side of the pickle: the allowlist of globals a checkpoint may name ([`Global`],
//! [`resolve_global`]), the persistent ids that name storages ([`Flavor`]), and what the
//! allowlisted callables build when `REDUCE`, `NEWOBJ` or `BUILD` apply them: a
//! `_rebuild_tensor_v2` call becomes a [`TensorRef`], an `OrderedDict()` call an empty dict,
//! a `BUILD` on a state dict keeps its `_metadata`. Everything here is data; nothing is
//! imported or called.
//!
//! The arguments of these calls are often memo references, so a call of a few bytes may
//! ask for a copy of a large object (`torch.Size(memo)`, `set(memo)`, `OrderedDict(memo)`,
//! `_codecs.encode(memo)`, a rebuild with a memoized size): every copy is checked against
//! the memory budget before it is made, and charged with the object it becomes.

use std::sync::Arc;

use super::object::{DictObj, Id, Obj, StorageRef, TensorRef};
use super::vm::{Failure, Machine, Res};
use crate::dtype::{self, FileDtype};
use crate::error::PickleError;
use crate::read::budget::{heap, heap_of};

/// The callables and types a checkpoint's pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    /// `_rebuild_qtensor`: a quantized tensor, described so that its entry is listed and
    /// refused when read (this crate holds no quantized tensors).
    RebuildQTensor,
    /// `torch.per_tensor_affine` and the other quantization schemes, arguments of
    /// `_rebuild_qtensor`.
    QScheme(&'static str),
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    /// `torch.FloatStorage` and friends (`torch.QInt8Storage` too, whose tensors are
    /// refused when read); `None` for `torch.UntypedStorage`.
    StorageType(Option<FileDtype>),
    TorchSize,
    TorchDevice,
    CodecsEncode,
    Set,
    FrozenSet,
    TensorType,
    ParameterType,
}

impl Global {
    /// Its module and name, as a pickle names it (`torch`, `FloatStorage`).
    pub(crate) fn module_and_name(self) -> (&'static str, &'static str) {
        match self {
            Global::StorageType(Some(FileDtype::Kind(kind))) => (
                "torch",
                dtype::of_kind(kind)
                    .storage_class
                    .unwrap_or("UntypedStorage"),
            ),
            Global::StorageType(Some(FileDtype::Other(o))) => {
                ("torch", o.storage_class.unwrap_or("UntypedStorage"))
            }
            Global::StorageType(None) => ("torch", "UntypedStorage"),
            Global::QScheme(name) => ("torch", name),
            other => other.name().rsplit_once('.').unwrap_or(("builtins", "?")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensor => "torch._utils._rebuild_tensor",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3",
            Global::RebuildQTensor => "torch._utils._rebuild_qtensor",
            Global::QScheme(_) => "a torch quantization scheme",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::RebuildFromTypeV2 => "torch._tensor._rebuild_from_type_v2",
            Global::StorageType(_) => "a torch storage type",
            Global::TorchSize => "torch.Size",
            Global::TorchDevice => "torch.device",
            Global::CodecsEncode => "_codecs.encode",
            Global::Set => "builtins.set",
            Global::FrozenSet => "builtins.frozenset",
            Global::TensorType => "torch.Tensor",
            Global::ParameterType => "torch.nn.Parameter",
        }
    }
}

/// The result of resolving a `GLOBAL`.
pub(super) enum Resolved {
    Callable(Global),
    /// `torch.float32`, or a dtype this crate lists but cannot hold (`torch.uint16`): a file
    /// naming one opens, and only reading its tensors is refused.
    Dtype(FileDtype),
}

/// torch's quantization schemes, as `_rebuild_qtensor`'s arguments name them.
const QSCHEMES: [&str; 5] = [
    "per_tensor_affine",
    "per_channel_affine",
    "per_tensor_symmetric",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
];

/// What `module.name` is to a checkpoint: an allowlisted callable, a dtype, or `None`:
/// not on the allowlist.
pub(super) fn resolve_global(module: &str, name: &str) -> Option<Resolved> {
    use Global::*;
    let g = match (module, name) {
        ("collections", "OrderedDict") => OrderedDict,
        ("torch._utils", "_rebuild_tensor") => RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => RebuildTensorV3,
        ("torch._utils", "_rebuild_qtensor") => RebuildQTensor,
        ("torch", n) if QSCHEMES.contains(&n) => QScheme(
            QSCHEMES
                .iter()
                .find(|&&q| q == n)
                .copied()
                .unwrap_or_default(),
        ),
        ("torch._utils", "_rebuild_parameter") => RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => RebuildFromTypeV2,
        ("torch" | "torch.storage", "UntypedStorage") => StorageType(None),
        ("torch", "Size") => TorchSize,
        ("torch", "device") => TorchDevice,
        ("_codecs", "encode") => CodecsEncode,
        ("builtins" | "__builtin__", "set") => Set,
        ("builtins" | "__builtin__", "frozenset") => FrozenSet,
        ("torch" | "torch._tensor", "Tensor") => TensorType,
        ("torch.nn.parameter" | "torch.nn", "Parameter") => ParameterType,
        ("torch", n) if n.ends_with("Storage") => {
            StorageType(Some(dtype::file_dtype_by_storage_class(n)?))
        }
        ("torch", n) => return dtype::file_dtype_by_name(n).map(Resolved::Dtype),
        _ => return None,
    };
    Some(Resolved::Callable(g))
}

/// Which persistent ids the container uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// torch.save's zip format: `('storage', type, key, location, numel)`.
    Zip,
    /// A TorchScript archive's `data.pkl`: five items or more, the rest ignored, as
    /// libtorch's unpickler (`unpickler.cpp`, `BINPERSID`) reads them. torch 1.x wrote six,
    /// `('storage', HalfStorage, '0', 'cuda:0', 4128, None)`, the sixth the legacy format's
    /// view metadata, always `None` there; `torch.jit.load` 2.11 reads those archives.
    Script,
    /// The legacy format: `('storage', type, key, location, numel, view_metadata)`.
    Legacy,
    /// No persistent ids allowed (the legacy header pickles).
    Plain,
}

impl Machine<'_> {
    /// Applies an allowlisted callable to its arguments.
    pub(super) fn call(&mut self, callable: Id, args: &[Id]) -> Res<Id> {
        let g = match self.get(callable) {
            Obj::Global(g) => *g,
            other => return Err(self.err(PickleError::NotCallable(other.type_name()))),
        };
        let name = g.name();
        match g {
            Global::OrderedDict => {
                let items = match args {
                    [] => Vec::new(),
                    [pairs] => self.pair_list(*pairs, name)?,
                    _ => return Err(self.bad(name, "takes at most one argument")),
                };
                self.alloc(Obj::Dict(DictObj {
                    items,
                    ordered: true,
                }))
            }
            Global::RebuildTensor
            | Global::RebuildTensorV2
            | Global::RebuildTensorV3
            | Global::RebuildQTensor => self.rebuild_tensor(g, args),
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let expected = if g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != expected {
                    return Err(self.bad(
                        name,
                        format!("takes {expected} arguments, got {}", args.len()),
                    ));
                }
                let requires_grad = self.boolean(args[1], name, "requires_grad")?;
                match self.get(args[0]) {
                    Obj::Tensor(t) => {
                        let t = *t;
                        self.arena.tensors[t].requires_grad = requires_grad;
                        Ok(args[0])
                    }
                    other => Err(self.bad(
                        name,
                        format!("data has type {}, not Tensor", other.type_name()),
                    )),
                }
            }
            Global::RebuildFromTypeV2 => {
                if args.len() != 4 {
                    return Err(self.bad(name, format!("takes 4 arguments, got {}", args.len())));
                }
                // A subclass of Tensor outside the allowlist (an opaque class, never imported)
                // is read as the plain tensor that the allowlisted rebuild function makes.
                match self.get(args[1]) {
                    Obj::Global(Global::TensorType | Global::ParameterType) | Obj::Class(_) => {}
                    _ => {
                        return Err(self.bad(name, "only a Tensor type can be rebuilt"));
                    }
                }
                match self.get(args[0]) {
                    Obj::Global(
                        Global::RebuildTensor
                        | Global::RebuildTensorV2
                        | Global::RebuildTensorV3
                        | Global::RebuildQTensor
                        | Global::RebuildParameter
                        | Global::RebuildParameterWithState,
                    ) => {}
                    _ => return Err(self.bad(name, "the function is not a tensor rebuild")),
                }
                let inner = self.tuple_items(args[2], name)?;
                // The state (Python attributes set on the tensor) is data this crate has no
                // place for; it is dropped.
                self.call(args[0], &inner)
            }
            Global::TorchSize => {
                let dims = match args {
                    [] => Vec::new(),
                    [d] => match self.arena.sequence(*d) {
                        Some(v) => {
                            self.afford(2 * heap_of(v.len(), 4))?;
                            v.to_vec()
                        }
                        None => return Err(self.bad(name, "takes a tuple")),
                    },
                    _ => return Err(self.bad(name, "takes one argument")),
                };
                for &d in &dims {
                    self.int(d, name, "a dimension")?;
                }
                self.tuple_of(&dims)
            }
            Global::TorchDevice => {
                let device = match args {
                    [t] => self.string(*t, name, "the device type")?,
                    [t, i] => {
                        let t = self.string(*t, name, "the device type")?;
                        let i = self.int(*i, name, "the device index")?;
                        format!("{t}:{i}")
                    }
                    _ => return Err(self.bad(name, "takes one or two arguments")),
                };
                self.alloc(Obj::Device(device))
            }
            Global::CodecsEncode => {
                let (text, encoding) = match args {
                    [t] => (*t, "utf-8".to_string()),
                    [t, e] => (*t, self.string(*e, name, "the encoding")?),
                    _ => return Err(self.bad(name, "takes one or two arguments")),
                };
                let text = match self.get(text) {
                    Obj::Str(s) => s,
                    other => {
                        return Err(self.bad(
                            name,
                            format!("the text has type {}, not str", other.type_name()),
                        ))
                    }
                };
                self.afford(heap(text.len()))?;
                let latin1 = match encoding.to_ascii_lowercase().as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" => true,
                    "utf-8" | "utf8" => false,
                    _ => return Err(self.bad(name, format!("unsupported encoding {encoding:?}"))),
                };
                // ASCII is the same in both, and std checks it fast.
                let bytes = if !latin1 || text.is_ascii() {
                    text.as_bytes().to_vec()
                } else {
                    text.chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| self.bad(name, "text outside latin-1"))?
                };
                self.alloc(Obj::Bytes(bytes))
            }
            Global::Set | Global::FrozenSet => {
                let items = match args {
                    [] => Vec::new(),
                    [items] => {
                        let v = match (self.arena.sequence(*items), self.get(*items)) {
                            (Some(v), _) => v,
                            (None, Obj::Set(v)) => v.as_slice(),
                            _ => return Err(self.bad(name, "takes a list")),
                        };
                        self.afford(heap_of(v.len(), 4))?;
                        v.to_vec()
                    }
                    _ => return Err(self.bad(name, "takes one argument")),
                };
                self.alloc(Obj::Set(items))
            }
            Global::StorageType(_)
            | Global::TensorType
            | Global::ParameterType
            | Global::QScheme(_) => Err(self.err(PickleError::NotCallable(name))),
        }
    }

    fn rebuild_tensor(&mut self, g: Global, args: &[Id]) -> Res<Id> {
        let name = g.name();
        let (min, max) = match g {
            Global::RebuildTensor => (4, 4),
            Global::RebuildTensorV2 => (6, 7),
            // (storage, offset, size, stride, quantizer_params, requires_grad, hooks)
            Global::RebuildQTensor => (7, 7),
            _ => (7, 8),
        };
        if args.len() < min || args.len() > max {
            return Err(self.bad(
                name,
                format!("takes {min} to {max} arguments, got {}", args.len()),
            ));
        }
        let storage = match self.get(args[0]) {
            Obj::Storage(s) => Arc::clone(s),
            other => return Err(self.bad(name, format!("storage has type {}", other.type_name()))),
        };
        let offset = self.int(args[1], name, "storage_offset")?;
        // Copies of what may be memoized tuples, kept once in the description.
        let dims = |id| self.arena.sequence(id).map_or(0, <[Id]>::len);
        self.afford(3 * heap_of(dims(args[2]) + dims(args[3]), 8))?;
        let size = self.ints(args[2], name, "size")?;
        let stride = self.ints(args[3], name, "stride")?;
        if g == Global::RebuildTensorV2 && args.len() == 7 {
            // The tensor's metadata, which PyTorch's `set_tensor_metadata` takes only as a
            // mapping of str to bool (and then does not keep here).
            let well_formed = match self.get(args[6]) {
                Obj::Dict(d) => (d.items.iter()).all(|&(k, v)| {
                    matches!((self.get(k), self.get(v)), (Obj::Str(_), Obj::Bool(_)))
                }),
                _ => false,
            };
            if !well_formed {
                return Err(self.bad(name, "metadata is not a dict of str to bool"));
            }
        }
        let requires_grad = match g {
            Global::RebuildQTensor => self.boolean(args[5], name, "requires_grad")?,
            _ if args.len() > 4 => self.boolean(args[4], name, "requires_grad")?,
            _ => false,
        };
        let dtype = if g == Global::RebuildTensorV3 {
            match self.get(args[6]) {
                Obj::Dtype(d) => *d,
                other => {
                    return Err(self.bad(name, format!("dtype has type {}", other.type_name())))
                }
            }
        } else {
            storage.dtype.ok_or_else(|| {
                self.bad(name, "an untyped storage needs _rebuild_tensor_v3's dtype")
            })?
        };
        if size.len() != stride.len() {
            return Err(self.bad(name, "size and stride differ in length"));
        }
        if self.arena.tensors.len() as u64 >= self.limits.max_tensors {
            return Err(Failure::Limit("max_tensors", self.limits.max_tensors));
        }
        let index = self.arena.tensors.len();
        let mut tensor = TensorRef::new(storage, dtype, offset, &size, &stride);
        tensor.requires_grad = requires_grad;
        self.charge(tensor.cost())?;
        self.arena.tensors.push(tensor);
        self.alloc(Obj::Tensor(index))
    }

    /// The class of a legacy file's `('module', class, source_file, source)` persistent id:
    /// the legacy format names each `nn.Module` class of a whole pickled model so, with its
    /// source (to warn when it changed), and `torch.load` takes the class, the rest unread.
    pub(super) fn module_class(&self, pid: Id) -> Option<Id> {
        if self.flavor != Flavor::Legacy {
            return None;
        }
        let Obj::Tuple(t) = self.get(pid) else {
            return None;
        };
        match self.arena.tuple(*t) {
            [kind, class, ..] if matches!(self.get(*kind), Obj::Str(s) if s == "module") => {
                Some(*class)
            }
            _ => None,
        }
    }

    /// The storage a persistent id names (`BINPERSID`).
    pub(super) fn storage(&self, pid: Id) -> Res<StorageRef> {
        let bad = |reason: &str| self.err(PickleError::PersistentId(reason.to_string()));
        let items = match self.get(pid) {
            Obj::Tuple(t) => self.arena.tuple(*t),
            other => {
                return Err(bad(&format!(
                    "a value of type {}, not a tuple",
                    other.type_name()
                )))
            }
        };
        // How many items, and whether more are allowed (and ignored).
        let (expected, or_more) = match self.flavor {
            Flavor::Zip => (5, false),
            Flavor::Script => (5, true),
            Flavor::Legacy => (6, false),
            Flavor::Plain => return Err(bad("persistent ids are not allowed here")),
        };
        if items.len() < expected || (items.len() > expected && !or_more) {
            let more = if or_more { " or more" } else { "" };
            return Err(bad(&format!(
                "{} items, expected {expected}{more}",
                items.len()
            )));
        }
        match self.get(items[0]) {
            Obj::Str(s) if s == "storage" => {}
            _ => return Err(bad("the first item is not 'storage'")),
        }
        let dtype = match self.get(items[1]) {
            Obj::Global(Global::StorageType(kind)) => *kind,
            _ => return Err(bad("the second item is not a storage type")),
        };
        let key = match self.get(items[2]) {
            Obj::Str(s) => {
                self.afford(heap(s.len()))?;
                s.clone()
            }
            Obj::Int(i) => i.to_string(),
            _ => return Err(bad("the key is not a str")),
        };
        // The location (`cpu`, `cuda:0`) is checked, not kept: see `Obj::Storage`.
        if !matches!(self.get(items[3]), Obj::Str(_)) {
            return Err(bad("the location is not a str"));
        }
        let numel = match self.get(items[4]) {
            Obj::Int(n) if *n >= 0 => *n as u64,
            _ => return Err(bad("the size is not a non-negative int")),
        };
        let view = if self.flavor == Flavor::Legacy {
            match self.get(items[5]) {
                Obj::None => None,
                Obj::Tuple(t) if t.len() == 3 => {
                    let v = self.arena.tuple(*t);
                    let offset = match self.get(v[1]) {
                        Obj::Int(i) if *i >= 0 => *i,
                        _ => return Err(bad("a view offset that is not a non-negative int")),
                    };
                    let size = match self.get(v[2]) {
                        Obj::Int(i) if *i >= 0 => *i,
                        _ => return Err(bad("a view size that is not a non-negative int")),
                    };
                    Some((offset, size))
                }
                _ => return Err(bad("view metadata that is not None or (key, offset, size)")),
            }
        } else {
            None
        };
        Ok(StorageRef {
            key,
            dtype,
            numel,
            view,
        })
    }

    /// `BUILD`: the state of an object, kept where a torch object has a place for it.
    pub(super) fn build(&mut self, obj: Id, state: Id) -> Res<()> {
        match self.get(obj) {
            Obj::Dict(_) => {
                // OrderedDict.__reduce__ gives the instance __dict__ as state: a dict, or a
                // (dict, slots) pair. A state dict's `_metadata` lives there.
                let attrs = match self.get(state) {
                    Obj::Dict(d) => Some(d),
                    Obj::Tuple(t) if t.len() == 2 => match self.get(self.arena.tuple(*t)[0]) {
                        Obj::Dict(d) => Some(d),
                        Obj::None => None,
                        _ => return Err(self.err(PickleError::BadBuild("dict with this state"))),
                    },
                    Obj::None => None,
                    _ => return Err(self.err(PickleError::BadBuild("dict with this state"))),
                };
                // The state may be a memoized dict given to many BUILDs: its search is
                // charged as a copy of its ids would be.
                let searched = attrs.map_or(0, |d| d.items.len());
                let metadata = attrs.and_then(|d| {
                    d.items.iter().find_map(|&(k, v)| match self.get(k) {
                        Obj::Str(s) if s == "_metadata" => Some(v),
                        _ => None,
                    })
                });
                self.charge(8 * searched as u64)?;
                if let Some(m) = metadata {
                    self.charge(32)?;
                    self.arena.metadata.insert(obj, m);
                }
                Ok(())
            }
            // Python attributes on a tensor or parameter: nothing to keep.
            Obj::Tensor(_) => Ok(()),
            // An opaque object's state is kept as it is; a second BUILD is what no pickler
            // writes.
            Obj::Object(o) if o.state.is_some() => {
                Err(self.err(PickleError::Malformed("BUILD twice on one object")))
            }
            Obj::Object(_) => {
                if let Obj::Object(o) = &mut self.arena.objs[obj as usize] {
                    o.state = Some(state);
                }
                Ok(())
            }
            other => Err(self.err(PickleError::BadBuild(other.type_name()))),
        }
    }

    fn pair_list(&self, id: Id, callable: &'static str) -> Res<Vec<(Id, Id)>> {
        let items = self
            .arena
            .sequence(id)
            .ok_or_else(|| self.bad(callable, "takes a list of pairs"))?;
        self.afford(heap_of(items.len(), 8))?;
        items
            .iter()
            .map(|&p| match self.arena.sequence(p) {
                Some(&[k, v]) => Ok((k, v)),
                _ => Err(self.bad(callable, "takes a list of pairs")),
            })
            .collect()
    }

    fn int(&self, id: Id, callable: &'static str, what: &str) -> Res<i64> {
        match self.get(id) {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(i64::from(*b)),
            other => Err(self.bad(
                callable,
                format!("{what} has type {}, not int", other.type_name()),
            )),
        }
    }

    fn ints(&self, id: Id, callable: &'static str, what: &str) -> Res<Vec<i64>> {
        let items = match self.arena.sequence(id) {
            Some(v) => v,
            None => {
                let other = self.get(id);
                return Err(self.bad(
                    callable,
                    format!("{what} has type {}, not tuple", other.type_name()),
                ));
            }
        };
        items.iter().map(|&i| self.int(i, callable, what)).collect()
    }

    fn boolean(&self, id: Id, callable: &'static str, what: &str) -> Res<bool> {
        match self.get(id) {
            Obj::Bool(b) => Ok(*b),
            Obj::Int(i) => Ok(*i != 0),
            other => Err(self.bad(
                callable,
                format!("{what} has type {}, not bool", other.type_name()),
            )),
        }
    }

    fn string(&self, id: Id, callable: &'static str, what: &str) -> Res<String> {
        match self.get(id) {
            Obj::Str(s) => {
                self.afford(heap(s.len()))?;
                Ok(s.clone())
            }
            other => Err(self.bad(
                callable,
                format!("{what} has type {}, not str", other.type_name()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::object::Arena;
    use super::super::vm::run;
    use super::*;
    use crate::read::budget::{Budget, FIXED_COST};
    use crate::read::ReadOptions;

    fn run_with(data: &[u8], weights_only: bool) -> Result<Arena, Failure> {
        let options = ReadOptions::new().weights_only(weights_only);
        let mut budget = Budget::for_file(&options.limits, data.len() as u64);
        run(data, Flavor::Zip, &options, &mut budget).map(|(arena, _)| arena)
    }

    /// Runs `data` with `extra` bytes of budget beyond the fixed cost, none per byte.
    fn run_budget(data: &[u8], extra: u64) -> Result<Arena, Failure> {
        let limits = crate::ReadLimits {
            max_memory_base: FIXED_COST + extra,
            max_memory_per_file_byte: 0,
            ..crate::ReadLimits::default()
        };
        let options = ReadOptions::new().limits(limits);
        let mut budget = Budget::for_file(&options.limits, data.len() as u64);
        run(data, Flavor::Zip, &options, &mut budget).map(|(arena, _)| arena)
    }

    /// A pickle that memoizes `callable` as 0 and `arg` as 1, then pops the result of
    /// `call` 100 times.
    fn copies(callable: &[u8], arg: &[u8], call: &[u8]) -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        p.extend_from_slice(callable);
        p.extend_from_slice(b"q\x000");
        p.extend_from_slice(arg);
        p.extend_from_slice(b"q\x010");
        for _ in 0..100 {
            p.extend_from_slice(call);
            p.push(b'0');
        }
        p.extend_from_slice(b"N.");
        p
    }

    #[test]
    fn every_copy_a_memo_reference_asks_for_is_charged() {
        // Objects of 1,000 items, copied 100 times: 400 KB to 1.6 MB of copies.
        let ints = [b"(".as_slice(), &b"K\x01".repeat(1000)].concat();
        let tuple = [ints.as_slice(), b"t"].concat();
        let list = [b"]", ints.as_slice(), b"e"].concat();
        let pairs = [b"(".as_slice(), &b"K\x01K\x02\x86".repeat(1000), b"l"].concat();
        let text = [b"X\xa0\x0f\x00\x00".as_slice(), &b"x".repeat(4000)].concat();
        let storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ";
        let rebuild = [
            b"h\x00(".as_slice(),
            storage,
            b"K\x00h\x01h\x01\x89ccollections\nOrderedDict\n)RtR",
        ]
        .concat();
        let cases: [(&str, Vec<u8>); 6] = [
            (
                "torch.Size",
                copies(b"ctorch\nSize\n", &tuple, b"h\x00h\x01\x85R"),
            ),
            (
                "set",
                copies(b"c__builtin__\nset\n", &list, b"h\x00h\x01\x85R"),
            ),
            (
                "OrderedDict",
                copies(b"ccollections\nOrderedDict\n", &pairs, b"h\x00h\x01\x85R"),
            ),
            (
                "_codecs.encode",
                copies(b"c_codecs\nencode\n", &text, b"h\x00h\x01\x85R"),
            ),
            (
                "_rebuild_tensor_v2",
                copies(b"ctorch._utils\n_rebuild_tensor_v2\n", &tuple, &rebuild),
            ),
            (
                "an opaque class",
                copies(b"cfakepkg\nThing\n", &tuple, b"h\x00h\x01R"),
            ),
        ];
        for (what, data) in &cases {
            if let Err(e) = run_budget(data, 4 << 20) {
                panic!("{what}: {e:?}");
            }
            assert!(
                matches!(
                    run_budget(data, 200_000),
                    Err(Failure::Limit("max_memory", _))
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn globals_outside_the_allowlist_are_refused_when_weights_only() {
        assert!(matches!(
            run_with(b"\x80\x02cos\nsystem\n.", true).unwrap_err(),
            Failure::Disallowed(2, ref m, ref n) if m == "os" && n == "system"
        ));
        // A dtype this crate cannot hold is a value, not a refusal: only reading a tensor
        // of it is refused.
        let arena = run_with(b"\x80\x02ctorch\nuint16\n.", true).unwrap();
        assert!(matches!(
            arena.get(arena.root),
            Obj::Dtype(d) if d.name() == "uint16" && d.kind().is_none()
        ));
    }

    #[test]
    fn a_call_of_an_unknown_class_is_recorded_not_made() {
        // os.system('id'), then BUILD {'a': 1}, APPENDS [2], SETITEMS {'k': 3}.
        let data = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R}X\x01\x00\x00\x00aK\x01sb(K\x02e(X\x01\x00\x00\x00kK\x03u.";
        let arena = run_with(data, false).unwrap();
        let Obj::Object(o) = arena.get(arena.root) else {
            panic!("{:?}", arena.get(arena.root));
        };
        assert_eq!(arena.class_name(o), "os.system");
        assert!(matches!(arena.get(o.args[0]), Obj::Str(s) if s == "id"));
        assert!(matches!(arena.get(o.state.unwrap()), Obj::Dict(d) if d.items.len() == 1));
        assert_eq!(o.list_items.len(), 1);
        assert_eq!(o.dict_items.len(), 1);
        // A second BUILD is refused.
        let twice = b"\x80\x02cos\nsystem\n)R}b}b.";
        assert!(matches!(
            run_with(twice, false).unwrap_err(),
            Failure::Pickle(_, PickleError::Malformed(_))
        ));
        // Calling an object is not allowed.
        let call_object = b"\x80\x02cos\nsystem\n)R)R.";
        assert!(matches!(
            run_with(call_object, false).unwrap_err(),
            Failure::Pickle(_, PickleError::NotCallable("object"))
        ));
    }

    /// Protocol 2's `functools.partial(getattr(K, '__new__'), K, 1, b=2)()` (pickled by
    /// Python for an object with `__getnewargs_ex__`) is the object `NEWOBJ_EX` makes; a
    /// partial of anything else, or called with arguments, is still no call the machine
    /// makes.
    #[test]
    fn a_partial_of_new_is_an_object_made_by_new() {
        let good: &[u8] = b"\x80\x02cfunctools\npartial\nq\x00c__builtin__\ngetattr\nq\x01cm\nK\nq\x02X\x07\x00\x00\x00__new__q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07(h\x05h\x02K\x01\x86q\x08}q\tX\x01\x00\x00\x00bq\nK\x02sNtq\x0bb)Rq\x0c}q\r(X\x01\x00\x00\x00aq\x0eK\x01h\nK\x02ub.";
        let arena = run_with(good, false).unwrap();
        let Obj::Object(o) = arena.get(arena.root) else {
            panic!("not an object");
        };
        assert_eq!(arena.class_name(o), "m.K");
        assert!(o.new);
        assert!(matches!(o.args.as_slice(), &[a] if matches!(arena.get(a), Obj::Int(1))));
        assert_eq!(o.kwargs.len(), 1);
        assert!(o.state.is_some());
        let variant = |from: &[u8], to: &[u8]| {
            let at = good.windows(from.len()).position(|w| w == from).unwrap();
            [&good[..at], to, &good[at + from.len()..]].concat()
        };
        for bad in [
            // getattr(K, '__del__'), not '__new__'.
            variant(b"__new__", b"__del__"),
            // The partial called with an argument.
            variant(b")Rq\x0c", b"K\x01\x85Rq\x0c"),
            // Its first argument not the class.
            variant(b"h\x05h\x02K\x01", b"h\x05K\x01K\x01"),
        ] {
            assert!(matches!(
                run_with(&bad, false).unwrap_err(),
                Failure::Pickle(_, PickleError::NotCallable("object"))
            ));
        }
    }

    #[test]
    fn copyreg_reconstructor_records_the_class() {
        let data = b"\x80\x02ccopy_reg\n_reconstructor\ncargparse\nNamespace\nc__builtin__\nobject\nN\x87R.";
        let arena = run_with(data, false).unwrap();
        let Obj::Object(o) = arena.get(arena.root) else {
            panic!();
        };
        assert_eq!(arena.class_name(o), "argparse.Namespace");
        assert!(o.args.is_empty());
    }
}
