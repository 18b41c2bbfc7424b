//! PyTorch's module hierarchy over tch tensors: what `load_state_dict` walks.
//!
//! # Design note
//!
//! tch keeps a model's variables in a `VarStore`, a flat `HashMap` from dotted name to tensor:
//! it records neither the order in which modules registered their tensors nor which modules
//! exist. PyTorch's `load_state_dict` depends on both. Missing keys come out in the model's
//! `state_dict()` order, and unexpected keys come out module by module, in the pre-order of
//! the module tree, each reported by the deepest module its name reaches. So a target
//! describes itself as a [`ModuleTree`]: modules in registration order, each with its own
//! tensors in registration order, and a [`ModuleKind`] where loading has special rules
//! (BatchNorm's `num_batches_tracked`).
//!
//! The tree holds shallow clones of the model's tensors (they share storage with the model),
//! so loading writes into the model itself, and building a tree borrows nothing: a model can
//! be used, and its `VarStore` borrowed, while a tree of it exists.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::HashMap;

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::Error;
use crate::natural;

/// A `HashMap` with a fast hasher, for maps of keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The kind of PyTorch module a node of a [`ModuleTree`] stands for. It decides the module's
/// version in a state dict's `_metadata`, and the rules that apply when it is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModuleKind {
    /// A module without special loading rules (`_version = 1` in PyTorch).
    Module,
    /// A BatchNorm module (`_NormBase`, `_version = 2`). When the checkpoint lacks its
    /// `num_batches_tracked` and the checkpoint's `_metadata` has no version for the module,
    /// or a version below 2, the buffer keeps its current value and is not reported missing.
    BatchNorm,
}

impl ModuleKind {
    /// The `_version` PyTorch gives this kind of module, as saved in `_metadata`.
    pub fn version(self) -> i64 {
        match self {
            ModuleKind::Module => 1,
            ModuleKind::BatchNorm => 2,
        }
    }
}

#[derive(Debug)]
struct Node {
    path: String,
    kind: ModuleKind,
    children: Vec<usize>,
    locals: Vec<usize>,
}

#[derive(Debug)]
struct Entry {
    key: String,
    module: usize,
    tensor: Tensor,
}

/// A model's modules and tensors, in PyTorch's registration order.
///
/// The root module has the empty path and is named by [`type_name`](Self::type_name), which
/// `load_state_dict`'s errors print as PyTorch prints `self.__class__.__name__`. Modules are
/// added with their dotted path (`layer1.0.bn1`), tensors with their full key
/// (`layer1.0.bn1.weight`); missing parent modules are created on the way. The
/// [`state_dict`](crate::state_dict) order is PyTorch's: each module's own tensors in the
/// order they were added, then its children, depth first, in the order they were added.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_state_dict::{ModuleKind, ModuleTree};
///
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// let mut tree = ModuleTree::new("Net");
/// tree.add_tensor("fc.weight", Tensor::zeros([10, 4], (Kind::Float, Device::Cpu)))?;
/// tree.add_tensor("fc.bias", Tensor::zeros([10], (Kind::Float, Device::Cpu)))?;
/// tree.add_module("relu", ModuleKind::Module)?;
/// assert_eq!(tree.keys().collect::<Vec<_>>(), ["fc.weight", "fc.bias"]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ModuleTree {
    type_name: String,
    nodes: Vec<Node>,
    entries: Vec<Entry>,
    module_index: FastMap<String, usize>,
    key_index: FastMap<String, usize>,
    /// Entry ids in state_dict order; computed on first use after a change.
    order: OnceCell<Vec<usize>>,
    /// Whether a BatchNorm without `num_batches_tracked` consumes the checkpoint's counter.
    drops_counters: bool,
}

impl Clone for ModuleTree {
    /// Clones the tree; the tensors are shallow clones that share storage with the original,
    /// as the tree's tensors share storage with the model.
    fn clone(&self) -> Self {
        ModuleTree {
            type_name: self.type_name.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| Node {
                    path: n.path.clone(),
                    kind: n.kind,
                    children: n.children.clone(),
                    locals: n.locals.clone(),
                })
                .collect(),
            entries: self
                .entries
                .iter()
                .map(|e| Entry {
                    key: e.key.clone(),
                    module: e.module,
                    tensor: e.tensor.shallow_clone(),
                })
                .collect(),
            module_index: self.module_index.clone(),
            key_index: self.key_index.clone(),
            order: self.order.clone(),
            drops_counters: self.drops_counters,
        }
    }
}

impl ModuleTree {
    /// An empty tree whose root module is called `type_name` (`"ResNet"`, `"Net"`).
    pub fn new(type_name: impl Into<String>) -> Self {
        let root = Node {
            path: String::new(),
            kind: ModuleKind::Module,
            children: Vec::new(),
            locals: Vec::new(),
        };
        let mut module_index = FastMap::default();
        module_index.insert(String::new(), 0);
        ModuleTree {
            type_name: type_name.into(),
            nodes: vec![root],
            entries: Vec::new(),
            module_index,
            key_index: FastMap::default(),
            order: OnceCell::new(),
            drops_counters: false,
        }
    }

    /// A tree of every variable of `vs`, named `"VarStore"`, in natural order: a `VarStore`
    /// records no registration order, so modules and tensors are sorted by name with numbers
    /// compared by value (`layer1.9` before `layer1.10`), and each module's own tensors come
    /// before its submodules'. Every module is a plain [`ModuleKind::Module`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when a variable's name is not a valid state-dict key (an empty
    /// segment, or a name that is also a module's path).
    pub fn from_var_store(vs: &VarStore) -> Result<Self, Error> {
        let mut vars: Vec<(String, Tensor)> = {
            let variables = lock(&vs.variables_);
            variables
                .named_variables
                .iter()
                .map(|(k, t)| (k.clone(), t.shallow_clone()))
                .collect()
        };
        vars.sort_by(|a, b| natural::cmp_names(&a.0, &b.0));
        let mut tree = ModuleTree::new("VarStore");
        for (key, tensor) in vars {
            tree.add_tensor(&key, tensor)?;
        }
        Ok(tree)
    }

    /// A tree of the variables of `vs` in the order `keys` gives, which must name every
    /// variable of `vs` exactly once. Use it to give a model built from tch layers PyTorch's
    /// registration order (take it from Python's `list(model.state_dict())`).
    ///
    /// # Errors
    ///
    /// [`Error::KeyOrder`] when `keys` names a variable that `vs` lacks, leaves one out, or
    /// names one twice; [`Error::InvalidKey`] as for [`from_var_store`](Self::from_var_store).
    pub fn from_var_store_ordered<I, S>(vs: &VarStore, keys: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut vars: HashMap<String, Tensor> = {
            let variables = lock(&vs.variables_);
            variables
                .named_variables
                .iter()
                .map(|(k, t)| (k.clone(), t.shallow_clone()))
                .collect()
        };
        let mut tree = ModuleTree::new("VarStore");
        let mut unknown = Vec::new();
        let mut repeated = Vec::new();
        for key in keys {
            let key = key.as_ref();
            match vars.remove(key) {
                Some(tensor) => tree.add_tensor(key, tensor)?,
                None if tree.key_index.contains_key(key) => repeated.push(key.to_string()),
                None => unknown.push(key.to_string()),
            }
        }
        let mut left_out: Vec<String> = vars.into_keys().collect();
        left_out.sort_by(|a, b| natural::cmp_names(a, b));
        if unknown.is_empty() && repeated.is_empty() && left_out.is_empty() {
            Ok(tree)
        } else {
            Err(Error::KeyOrder {
                unknown,
                repeated,
                left_out,
            })
        }
    }

    /// Whether a BatchNorm of the model that has no `num_batches_tracked` consumes the
    /// checkpoint's counter (default `false`; `true` when a bare `VarStore` is the target).
    ///
    /// tch's `batch_norm` keeps `running_mean` and `running_var` but no counter, so a
    /// checkpoint from PyTorch loaded strictly into a tch model (`tch::vision::resnet18`)
    /// would report every `num_batches_tracked` as unexpected. With this rule, a key
    /// `P.num_batches_tracked` of the checkpoint, where the model has `P.running_mean` and
    /// `P.running_var` but no `P.num_batches_tracked`, is consumed: it is neither loaded nor
    /// unexpected, and it is listed in [`IncompatibleKeys::dropped_keys`](crate::IncompatibleKeys::dropped_keys).
    /// A tree that describes a PyTorch model (the crate's ResNets, or a tree from
    /// [`from_var_store_ordered`](Self::from_var_store_ordered)) keeps PyTorch's semantics,
    /// where such a counter is unexpected: leave it off there.
    pub fn drop_batch_norm_counters(mut self, drop: bool) -> Self {
        self.drops_counters = drop;
        self
    }

    /// Whether [`drop_batch_norm_counters`](Self::drop_batch_norm_counters) is on.
    pub fn drops_batch_norm_counters(&self) -> bool {
        self.drops_counters
    }

    /// Renames the root module, as PyTorch's error messages print it.
    pub fn with_type_name(mut self, type_name: impl Into<String>) -> Self {
        self.type_name = type_name.into();
        self
    }

    /// The root module's name.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// Declares the module at `path` (dotted, relative to the root) with its kind, creating
    /// its missing parents as plain modules. Declaring a module again sets its kind and keeps
    /// its place. Modules without tensors (`relu`, `avgpool`) matter: PyTorch reports an
    /// unexpected key at the deepest module its name reaches.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when `path` has an empty segment or names a tensor.
    pub fn add_module(&mut self, path: &str, kind: ModuleKind) -> Result<(), Error> {
        let id = self.module_id(path)?;
        self.nodes[id].kind = kind;
        Ok(())
    }

    /// Adds a tensor under its full key (`layer1.0.conv1.weight`) as the next tensor of its
    /// module, creating the module and its parents as plain modules where missing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the key has an empty segment, is already present, or is
    /// also a module's path.
    pub fn add_tensor(&mut self, key: &str, tensor: Tensor) -> Result<(), Error> {
        if !tensor.defined() {
            return Err(invalid(key, "the tensor is undefined"));
        }
        if self.key_index.contains_key(key) {
            return Err(invalid(key, "the key is already in the tree"));
        }
        if self.module_index.contains_key(key) {
            return Err(invalid(key, "the key is also a module's path"));
        }
        if key.split('.').any(str::is_empty) {
            return Err(invalid(key, "the key has an empty segment"));
        }
        let parent = key.rsplit_once('.').map_or("", |(parent, _)| parent);
        let module = self.module_id(parent)?;
        let id = self.entries.len();
        self.entries.push(Entry {
            key: key.to_string(),
            module,
            tensor,
        });
        self.nodes[module].locals.push(id);
        self.key_index.insert(key.to_string(), id);
        self.order.take();
        Ok(())
    }

    /// The id of the module at `path`, created with its parents where missing.
    fn module_id(&mut self, path: &str) -> Result<usize, Error> {
        if let Some(&id) = self.module_index.get(path) {
            return Ok(id);
        }
        if path.split('.').any(str::is_empty) {
            return Err(invalid(path, "the module path has an empty segment"));
        }
        if self.key_index.contains_key(path) {
            return Err(invalid(path, "the module path is also a tensor's key"));
        }
        let parent = match path.rsplit_once('.') {
            Some((parent, _)) => self.module_id(parent)?,
            None => 0,
        };
        let id = self.nodes.len();
        self.nodes.push(Node {
            path: path.to_string(),
            kind: ModuleKind::Module,
            children: Vec::new(),
            locals: Vec::new(),
        });
        self.nodes[parent].children.push(id);
        self.module_index.insert(path.to_string(), id);
        self.order.take();
        Ok(id)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the tree holds a tensor under `key`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.key_index.contains_key(key)
    }

    /// The tensor under `key` (it shares storage with the model).
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.key_index.get(key).map(|&i| &self.entries[i].tensor)
    }

    /// The keys in `state_dict()` order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.order().iter().map(|&i| self.entries[i].key.as_str())
    }

    /// The keys and tensors in `state_dict()` order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.order()
            .iter()
            .map(|&i| (self.entries[i].key.as_str(), &self.entries[i].tensor))
    }

    /// The modules in pre-order (the root first, with path `""`), with their kinds.
    pub fn modules(&self) -> impl Iterator<Item = (&str, ModuleKind)> + '_ {
        self.preorder()
            .into_iter()
            .map(|i| (self.nodes[i].path.as_str(), self.nodes[i].kind))
    }

    /// Whether a module is declared at `path` (`""` is the root).
    pub fn has_module(&self, path: &str) -> bool {
        self.module_index.contains_key(path)
    }

    /// The kind of the module at `path`, if declared.
    pub fn module_kind(&self, path: &str) -> Option<ModuleKind> {
        self.module_index.get(path).map(|&i| self.nodes[i].kind)
    }

    fn preorder(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![0];
        while let Some(id) = stack.pop() {
            out.push(id);
            stack.extend(self.nodes[id].children.iter().rev());
        }
        out
    }

    fn order(&self) -> &[usize] {
        self.order.get_or_init(|| {
            let mut order = Vec::with_capacity(self.entries.len());
            for id in self.preorder() {
                order.extend(&self.nodes[id].locals);
            }
            order
        })
    }

    /// Entries in state_dict order with what `load_state_dict` needs of each.
    pub(crate) fn slots(&self) -> impl Iterator<Item = Slot<'_>> + '_ {
        self.order().iter().map(|&i| {
            let e = &self.entries[i];
            let node = &self.nodes[e.module];
            Slot {
                key: &e.key,
                local_name: &e.key[e.key.len() - local_len(&e.key, &node.path)..],
                module_path: &node.path,
                module_kind: node.kind,
                tensor: &e.tensor,
            }
        })
    }

    /// The pre-order position of every module, by path, for ordering unexpected keys.
    pub(crate) fn module_ranks(&self) -> HashMap<&str, usize> {
        self.preorder()
            .into_iter()
            .enumerate()
            .map(|(rank, id)| (self.nodes[id].path.as_str(), rank))
            .collect()
    }
}

fn local_len(key: &str, module_path: &str) -> usize {
    if module_path.is_empty() {
        key.len()
    } else {
        key.len() - module_path.len() - 1
    }
}

/// One tensor of a target, as `load_state_dict` sees it.
pub(crate) struct Slot<'a> {
    pub key: &'a str,
    pub local_name: &'a str,
    pub module_path: &'a str,
    pub module_kind: ModuleKind,
    pub tensor: &'a Tensor,
}

fn invalid(key: &str, reason: &'static str) -> Error {
    Error::InvalidKey {
        key: key.to_string(),
        reason,
    }
}

/// Locks a VarStore's variables (`&vs.variables_`). A poisoned lock only means another thread panicked while
/// holding it; the map itself is still whole, so it is used as it is.
pub(crate) fn lock(
    variables: &std::sync::Mutex<tch::nn::Variables>,
) -> std::sync::MutexGuard<'_, tch::nn::Variables> {
    variables
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A model that `load_state_dict` can load into and `state_dict` can read: anything that can
/// describe itself as a [`ModuleTree`].
///
/// It is implemented for `tch::nn::VarStore` (natural order, named `"VarStore"`), for
/// [`ModuleTree`] itself, and for this crate's models. Implement it for your own model by
/// building a tree of its tensors in PyTorch's registration order.
pub trait StateDictModule {
    /// The model's modules and tensors; the tensors share storage with the model.
    ///
    /// # Errors
    ///
    /// When the model cannot be described, for example a `VarStore` variable whose name
    /// is not a valid key ([`Error::InvalidKey`]).
    fn module_tree(&self) -> Result<Cow<'_, ModuleTree>, Error>;
}

impl StateDictModule for ModuleTree {
    fn module_tree(&self) -> Result<Cow<'_, ModuleTree>, Error> {
        Ok(Cow::Borrowed(self))
    }
}

/// A bare `VarStore` is a tch model: its tree is [`ModuleTree::from_var_store`]'s, with
/// [`drop_batch_norm_counters`](ModuleTree::drop_batch_norm_counters) on, so that a PyTorch
/// checkpoint loads strictly into tch's BatchNorms, which have no `num_batches_tracked`.
impl StateDictModule for VarStore {
    fn module_tree(&self) -> Result<Cow<'_, ModuleTree>, Error> {
        ModuleTree::from_var_store(self).map(|t| Cow::Owned(t.drop_batch_norm_counters(true)))
    }
}

impl<T: StateDictModule + ?Sized> StateDictModule for &T {
    fn module_tree(&self) -> Result<Cow<'_, ModuleTree>, Error> {
        (**self).module_tree()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn t(n: i64) -> Tensor {
        Tensor::zeros([n], (Kind::Float, Device::Cpu))
    }

    #[test]
    fn state_dict_order_is_locals_then_children_depth_first() {
        let mut tree = ModuleTree::new("Net");
        tree.add_tensor("a.b.weight", t(1)).unwrap();
        tree.add_tensor("c.weight", t(1)).unwrap();
        tree.add_tensor("a.bias", t(1)).unwrap();
        tree.add_tensor("w", t(1)).unwrap();
        assert_eq!(
            tree.keys().collect::<Vec<_>>(),
            ["w", "a.bias", "a.b.weight", "c.weight"]
        );
        assert_eq!(
            tree.modules().map(|m| m.0).collect::<Vec<_>>(),
            ["", "a", "a.b", "c"]
        );
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let mut tree = ModuleTree::new("Net");
        tree.add_tensor("a.w", t(1)).unwrap();
        for (key, module) in [
            ("a.w", false),
            ("a", false),
            ("a..w", false),
            ("a.", false),
            ("", false),
            ("a.w", true),
            (".x", true),
        ] {
            let r = if module {
                tree.add_module(key, ModuleKind::Module)
            } else {
                tree.add_tensor(key, t(1))
            };
            assert!(
                matches!(r, Err(Error::InvalidKey { .. })),
                "{key:?} accepted"
            );
        }
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn redeclaring_a_module_sets_its_kind_and_keeps_its_place() {
        let mut tree = ModuleTree::new("Net");
        tree.add_tensor("bn.weight", t(1)).unwrap();
        tree.add_tensor("fc.weight", t(1)).unwrap();
        tree.add_module("bn", ModuleKind::BatchNorm).unwrap();
        assert_eq!(tree.module_kind("bn"), Some(ModuleKind::BatchNorm));
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["bn.weight", "fc.weight"]);
    }
}
