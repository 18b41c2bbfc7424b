//! Python values as a checkpoint holds them: the tree `torch.load` returns.

use indexmap::IndexMap;
use tch::Tensor;

/// A Python value from (or for) a checkpoint: what `torch.load(path)` returns, with tensors as
/// tch tensors. Dicts keep their order and may have keys of any hashable kind (optimizer
/// state is keyed by integers), so they are lists of pairs.
#[derive(Debug)]
#[non_exhaustive]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` that fits in 64 bits.
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// A `bytes` or `bytearray`.
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict` or `OrderedDict`, in order.
    Dict(Vec<(Value, Value)>),
    /// A tensor or `nn.Parameter`.
    Tensor(Tensor),
}

impl Value {
    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` (a `bool` is not one here).
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

    /// The tensor, if this is one.
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// The value under the string key `key`, if this is a dict that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A shallow copy: tensors are shallow clones that share storage.
    pub fn shallow_clone(&self) -> Value {
        match self {
            Value::None => Value::None,
            Value::Bool(b) => Value::Bool(*b),
            Value::Int(i) => Value::Int(*i),
            Value::Float(f) => Value::Float(*f),
            Value::Str(s) => Value::Str(s.clone()),
            Value::Bytes(b) => Value::Bytes(b.clone()),
            Value::List(v) => Value::List(v.iter().map(Value::shallow_clone).collect()),
            Value::Tuple(v) => Value::Tuple(v.iter().map(Value::shallow_clone).collect()),
            Value::Dict(v) => Value::Dict(
                v.iter()
                    .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                    .collect(),
            ),
            Value::Tensor(t) => Value::Tensor(t.shallow_clone()),
        }
    }

    /// A short name of the value's Python type, for messages: `dict`, `int`, `Tensor`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "Tensor",
        }
    }
}

/// The `_metadata` of a state dict: for each module prefix (`""` for the root, `"layer1.0.bn1"`),
/// the module's saved attributes, of which PyTorch writes `version`.
pub type Metadata = IndexMap<String, IndexMap<String, Value>>;
