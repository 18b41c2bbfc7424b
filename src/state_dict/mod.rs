//! [`StateDict`]: an ordered name → tensor map with the manners of PyTorch's `OrderedDict`.

use std::fmt;

use indexmap::IndexMap;
use tch::Tensor;

mod keyed;
mod lazy;

use crate::error::Error;
use crate::pyfmt;
use crate::value::{shallow_clone_metadata, Dict, Metadata, Value};

pub(crate) use keyed::Map;
pub(crate) use lazy::LazyEntry;
pub use lazy::{LazyStateDict, LazyTensor};

/// An insertion-ordered map from name to tensor, as `model.state_dict()` returns in PyTorch.
///
/// It behaves like Python's `OrderedDict`: [`insert`](Self::insert) on an existing key
/// replaces the value and keeps the key's place, [`pop`](Self::pop) keeps the order of the
/// rest. It also carries the state dict's `_metadata` (a version per module), which
/// `load_state_dict` consults for BatchNorm's `num_batches_tracked`.
///
/// Tensors are tch tensors: a `StateDict` taken from a model with
/// [`state_dict`](crate::state_dict) shares storage with the model, as in PyTorch.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// use tch_state_dict::StateDict;
///
/// let mut sd: StateDict = [
///     ("module.fc.weight", Tensor::zeros([10, 4], (Kind::Float, Device::Cpu))),
///     ("module.fc.bias", Tensor::zeros([10], (Kind::Float, Device::Cpu))),
/// ]
/// .into_iter()
/// .collect();
/// sd.strip_prefix("module."); // consume_prefix_in_state_dict_if_present(sd, "module.")
/// let bias = sd.pop("fc.bias"); // sd.pop("fc.bias")
/// assert!(bias.is_some());
/// assert_eq!(sd.keys().collect::<Vec<_>>(), ["fc.weight"]);
/// ```
#[derive(Default)]
pub struct StateDict {
    tensors: Map<Tensor>,
    metadata: Option<Metadata>,
    safetensors_metadata: Option<IndexMap<String, String>>,
}

impl StateDict {
    /// An empty state dict without metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state dict with room for `n` tensors.
    pub fn with_capacity(n: usize) -> Self {
        StateDict {
            tensors: IndexMap::with_capacity_and_hasher(n, Default::default()),
            metadata: None,
            safetensors_metadata: None,
        }
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether `key` is present (`key in sd`).
    pub fn contains_key(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// The tensor under `key` (`sd.get(key)`).
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// The tensor under `key`, to replace it in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Tensor> {
        self.tensors.get_mut(key)
    }

    /// `sd[key] = tensor`: a new key goes last; an existing key keeps its place and its old
    /// tensor is returned.
    pub fn insert(&mut self, key: impl Into<String>, tensor: Tensor) -> Option<Tensor> {
        self.tensors.insert(key.into(), tensor)
    }

    /// `sd.pop(key, None)`: removes `key` and returns its tensor; the other keys keep their
    /// order. It takes time linear in the number of keys after `key`.
    pub fn pop(&mut self, key: &str) -> Option<Tensor> {
        self.tensors.shift_remove(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensors, in order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &Tensor> + '_ {
        self.tensors.values()
    }

    /// The keys and tensors, in order (`sd.items()`).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Tensor)> + '_ {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The key and tensor at position `index`.
    pub fn get_index(&self, index: usize) -> Option<(&str, &Tensor)> {
        self.tensors.get_index(index).map(|(k, v)| (k.as_str(), v))
    }

    /// The position of `key`.
    pub fn get_index_of(&self, key: &str) -> Option<usize> {
        self.tensors.get_index_of(key)
    }

    /// The state dict's `_metadata`, when it has one (a state dict from `model.state_dict()`
    /// or `torch.save` has; one built by hand or read from safetensors has not).
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// The `_metadata`, to change it.
    pub fn metadata_mut(&mut self) -> &mut Option<Metadata> {
        &mut self.metadata
    }

    /// Sets or removes the `_metadata`.
    pub fn set_metadata(&mut self, metadata: Option<Metadata>) {
        self.metadata = metadata;
    }

    /// A safetensors file's `__metadata__` (string to string), kept from reading to writing.
    pub fn safetensors_metadata(&self) -> Option<&IndexMap<String, String>> {
        self.safetensors_metadata.as_ref()
    }

    /// Sets or removes the `__metadata__` that saving as safetensors writes.
    pub fn set_safetensors_metadata(&mut self, metadata: Option<IndexMap<String, String>>) {
        self.safetensors_metadata = metadata;
    }

    /// A copy that shares the tensors' storage, as Python's `sd.copy()`.
    pub fn shallow_clone(&self) -> StateDict {
        StateDict {
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
            metadata: self.metadata.as_ref().map(shallow_clone_metadata),
            safetensors_metadata: self.safetensors_metadata.clone(),
        }
    }

    /// `torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(sd, prefix)`: strips
    /// `prefix` (`"module."` from DataParallel, `"_orig_mod."` from `torch.compile`) from the
    /// keys that have it, and from the `_metadata` keys. Returns how many keys it changed.
    ///
    /// It does what Python does, order included: each stripped key is removed and inserted
    /// again, so stripped keys move after the unprefixed ones, and a stripped key that equals
    /// an existing one replaces that one's tensor in its place.
    pub fn strip_prefix(&mut self, prefix: &str) -> usize {
        keyed::strip_prefix(&mut self.tensors, &mut self.metadata, prefix)
    }

    /// Puts `prefix` in front of every key, as loading into a wrapped model
    /// (`DataParallel`'s `module.`) needs. The `_metadata` keys follow: the root's `""`
    /// becomes the prefix without its trailing dot.
    pub fn add_prefix(&mut self, prefix: &str) {
        keyed::add_prefix(&mut self.tensors, &mut self.metadata, prefix)
    }

    /// Renames every key with `f`, keeping the order (`{f(k): v for k, v in sd.items()}`).
    /// The `_metadata` is left as it is: its keys are module paths, which `f` need not map.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateKey`] when two keys get the same new name; the state dict is then
    /// unchanged.
    pub fn rename<F: FnMut(&str) -> String>(&mut self, f: F) -> Result<(), Error> {
        keyed::rename(&mut self.tensors, f)
    }

    /// Replaces the prefix `from` with `to` in every key that starts with `from`, keeping the
    /// order: `sd.rename_prefix("fc.", "linear.")` loads a torchvision-style head into a
    /// CIFAR-style model. `_metadata` keys for the renamed modules follow when both prefixes
    /// end with a dot. Returns how many keys changed.
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateKey`] when a renamed key equals another key; the state dict is then
    /// unchanged.
    pub fn rename_prefix(&mut self, from: &str, to: &str) -> Result<usize, Error> {
        keyed::rename_prefix(&mut self.tensors, &mut self.metadata, from, to)
    }

    /// Keeps only the entries that `f` accepts (`{k: v for k, v in sd.items() if f(k, v)}`),
    /// in order.
    pub fn retain<F: FnMut(&str, &Tensor) -> bool>(&mut self, mut f: F) {
        self.tensors.retain(|k, v| f(k, v));
    }

    /// The total size of the tensors' elements in bytes.
    pub fn nbytes(&self) -> u64 {
        self.tensors.values().map(tensor_nbytes).sum()
    }
}

pub(crate) fn tensor_nbytes(t: &Tensor) -> u64 {
    let elt = t.f_kind().map(|k| k.elt_size_in_bytes()).unwrap_or(0) as u64;
    t.numel() as u64 * elt
}

impl IntoIterator for StateDict {
    type Item = (String, Tensor);
    type IntoIter = indexmap::map::IntoIter<String, Tensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.into_iter()
    }
}

impl<'a> IntoIterator for &'a StateDict {
    type Item = (&'a String, &'a Tensor);
    type IntoIter = indexmap::map::Iter<'a, String, Tensor>;

    fn into_iter(self) -> Self::IntoIter {
        self.tensors.iter()
    }
}

impl<K: Into<String>> FromIterator<(K, Tensor)> for StateDict {
    /// Collects pairs in order; a repeated key keeps its first place and its last tensor,
    /// as building a dict in Python does.
    fn from_iter<I: IntoIterator<Item = (K, Tensor)>>(iter: I) -> Self {
        let mut sd = StateDict::new();
        sd.extend(iter);
        sd
    }
}

impl<K: Into<String>> Extend<(K, Tensor)> for StateDict {
    /// `sd.update(pairs)`.
    fn extend<I: IntoIterator<Item = (K, Tensor)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.tensors.insert(k.into(), v);
        }
    }
}

/// A table of key, shape, dtype and device; never the tensors' contents.
impl fmt::Display for StateDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<Vec<String>> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                vec![
                    k.clone(),
                    pyfmt::Shape(&t.size()).to_string(),
                    t.f_kind()
                        .map(pyfmt::dtype_name)
                        .unwrap_or("undefined")
                        .to_string(),
                    pyfmt::device_name(t.device()),
                ]
            })
            .collect();
        let title = format!(
            "StateDict: {} tensor{}, {}",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            pyfmt::human_bytes(self.nbytes())
        );
        keyed::write_table(f, &title, &rows)
    }
}

/// The same table as `Display`: a state dict can hold gigabytes, so `{:?}` never prints
/// tensor contents either.
impl fmt::Debug for StateDict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<StateDict> for Value {
    /// An `OrderedDict` of the tensors, with the state dict's `_metadata`, as
    /// `model.state_dict()` is pickled.
    fn from(sd: StateDict) -> Self {
        let metadata = sd.metadata().map(shallow_clone_metadata);
        Value::Dict(Dict {
            items: sd
                .into_iter()
                .map(|(k, t)| (Value::Str(k), Value::Tensor(t)))
                .collect(),
            ordered: true,
            metadata,
        })
    }
}

impl TryFrom<Value> for StateDict {
    type Error = Error;

    /// A dict whose keys are all strings and values all tensors.
    ///
    /// # Errors
    ///
    /// [`Error::NotAStateDict`] otherwise; [`Error::DuplicateKey`] for a key seen twice.
    fn try_from(value: Value) -> Result<Self, Error> {
        let not = |found: String| Error::NotAStateDict {
            path: "<value>".into(),
            at: None,
            found,
            entries: Vec::new(),
        };
        let Value::Dict(d) = value else {
            return Err(not(format!("a {}", value.type_name())));
        };
        let mut sd = StateDict::with_capacity(d.items.len());
        for (k, v) in d.items {
            match (k, v) {
                (Value::Str(k), Value::Tensor(t)) => {
                    if sd.contains_key(&k) {
                        return Err(Error::DuplicateKey {
                            sources: vec![k.clone(), k.clone()],
                            key: k,
                        });
                    }
                    sd.insert(k, t);
                }
                (k, v) => {
                    return Err(not(format!(
                        "a dict holding a {} under a {} key",
                        v.type_name(),
                        k.type_name()
                    )))
                }
            }
        }
        sd.set_metadata(d.metadata);
        Ok(sd)
    }
}
