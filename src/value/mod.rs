//! Python values as a checkpoint holds them: the tree `torch.load` returns.
//!
//! - [`Value`], [`Dict`] and [`Metadata`] here;
//! - [`Object`] (`object.rs`): an instance of a class this crate does not import, as data;
//! - `Display` of values as Python's `repr` prints them (`repr.rs`).

mod object;
mod repr;

use indexmap::IndexMap;
use tch::{Kind, Tensor};

pub use object::Object;

/// A Python value from (or for) a checkpoint: what `torch.load(path)` returns, with tensors as
/// tch tensors.
///
/// ```
/// use tch::Tensor;
/// use tch_state_dict::{StateDict, Value};
///
/// let mut model = StateDict::new();
/// model.insert("fc.weight", Tensor::zeros([10, 4], (tch::Kind::Float, tch::Device::Cpu)));
/// // {'model': model.state_dict(), 'epoch': 240, 'acc': 0.9}
/// let ckpt = Value::dict([
///     ("model", Value::from(model)),
///     ("epoch", Value::from(240)),
///     ("acc", Value::from(0.9)),
/// ]);
/// assert_eq!(ckpt.get("epoch").and_then(Value::as_int), Some(240));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` that fits in 64 bits.
    Int(i64),
    /// A larger `int`, as pickle stores it: little-endian two's complement bytes.
    BigInt(Vec<u8>),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes` or `bytearray`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple` (or `torch.Size`).
    Tuple(Vec<Value>),
    /// A `set` or `frozenset`.
    Set(Vec<Value>),
    /// A `dict` or `OrderedDict`.
    Dict(Dict),
    /// A tensor or `nn.Parameter`.
    Tensor(Tensor),
    /// A `torch.device`, as PyTorch prints it (`cpu`, `cuda:0`).
    Device(String),
    /// A `torch.dtype`. A dtype tch has no kind for (`torch.uint16`) is the
    /// [`Global`](Value::Global) `torch.uint16`.
    Dtype(Kind),
    /// An instance of a class outside the allowlist (`argparse.Namespace`, a pickled
    /// `nn.Module`), or the result of a function outside it: what the pickle built with it,
    /// recorded as data. Nothing was imported or called. numpy values, paths and datetimes
    /// are read as plain values instead (see [`Object`]).
    Object(Object),
    /// A class or function outside the allowlist named as a value (a `defaultdict`'s
    /// factory, `builtins.list`), never imported; or an allowlisted one
    /// (`collections.OrderedDict`).
    Global {
        /// Its module (`builtins`).
        module: String,
        /// Its name (`list`).
        name: String,
    },
    /// A tensor of a dtype this crate cannot hold (`torch.uint64`; see
    /// [`Error::UnsupportedDtype`](crate::Error::UnsupportedDtype)), described, not read.
    /// Only [`Checkpoint::value_with_unreadable`](crate::Checkpoint::value_with_unreadable)
    /// makes it, to show what a file holds; [`Value::load`] refuses such a tensor instead.
    Unreadable {
        /// PyTorch's name of its dtype, without `torch.`: `uint64`.
        dtype: String,
        /// Its shape.
        shape: Vec<i64>,
    },
    /// A reference back to a list, dict, tuple, set or object that encloses this value: the
    /// pickle's objects form a cycle, as an omegaconf config node's `_parent` or a list that
    /// holds itself do. Python's `repr` prints it as `[...]`, `{...}` or `...`, and so does
    /// `Display`. Sharing that is no cycle (one object under two keys) is read as two equal
    /// values instead, as before.
    ///
    /// ```
    /// # use tch_state_dict::Value;
    /// // l = [1]; l.append(l)
    /// let l = Value::List(vec![Value::Int(1), Value::Recursive { up: 1, type_name: "list" }]);
    /// assert_eq!(l.to_string(), "[1, [...]]");
    /// ```
    Recursive {
        /// How many levels up the value it refers to is: 1 is the container or object that
        /// holds this value, 2 the one that holds that, and so on. An object's `BUILD` state
        /// is a level of its own, below the object (its arguments and items are not); the
        /// values of a dict's `_metadata` are held by the dict.
        up: usize,
        /// The Python type of the value it refers to, as [`type_name`](Value::type_name)
        /// names it: `list`, `dict`, `OrderedDict`, `tuple`, `set` or `object`.
        type_name: &'static str,
    },
}

/// A Python `dict` or `OrderedDict`, in order. Keys may be of any hashable kind (optimizer
/// state is keyed by integers), so items are pairs.
#[derive(Debug, Default)]
pub struct Dict {
    /// The items, in order.
    pub items: Vec<(Value, Value)>,
    /// Whether it is an `OrderedDict` (as `state_dict()` returns) rather than a `dict`.
    pub ordered: bool,
    /// A state dict's `_metadata` attribute.
    pub metadata: Option<Metadata>,
}

impl Value {
    /// A plain `dict` with string keys, in order.
    pub fn dict<K: Into<String>>(items: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Dict(Dict {
            items: items
                .into_iter()
                .map(|(k, v)| (Value::Str(k.into()), v))
                .collect(),
            ordered: false,
            metadata: None,
        })
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` that fits in 64 bits (a `bool` is not one here).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The float, if this is a `float`.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The dict, if this is one.
    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The items, if this is a list or a tuple.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The object, if this is an instance of a class outside the allowlist.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The attribute `name`, if this is an object that has it (`value.name`):
    /// `ckpt.get("opt").and_then(|o| o.attr("lr"))` for RepDistiller's
    /// `torch.load(p)['opt'].lr`. See [`Object::get_attr`].
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.as_object()?.get_attr(name)
    }

    /// The value under the string key `key`, if this is a dict that has it (`value[key]`).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .items
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A shallow copy: tensors are shallow clones that share storage.
    pub fn shallow_clone(&self) -> Value {
        let all = |v: &[Value]| v.iter().map(Value::shallow_clone).collect();
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::BigInt(b) => Value::BigInt(b.clone()),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Bytes(b) => Value::Bytes(b.clone()),
            Value::List(v) => Value::List(all(v)),
            Value::Tuple(v) => Value::Tuple(all(v)),
            Value::Set(v) => Value::Set(all(v)),
            Value::Dict(d) => Value::Dict(Dict {
                items: d
                    .items
                    .iter()
                    .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                    .collect(),
                ordered: d.ordered,
                metadata: d.metadata.as_ref().map(shallow_clone_metadata),
            }),
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
            Value::Device(d) => Value::Device(d.clone()),
            Value::Dtype(k) => Value::Dtype(*k),
            Value::Object(o) => Value::Object(o.shallow_clone()),
            Value::Global { module, name } => Value::Global {
                module: module.clone(),
                name: name.clone(),
            },
            Value::Unreadable { dtype, shape } => Value::Unreadable {
                dtype: dtype.clone(),
                shape: shape.clone(),
            },
            Value::Recursive { up, type_name } => Value::Recursive { up: *up, type_name },
        }
    }

    /// The name of the value's Python type, for messages: `dict`, `int`, `Tensor`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Set(_) => "set",
            Value::Dict(d) if d.ordered => "OrderedDict",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "Tensor",
            Value::Device(_) => "torch.device",
            Value::Dtype(_) => "torch.dtype",
            Value::Object(_) => "object",
            Value::Global { .. } => "global",
            Value::Unreadable { .. } => "Tensor",
            Value::Recursive { type_name, .. } => type_name,
        }
    }
}

pub(crate) fn shallow_clone_metadata(m: &Metadata) -> Metadata {
    m.iter()
        .map(|(k, v)| {
            let v = v.iter().map(|(a, b)| (a.clone(), b.shallow_clone()));
            (k.clone(), v.collect())
        })
        .collect()
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<Tensor> for Value {
    fn from(v: Tensor) -> Self {
        Value::Tensor(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::List(v)
    }
}

/// The `_metadata` of a state dict: for each module prefix (`""` for the root, `"layer1.0.bn1"`),
/// the module's saved attributes, of which PyTorch writes `version`.
pub type Metadata = IndexMap<String, IndexMap<String, Value>>;
