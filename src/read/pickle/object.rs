//! The objects a pickle builds: an arena of [`Obj`] that refer to each other by [`Id`], and
//! the descriptions of storages and tensors that torch's rebuild calls leave in it.

use tch::Kind;

use super::torch::Global;

/// An index into the arena.
pub(crate) type Id = u32;

/// A storage named by a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    /// The record key (`data/<key>` in a zip, the storage key in a legacy file).
    pub key: String,
    /// The storage's element type; `None` for an untyped (byte) storage.
    pub dtype: Option<Kind>,
    /// Where the storage was saved (`cpu`, `cuda:0`).
    pub location: String,
    /// Legacy views: the element offset into the root storage, and the view's length.
    pub view: Option<(i64, i64)>,
}

/// A tensor described by a rebuild call: a view into a storage, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub dtype: Kind,
    /// In elements of `dtype`, from the start of the storage (or legacy view).
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
    pub requires_grad: bool,
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
    Tuple(Vec<Id>),
    Set(Vec<Id>),
    Dict(DictObj),
    Global(Global),
    /// A global outside the allowlist, named and never imported: `argparse.Namespace`,
    /// `os.system`.
    Class(Box<ClassRef>),
    /// What the pickle built with a [`Class`](Obj::Class): its arguments and state, as data.
    Object(Box<OpaqueObj>),
    Storage(StorageRef),
    /// An index into [`Arena::tensors`].
    Tensor(usize),
    Device(String),
    Dtype(Kind),
}

impl Obj {
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
    /// What `APPENDS` added (a `list` subclass).
    pub list_items: Vec<Id>,
    /// What `SETITEMS` added (a `dict` subclass).
    pub dict_items: Vec<(Id, Id)>,
}

#[derive(Debug, Default)]
pub(crate) struct DictObj {
    pub items: Vec<(Id, Id)>,
    pub ordered: bool,
    /// The `_metadata` attribute a `BUILD` gave a state dict's `OrderedDict`.
    pub metadata: Option<Id>,
}

/// The objects a pickle built, its root, and the tensors it described.
#[derive(Debug)]
pub(crate) struct Arena {
    pub objs: Vec<Obj>,
    pub root: Id,
    pub tensors: Vec<TensorRef>,
}

impl Arena {
    pub(crate) fn get(&self, id: Id) -> &Obj {
        &self.objs[id as usize]
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
        let Some(state) = obj.state else {
            return Vec::new();
        };
        let dicts: Vec<&DictObj> = match self.get(state) {
            Obj::Dict(d) => vec![d],
            Obj::Tuple(v) if v.len() == 2 => v
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

    /// The attribute `name` of an object's `BUILD` state.
    pub(crate) fn attribute(&self, obj: &OpaqueObj, name: &str) -> Option<Id> {
        self.attributes(obj)
            .into_iter()
            .find_map(|(k, v)| (k == name).then_some(v))
    }
}
