//! The objects a pickle builds: an arena of [`Obj`] that refer to each other by [`Id`], and
//! the descriptions of storages and tensors that torch's rebuild calls leave in it.
//!
//! Objects are small, since a pickle makes one for nearly every opcode: an [`Obj`] is 32
//! bytes (a test pins it), its larger parts live behind a pointer (a storage, shared by the
//! tensors that view it, is one [`Arc`]), and a state dict's rarely present `_metadata` is
//! kept beside the dicts ([`Arena::metadata`]) rather than in each of them. Tuples cannot
//! change once made, so their items all live in one vector of the arena ([`Span`]) instead
//! of an allocation each; and the objects that cannot change and that every tensor of a
//! `torch.save` file names (`None`, `False`, `True`, `()`, the ints 0 to 255) are made at
//! most once per arena and shared: the first four start it ([`SHARED`]), each small int is
//! made the first time it is named (a DCP checkpoint is hundreds of one-tensor pickles, and
//! 256 ints made and freed for each took a tenth of its open). Opening a `torch.save` state
//! dict of a million one-element tensors that view one storage (a 101 MB file) grew peak RSS
//! by 690 MiB with these choices, from 1746 MiB without them (`tests/budget.rs`,
//! `measure_files`).

use std::collections::HashMap;
use std::sync::Arc;

use super::torch::Global;
use crate::dtype::FileDtype;
use crate::read::budget::{heap, heap_of};

/// An index into the arena.
pub(crate) type Id = u32;

/// `None`, `False`, `True` and `()`: the first objects of an arena the pickle machine makes.
pub(crate) const NONE_ID: Id = 0;
pub(crate) const FALSE_ID: Id = 1;
pub(crate) const TRUE_ID: Id = 2;
pub(crate) const EMPTY_TUPLE_ID: Id = 3;
/// How many objects the machine's arena starts with.
pub(crate) const SHARED: usize = 4;

/// A tuple's items: `len` ids from `start` in [`Arena::pool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub(crate) fn len(self) -> usize {
        self.len as usize
    }
}

/// A storage named by a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    /// The record key (`data/<key>` in a zip, the storage key in a legacy file).
    pub key: String,
    /// The storage's element type; `None` for an untyped (byte) storage.
    pub dtype: Option<FileDtype>,
    /// Its size as the persistent id declares it: elements of `dtype`, or bytes for an
    /// untyped storage. The record must hold exactly this much, as `torch.load` requires.
    pub numel: u64,
    /// Legacy views: the element offset into the root storage, and the view's length.
    pub view: Option<(i64, i64)>,
}

/// A tensor described by a rebuild call: a view into a storage, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    /// Shared with the [`Obj::Storage`] it was rebuilt from and the other tensors that view
    /// it.
    pub storage: Arc<StorageRef>,
    pub dtype: FileDtype,
    /// In elements of `dtype`, from the start of the storage (or legacy view).
    pub offset: i64,
    /// The size, then the stride, in one allocation.
    shape: Box<[i64]>,
    pub requires_grad: bool,
}

impl TensorRef {
    /// A tensor of `size` and `stride`, which the caller has checked are of one length.
    pub(crate) fn new(
        storage: Arc<StorageRef>,
        dtype: FileDtype,
        offset: i64,
        size: &[i64],
        stride: &[i64],
    ) -> Self {
        debug_assert_eq!(size.len(), stride.len());
        TensorRef {
            storage,
            dtype,
            offset,
            shape: size.iter().chain(stride).copied().collect(),
            requires_grad: false,
        }
    }

    pub(crate) fn size(&self) -> &[i64] {
        &self.shape[..self.shape.len() / 2]
    }

    pub(crate) fn stride(&self) -> &[i64] {
        &self.shape[self.shape.len() / 2..]
    }

    /// What a description costs the memory budget, in the arena's vector of them and on
    /// the heap (its storage is charged with the [`Obj::Storage`] it shares).
    pub(crate) fn cost(&self) -> u64 {
        std::mem::size_of::<TensorRef>() as u64 + heap_of(self.shape.len(), 8)
    }
}

/// An object of the machine.
#[derive(Debug)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Span),
    Set(Vec<Id>),
    Dict(DictObj),
    Global(Global),
    /// A global outside the allowlist, named and never imported: `argparse.Namespace`,
    /// `os.system`.
    Class(Box<ClassRef>),
    /// What the pickle built with a [`Class`](Obj::Class): its arguments and state, as data.
    Object(Box<OpaqueObj>),
    /// Where the storage was saved (`cpu`, `cuda:0`) is not kept: tensors are placed where
    /// `ReadOptions::device` says.
    Storage(Arc<StorageRef>),
    /// An index into [`Arena::tensors`].
    Tensor(usize),
    Device(String),
    Dtype(FileDtype),
}

impl Obj {
    /// What the object's own allocations cost the memory budget (its inline 32 bytes
    /// aside): a string's bytes, a list's items, a boxed part. A tuple's items are in the
    /// arena's pool, charged there.
    pub(crate) fn heap_bytes(&self) -> u64 {
        let arc = |inner: usize| heap(2 * std::mem::size_of::<usize>() + inner);
        match self {
            Obj::Str(s) | Obj::Device(s) => heap(s.capacity()),
            Obj::Bytes(b) | Obj::BigInt(b) => heap(b.capacity()),
            Obj::List(v) | Obj::Set(v) => heap_of(v.capacity(), 4),
            Obj::Dict(d) => heap_of(d.items.capacity(), 8),
            Obj::Class(c) => {
                heap(std::mem::size_of::<ClassRef>())
                    + heap(c.module.capacity())
                    + heap(c.name.capacity())
            }
            Obj::Object(o) => {
                heap(std::mem::size_of::<OpaqueObj>())
                    + heap_of(o.args.capacity(), 4)
                    + heap_of(o.kwargs.capacity(), 8)
                    + heap_of(o.list_items.capacity(), 4)
                    + heap_of(o.dict_items.capacity(), 8)
            }
            Obj::Storage(s) => arc(std::mem::size_of::<StorageRef>()) + heap(s.key.capacity()),
            Obj::None
            | Obj::Bool(_)
            | Obj::Int(_)
            | Obj::Float(_)
            | Obj::Tuple(_)
            | Obj::Global(_)
            | Obj::Tensor(_)
            | Obj::Dtype(_) => 0,
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Obj::None => "NoneType",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::BigInt(_) => "int beyond 64 bits",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::List(_) => "list",
            Obj::Tuple(_) => "tuple",
            Obj::Set(_) => "set",
            Obj::Dict(_) => "dict",
            Obj::Global(_) | Obj::Class(_) => "global",
            Obj::Object(_) => "object",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "Tensor",
            Obj::Device(_) => "torch.device",
            Obj::Dtype(_) => "torch.dtype",
        }
    }
}

/// A class or function outside the allowlist, by name only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClassRef {
    pub module: String,
    pub name: String,
}

/// An object of a class outside the allowlist: what `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST`
/// or `OBJ` would have called it with, and what `BUILD`, `APPENDS` and `SETITEMS` would have
/// given it. Nothing is called; this is the record of what the pickle asked for.
#[derive(Debug)]
pub(crate) struct OpaqueObj {
    /// The [`Obj::Class`] it was made with.
    pub class: Id,
    pub args: Vec<Id>,
    /// `NEWOBJ_EX`'s keyword arguments.
    pub kwargs: Vec<(Id, Id)>,
    /// `BUILD`'s state: usually the instance `__dict__`, or a `(dict, slots)` pair.
    pub state: Option<Id>,
    /// Made by `cls.__new__(cls, *args)` (`NEWOBJ`, `NEWOBJ_EX`, protocol 0's
    /// `copyreg._reconstructor`) rather than by a call (`REDUCE`, `INST`, `OBJ`).
    pub new: bool,
    /// What `APPENDS` added (a `list` subclass).
    pub list_items: Vec<Id>,
    /// What `SETITEMS` added (a `dict` subclass).
    pub dict_items: Vec<(Id, Id)>,
}

#[derive(Debug, Default)]
pub(crate) struct DictObj {
    pub items: Vec<(Id, Id)>,
    pub ordered: bool,
}

/// The objects a pickle built, its root, and the tensors it described.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    pub objs: Vec<Obj>,
    /// The items of every tuple, each tuple's a [`Span`] of them.
    pub pool: Vec<Id>,
    pub root: Id,
    pub tensors: Vec<TensorRef>,
    /// The `_metadata` attribute a `BUILD` gave a state dict's `OrderedDict`, by the dict.
    pub metadata: HashMap<Id, Id>,
    /// How many objects the pickle made, each shared object counted each time.
    pub made: u64,
}

impl Arena {
    pub(crate) fn get(&self, id: Id) -> &Obj {
        &self.objs[id as usize]
    }

    /// The items of a tuple.
    pub(crate) fn tuple(&self, span: Span) -> &[Id] {
        let start = span.start as usize;
        &self.pool[start..start + span.len()]
    }

    /// The items of object `id` when it is a tuple or a list.
    pub(crate) fn sequence(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Obj::Tuple(t) => Some(self.tuple(*t)),
            Obj::List(v) => Some(v),
            _ => None,
        }
    }

    /// The tensors that object `from` holds, at any depth, each once: what making `from` a
    /// value reads.
    pub(crate) fn tensors_reachable(&self, from: Id) -> Vec<usize> {
        let mut seen = vec![false; self.objs.len()];
        let mut todo = vec![from];
        let mut tensors = Vec::new();
        fn pairs(items: &[(Id, Id)]) -> impl Iterator<Item = Id> + '_ {
            items.iter().flat_map(|&(k, v)| [k, v])
        }
        while let Some(id) = todo.pop() {
            let Some(slot) = seen.get_mut(id as usize) else {
                continue;
            };
            if std::mem::replace(slot, true) {
                continue;
            }
            match self.get(id) {
                Obj::Tensor(i) => tensors.push(*i),
                Obj::List(v) | Obj::Set(v) => todo.extend(v),
                Obj::Tuple(span) => todo.extend(self.tuple(*span)),
                Obj::Dict(d) => todo.extend(pairs(&d.items)),
                Obj::Object(o) => {
                    todo.push(o.class);
                    todo.extend(o.args.iter().chain(&o.list_items).chain(&o.state));
                    todo.extend(pairs(&o.kwargs).chain(pairs(&o.dict_items)));
                }
                _ => {}
            }
            todo.extend(self.metadata_of(id));
        }
        tensors
    }

    /// The `_metadata` of dict `id`, if a `BUILD` gave it one.
    pub(crate) fn metadata_of(&self, id: Id) -> Option<Id> {
        self.metadata.get(&id).copied()
    }

    /// The class an opaque object was made with (the machine makes objects only from
    /// classes; `None` would be a bug).
    pub(crate) fn class_of(&self, obj: &OpaqueObj) -> Option<&ClassRef> {
        match self.get(obj.class) {
            Obj::Class(c) => Some(c),
            _ => None,
        }
    }

    /// `module.name` of an opaque object's class.
    pub(crate) fn class_name(&self, obj: &OpaqueObj) -> String {
        self.class_of(obj)
            .map_or_else(|| "?".to_string(), |c| format!("{}.{}", c.module, c.name))
    }

    /// The string-keyed attributes an object's `BUILD` state gives it, in order: the state
    /// when it is a dict, or both dicts of a `(dict, slots)` pair. Empty when it has none.
    pub(crate) fn attributes(&self, obj: &OpaqueObj) -> Vec<(&str, Id)> {
        // A torch.fx GraphModule is a call of a reduce function with the module's
        // `__dict__` as an argument, and no state.
        let body = self
            .class_of(obj)
            .and_then(|c| graph_module_body(&c.module, &c.name));
        let Some(state) = obj
            .state
            .or_else(|| body.and_then(|i| obj.args.get(i).copied()))
        else {
            return Vec::new();
        };
        let dicts: Vec<&DictObj> = match self.get(state) {
            Obj::Dict(d) => vec![d],
            Obj::Tuple(t) if t.len() == 2 => self
                .tuple(*t)
                .iter()
                .filter_map(|&i| match self.get(i) {
                    Obj::Dict(d) => Some(d),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        dicts
            .into_iter()
            .flat_map(|d| d.items.iter())
            .filter_map(|&(k, v)| match self.get(k) {
                Obj::Str(s) => Some((s.as_str(), v)),
                _ => None,
            })
            .collect()
    }

    /// What an object's `BUILD` state sets `name` to last, as Python's `BUILD` leaves it
    /// (a `(dict, slots)` state sets the slots after the dict): the last of
    /// [`attributes`](Self::attributes) named so, found without making that list. DCP's
    /// `.metadata` asks it of about ten fields for every chunk.
    pub(crate) fn last_attribute(&self, obj: &OpaqueObj, name: &str) -> Option<Id> {
        let body = self
            .class_of(obj)
            .and_then(|c| graph_module_body(&c.module, &c.name));
        let state = obj
            .state
            .or_else(|| body.and_then(|i| obj.args.get(i).copied()))?;
        let in_dict = |d: &DictObj| {
            let named = |&(k, v): &(Id, Id)| match self.get(k) {
                Obj::Str(s) if s == name => Some(v),
                _ => None,
            };
            d.items.iter().rev().find_map(named)
        };
        match self.get(state) {
            Obj::Dict(d) => in_dict(d),
            Obj::Tuple(t) if t.len() == 2 => {
                (self.tuple(*t).iter().rev()).find_map(|&i| match self.get(i) {
                    Obj::Dict(d) => in_dict(d),
                    _ => None,
                })
            }
            _ => None,
        }
    }

    /// The attribute `name` of an object's `BUILD` state.
    pub(crate) fn attribute(&self, obj: &OpaqueObj, name: &str) -> Option<Id> {
        self.attributes(obj)
            .into_iter()
            .find_map(|(k, v)| (k == name).then_some(v))
    }
}

/// Where the module's `__dict__` (the "body") is among the arguments of the functions that
/// rebuild a `torch.fx.GraphModule`, when `module.name` is one:
/// `reduce_graph_module(body, import_block)` (what `torch.save` writes),
/// `reduce_package_graph_module(importer, body, generated_module_name)` and
/// `reduce_deploy_graph_module(importer, body, import_block)`. The body holds what a pickled
/// `nn.Module`'s state does (`_parameters`, `_buffers`, `_modules`), and the generated
/// Python code as the string `_code`, which is never run.
pub(crate) fn graph_module_body(module: &str, name: &str) -> Option<usize> {
    match (module, name) {
        ("torch.fx.graph_module", "reduce_graph_module") => Some(0),
        ("torch.fx.graph_module", "reduce_package_graph_module" | "reduce_deploy_graph_module") => {
            Some(1)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opaque(class: Id, state: Option<Id>) -> OpaqueObj {
        OpaqueObj {
            class,
            args: Vec::new(),
            kwargs: Vec::new(),
            state,
            new: false,
            list_items: Vec::new(),
            dict_items: Vec::new(),
        }
    }

    /// `last_attribute` is the last of `attributes` with the name, for a dict state, a
    /// `(dict, slots)` state that sets a name in both, a name set twice in one dict, and
    /// states that set nothing.
    #[test]
    fn the_last_attribute_is_the_last_of_the_attributes() {
        let mut arena = Arena::default();
        let mut add = |obj: Obj| {
            arena.objs.push(obj);
            (arena.objs.len() - 1) as Id
        };
        let class = add(Obj::Class(Box::new(ClassRef {
            module: "m".into(),
            name: "C".into(),
        })));
        let (a, b, c) = (
            add(Obj::Str("a".into())),
            add(Obj::Str("b".into())),
            add(Obj::Int(0)),
        );
        let (one, two, three) = (add(Obj::Int(1)), add(Obj::Int(2)), add(Obj::Int(3)));
        let dict = |items: Vec<(Id, Id)>| {
            Obj::Dict(DictObj {
                items,
                ordered: false,
            })
        };
        let first = add(dict(vec![(a, one), (b, two), (a, three), (c, one)]));
        let slots = add(dict(vec![(b, three)]));
        let not_a_dict = add(Obj::Int(7));
        let empty = add(dict(Vec::new()));
        arena.pool.extend([first, slots, first, not_a_dict]);
        let pair = add(Obj::Tuple(Span { start: 0, len: 2 }));
        let odd_pair = add(Obj::Tuple(Span { start: 2, len: 2 }));
        for state in [
            Some(first),
            Some(pair),
            Some(odd_pair),
            Some(empty),
            Some(one),
            None,
        ] {
            let obj = opaque(class, state);
            for name in ["a", "b", "c", "d"] {
                let listed = arena
                    .attributes(&obj)
                    .into_iter()
                    .rfind(|(k, _)| *k == name);
                assert_eq!(
                    arena.last_attribute(&obj, name),
                    listed.map(|(_, v)| v),
                    "{state:?} {name}"
                );
            }
        }
        let obj = |state| opaque(class, Some(state));
        assert_eq!(arena.last_attribute(&obj(first), "a"), Some(three));
        assert_eq!(arena.last_attribute(&obj(pair), "b"), Some(three));
    }

    #[test]
    fn an_object_is_32_bytes() {
        // What every opcode of a pickle may cost; the memory budget's charges assume it.
        assert_eq!(std::mem::size_of::<Obj>(), 32);
    }
}
