//! [`Object`]: an instance of a class this crate does not import, as the pickle described it.

use super::Value;

/// An object of a class outside the allowlist, as data: the class's module and name, and
/// what the pickle built the object with. Nothing was imported, instantiated or called; a
/// hostile `os.system('rm -rf ~')` is an `Object` of class `os.system` with one argument.
///
/// - [`args`](Self::args) (and [`kwargs`](Self::kwargs)): what `REDUCE`, `NEWOBJ`,
///   `NEWOBJ_EX`, `INST` or `OBJ` would have called the class with;
/// - [`state`](Self::state): what `BUILD` would have given `__setstate__`, usually the
///   instance `__dict__` (or a `(dict, slots)` pair), whose entries
///   [`get_attr`](Self::get_attr) looks up;
/// - [`dict_items`](Self::dict_items), [`list_items`](Self::list_items): what `SETITEMS` and
///   `APPENDS` added to an instance of a `dict` or `list` subclass (Lightning's
///   `AttributeDict`).
///
/// Tensors inside are read like any other. Some classes are read as plain values instead:
/// numpy scalars as [`Value::Int`], [`Value::Float`] or [`Value::Bool`], numpy arrays as
/// [`Value::Tensor`], `pathlib` paths as [`Value::Str`], and `datetime.datetime`, `date` and
/// `time` as their `isoformat()` string.
///
/// `Display` is Python's `repr` of the object as if its class were imported:
/// `argparse.Namespace(model='resnet50', lr=0.05)`.
///
/// ```no_run
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// use tch_state_dict::Value;
///
/// // RepDistiller: torch.load(p, weights_only=False)['opt'].model
/// let ckpt = Value::load("resnet50_last.pth")?;
/// let opt = ckpt.get("opt").and_then(Value::as_object).expect("an options object");
/// assert_eq!(opt.qualified_name(), "argparse.Namespace");
/// println!("{opt}"); // argparse.Namespace(model='resnet50', ...)
/// let arch = opt.get_attr("model").and_then(Value::as_str);
/// # let _ = arch;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Object {
    pub(crate) module: String,
    pub(crate) name: String,
    pub(crate) args: Vec<Value>,
    pub(crate) kwargs: Vec<(Value, Value)>,
    pub(crate) state: Option<Box<Value>>,
    pub(crate) list_items: Vec<Value>,
    pub(crate) dict_items: Vec<(Value, Value)>,
    /// Made by `cls.__new__(cls, *args)` (`NEWOBJ`, `NEWOBJ_EX`), not by `cls(*args)`.
    pub(crate) new: bool,
}

impl Object {
    /// The class's module: `argparse`.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The class's name: `Namespace`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `module.name`: `argparse.Namespace`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }

    /// The positional arguments the class was called with (empty for `NEWOBJ` of `()`).
    pub fn args(&self) -> &[Value] {
        &self.args
    }

    /// The keyword arguments of `NEWOBJ_EX` (protocol 4 and later).
    pub fn kwargs(&self) -> &[(Value, Value)] {
        &self.kwargs
    }

    /// Whether the pickle made it as `cls.__new__(cls, *args)` (`NEWOBJ`, `NEWOBJ_EX`, as
    /// `copyreg` reduces a plain object from protocol 2 on), not by calling the class or
    /// function with its arguments (`REDUCE`). A faithful save
    /// ([`SaveOptions::objects`](crate::SaveOptions::objects)) makes it the same way.
    pub fn made_by_new(&self) -> bool {
        self.new
    }

    /// The `BUILD` state, if the pickle gave one.
    pub fn state(&self) -> Option<&Value> {
        self.state.as_deref()
    }

    /// What `APPENDS` added: the items of an instance of a `list` subclass.
    pub fn list_items(&self) -> &[Value] {
        &self.list_items
    }

    /// What `SETITEMS` added: the items of an instance of a `dict` subclass.
    pub fn dict_items(&self) -> &[(Value, Value)] {
        &self.dict_items
    }

    /// The attributes its state gives it, in order: the state's entries when it is a dict
    /// with string keys, or those of both dicts of a `(dict, slots)` pair. A
    /// `torch.fx.GraphModule`, which is pickled as a call of
    /// `torch.fx.graph_module.reduce_graph_module` with the module's `__dict__` and no
    /// state, has the attributes of that `__dict__` (its generated code is `_code`, a
    /// string, never run).
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &Value)> + '_ {
        let body = crate::read::graph_module_body(&self.module, &self.name)
            .filter(|_| self.state.is_none())
            .and_then(|i| self.args.get(i));
        let dicts: Vec<&super::Dict> = match self.state.as_deref().or(body) {
            Some(Value::Dict(d)) => vec![d],
            Some(Value::Tuple(v)) if v.len() == 2 => v.iter().filter_map(Value::as_dict).collect(),
            _ => Vec::new(),
        };
        dicts
            .into_iter()
            .flat_map(|d| d.items.iter())
            .filter_map(|(k, v)| Some((k.as_str()?, v)))
    }

    /// The attribute `name` (`obj.name` in Python), looked up in the state: `lr` of an
    /// `argparse.Namespace`. `None` when the state has no such entry.
    pub fn get_attr(&self, name: &str) -> Option<&Value> {
        self.attrs().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// A shallow copy: tensors are shallow clones that share storage.
    pub fn shallow_clone(&self) -> Object {
        let all = |v: &[Value]| v.iter().map(Value::shallow_clone).collect();
        let pairs = |v: &[(Value, Value)]| {
            v.iter()
                .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                .collect()
        };
        Object {
            module: self.module.clone(),
            name: self.name.clone(),
            args: all(&self.args),
            kwargs: pairs(&self.kwargs),
            state: self.state.as_ref().map(|s| Box::new(s.shallow_clone())),
            list_items: all(&self.list_items),
            dict_items: pairs(&self.dict_items),
            new: self.new,
        }
    }
}
