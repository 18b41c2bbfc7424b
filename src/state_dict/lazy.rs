//! [`LazyStateDict`]: a checkpoint's state dict before its tensors are read.
//!
//! # Design note
//!
//! The two fixes for a head of the wrong size are key surgery (pop the head, strip
//! `module.`) followed by a non-strict load. With an in-memory [`StateDict`] that reads the
//! whole checkpoint, then copies it again into the model: 44.9 ms for a 94 MB CIFAR ResNet50,
//! where reading straight into the model takes 12.2 ms. A lazy state dict holds, per key,
//! where the tensor is in the file (file, dtype, shape, strides, byte range), so the surgery
//! costs nothing and `load_state_dict` reads each remaining tensor straight from the file
//! into the model's tensor, as `load_into` does. An entry can also be a tensor in memory
//! (`insert`), which the load copies as usual.
//!
//! It is a twin of [`StateDict`] with the same method names rather than a lazy `StateDict`,
//! because reading can fail: `StateDict::get` returns a tensor, `LazyStateDict::get` a
//! [`LazyTensor`] whose [`read`](LazyTensor::read) returns a `Result`.
//!
//! Nothing is read before it is asked for, which is `torch.load(mmap=True)`'s timing too.
//! Unlike a memory map, reads use `pread`: a file truncated after it was opened gives
//! [`Error::FileChanged`] or [`Error::Io`], never SIGBUS, and a load checks the file's length
//! before it writes anything.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;
use tch::{Kind, Tensor};

use super::keyed::{self, Map};
use super::StateDict;
use crate::dtype::is_floating;
use crate::error::Error;
use crate::pyfmt;
use crate::read::dcp::ChunkedTensor;
#[cfg(doc)]
use crate::read::ReadOptions;
use crate::read::{read_file_tensors, Materializer, OpenFile};
use crate::value::{shallow_clone_metadata, Metadata};

/// A state dict whose tensors are still in the checkpoint file: keys in order, each with its
/// shape, dtype and place in the file, plus the `_metadata`.
///
/// It has [`StateDict`]'s key surgery ([`pop`](Self::pop),
/// [`strip_prefix`](Self::strip_prefix), [`rename_prefix`](Self::rename_prefix),
/// [`retain`](Self::retain), ...), and [`load_state_dict`](crate::load_state_dict) accepts it
/// with the same rules and words, reading each tensor straight from the file into the
/// model's tensor: the surgery and the load cost what loading the file directly costs.
///
/// ```no_run
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// use tch::nn;
/// use tch_state_dict::{load_state_dict, models, LazyStateDict};
///
/// let vs = nn::VarStore::new(tch::Device::Cpu);
/// let model = models::cifar_resnet50(&vs, 10)?;
/// // sd = torch.load("ckpt.pth")["model"]; nothing is read yet
/// let mut sd = LazyStateDict::load_key("ckpt.pth", "model")?;
/// sd.strip_prefix("module."); // a DataParallel checkpoint
/// sd.pop("linear.weight"); // a head of 100 classes
/// sd.pop("linear.bias");
/// // model.load_state_dict(sd, strict=False): reads each tensor into the model
/// let report = load_state_dict(&model, &sd, false)?;
/// assert_eq!(report.missing_keys, ["linear.weight", "linear.bias"]);
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct LazyStateDict<'a> {
    entries: Map<LazyTensor<'a>>,
    metadata: Option<Metadata>,
    safetensors_metadata: Option<IndexMap<String, String>>,
}

/// One entry of a [`LazyStateDict`]: a tensor still in its file, or one in memory.
pub struct LazyTensor<'a> {
    entry: LazyEntry<'a>,
}

/// Where a [`LazyTensor`]'s values are.
pub(crate) enum LazyEntry<'a> {
    /// Tensor `index` of the file's parsed index.
    File {
        file: Arc<OpenFile<'a>>,
        index: usize,
        /// Read without `requires_grad`: an entry of a module's `state_dict()`, which
        /// detaches every tensor (a whole pickled module, a TorchScript archive).
        detached: bool,
    },
    Memory(Tensor),
    /// A DCP tensor: chunks, each a tensor of a `.distcp` file, that tile its shape.
    Chunked(Arc<ChunkedTensor>),
}

impl<'a> LazyTensor<'a> {
    /// Tensor `index` of `file`; `detached` for an entry of a module's `state_dict()`.
    pub(crate) fn in_file(file: Arc<OpenFile<'a>>, index: usize, detached: bool) -> Self {
        LazyTensor {
            entry: LazyEntry::File {
                file,
                index,
                detached,
            },
        }
    }

    /// A DCP tensor.
    pub(crate) fn chunked(tensor: Arc<ChunkedTensor>) -> Self {
        LazyTensor {
            entry: LazyEntry::Chunked(tensor),
        }
    }

    pub(crate) fn entry(&self) -> &LazyEntry<'a> {
        &self.entry
    }

    /// The shape, as `Tensor::size` gives it.
    pub fn size(&self) -> Vec<i64> {
        match &self.entry {
            LazyEntry::File { file, index, .. } => {
                file.parsed.arena.tensors[*index].size().to_vec()
            }
            LazyEntry::Memory(t) => t.size(),
            LazyEntry::Chunked(t) => t.shape.clone(),
        }
    }

    /// The dtype [`read`](Self::read) gives: the saved one, or the cast that
    /// [`ReadOptions::kind`] asked for. `None` for a dtype that tch has no kind for, or that
    /// this crate does not read (`torch.uint64`, `torch.complex32`, quantized dtypes; see
    /// [`dtype_name`](Self::dtype_name)): reading or loading the entry is
    /// [`Error::UnsupportedDtype`], and `pop` or `retain` can drop it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), tch_state_dict::Error> {
    /// // Drop the entries that cannot be read (a uint64 buffer), then read the rest.
    /// let mut sd = tch_state_dict::LazyStateDict::load("ckpt.pth")?;
    /// sd.retain(|_, t| t.kind().is_some());
    /// let sd = sd.into_state_dict()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn kind(&self) -> Option<Kind> {
        match &self.entry {
            LazyEntry::File { file, index, .. } => {
                let saved = file.parsed.arena.tensors[*index].dtype.kind()?;
                Some(match file.options.kind {
                    Some(kind) if is_floating(saved) => kind,
                    _ => saved,
                })
            }
            LazyEntry::Memory(t) => t.f_kind().ok(),
            LazyEntry::Chunked(t) => t.read_kind(),
        }
    }

    /// The dtype as stored in the file (for a tensor in memory, its dtype); `None` as for
    /// [`kind`](Self::kind).
    pub fn saved_kind(&self) -> Option<Kind> {
        match &self.entry {
            LazyEntry::File { file, index, .. } => file.parsed.arena.tensors[*index].dtype.kind(),
            LazyEntry::Memory(t) => t.f_kind().ok(),
            LazyEntry::Chunked(t) => t.dtype.kind(),
        }
    }

    /// PyTorch's name of the dtype as stored (`float32`, `uint64`, `complex32`), for every
    /// entry, readable or not.
    pub fn dtype_name(&self) -> &'static str {
        match &self.entry {
            LazyEntry::File { file, index, .. } => file.parsed.arena.tensors[*index].dtype.name(),
            LazyEntry::Memory(t) => t.f_kind().map_or("undefined", pyfmt::dtype_name),
            LazyEntry::Chunked(t) => t.dtype.name(),
        }
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.size().iter().map(|&d| d.max(0) as usize).product()
    }

    /// The size of the values in bytes, in [`kind`](Self::kind) (in the stored dtype for
    /// an entry that cannot be read).
    pub fn nbytes(&self) -> u64 {
        let bits = match (&self.entry, self.kind()) {
            (_, Some(kind)) => 8 * kind.elt_size_in_bytes() as u64,
            (LazyEntry::File { file, index, .. }, None) => {
                file.parsed.arena.tensors[*index].dtype.bits() as u64
            }
            (LazyEntry::Chunked(t), None) => t.dtype.bits() as u64,
            (LazyEntry::Memory(_), None) => 0,
        };
        (self.numel() as u64 * bits).div_ceil(8)
    }

    /// [`Error::UnsupportedDtype`] naming `key` when the entry is in a file and of a dtype
    /// this crate cannot read.
    pub(crate) fn check_readable(&self, key: &str) -> Result<(), Error> {
        match &self.entry {
            LazyEntry::File { file, index, .. } => file.check_readable(*index, Some(key)),
            LazyEntry::Memory(_) => Ok(()),
            LazyEntry::Chunked(t) => t.check_readable(Some(key)).map(|_| ()),
        }
    }

    /// Whether the values are in memory (inserted, or read already) rather than in a file.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.entry, LazyEntry::Memory(_))
    }

    /// The file the tensor is in, if it is in one.
    pub fn path(&self) -> Option<&Path> {
        match &self.entry {
            LazyEntry::File { file, .. } => Some(&file.path),
            LazyEntry::Memory(_) => None,
            LazyEntry::Chunked(t) => Some(&t.path),
        }
    }

    /// Reads the tensor, as [`StateDict::load`] would give it (placed and cast as the
    /// [`ReadOptions`] it was opened with ask). A tensor in memory is returned as a shallow
    /// clone.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read (truncated since it was opened);
    /// [`Error::Torch`] when libtorch cannot allocate or place the tensor;
    /// [`Error::UnsupportedDtype`] for a dtype this crate cannot read (see
    /// [`kind`](Self::kind)), naming the key the file holds it under.
    pub fn read(&self) -> Result<Tensor, Error> {
        match &self.entry {
            LazyEntry::File {
                file,
                index,
                detached,
            } => {
                file.check_readable(*index, None)?;
                let t = Materializer::new(file).tensor(*index)?;
                Ok(if *detached { t.detach() } else { t })
            }
            LazyEntry::Memory(t) => Ok(t.shallow_clone()),
            LazyEntry::Chunked(t) => t.read(None),
        }
    }

    fn shallow_clone(&self) -> LazyTensor<'a> {
        LazyTensor {
            entry: match &self.entry {
                LazyEntry::File {
                    file,
                    index,
                    detached,
                } => LazyEntry::File {
                    file: Arc::clone(file),
                    index: *index,
                    detached: *detached,
                },
                LazyEntry::Memory(t) => LazyEntry::Memory(t.shallow_clone()),
                LazyEntry::Chunked(t) => LazyEntry::Chunked(Arc::clone(t)),
            },
        }
    }
}

impl From<Tensor> for LazyTensor<'_> {
    fn from(tensor: Tensor) -> Self {
        LazyTensor {
            entry: LazyEntry::Memory(tensor),
        }
    }
}

impl fmt::Debug for LazyTensor<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LazyTensor({}, {}, {})",
            pyfmt::Shape(&self.size()),
            self.kind().map_or(self.dtype_name(), pyfmt::dtype_name),
            if self.is_in_memory() {
                "in memory"
            } else {
                "in file"
            }
        )
    }
}

impl<'a> LazyStateDict<'a> {
    /// An empty lazy state dict.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn from_parts(
        entries: Map<LazyTensor<'a>>,
        metadata: Option<Metadata>,
        safetensors_metadata: Option<IndexMap<String, String>>,
    ) -> Self {
        LazyStateDict {
            entries,
            metadata,
            safetensors_metadata,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `key` is present (`key in sd`).
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The entry under `key`, to look at or [`read`](LazyTensor::read).
    pub fn get(&self, key: &str) -> Option<&LazyTensor<'a>> {
        self.entries.get(key)
    }

    /// `sd[key] = tensor`: a new key goes last; an existing key keeps its place and its old
    /// entry is returned. Takes a `Tensor` or a [`LazyTensor`] (from another lazy state dict).
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        tensor: impl Into<LazyTensor<'a>>,
    ) -> Option<LazyTensor<'a>> {
        self.entries.insert(key.into(), tensor.into())
    }

    /// `sd.pop(key, None)`: removes `key` and returns its entry, unread; the other keys keep
    /// their order.
    pub fn pop(&mut self, key: &str) -> Option<LazyTensor<'a>> {
        self.entries.shift_remove(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.entries.keys().map(String::as_str)
    }

    /// The entries, in order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = &LazyTensor<'a>> + '_ {
        self.entries.values()
    }

    /// The keys and entries, in order (`sd.items()`).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &LazyTensor<'a>)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The key and entry at position `index`.
    pub fn get_index(&self, index: usize) -> Option<(&str, &LazyTensor<'a>)> {
        self.entries.get_index(index).map(|(k, v)| (k.as_str(), v))
    }

    /// The position of `key`.
    pub fn get_index_of(&self, key: &str) -> Option<usize> {
        self.entries.get_index_of(key)
    }

    /// The state dict's `_metadata`, when it has one.
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

    /// A safetensors file's `__metadata__`, kept for [`into_state_dict`](Self::into_state_dict).
    pub fn safetensors_metadata(&self) -> Option<&IndexMap<String, String>> {
        self.safetensors_metadata.as_ref()
    }

    /// As [`StateDict::strip_prefix`]: `consume_prefix_in_state_dict_if_present(sd, prefix)`,
    /// order and `_metadata` included. Returns how many keys it changed.
    pub fn strip_prefix(&mut self, prefix: &str) -> usize {
        keyed::strip_prefix(&mut self.entries, &mut self.metadata, prefix)
    }

    /// As [`StateDict::add_prefix`].
    pub fn add_prefix(&mut self, prefix: &str) {
        keyed::add_prefix(&mut self.entries, &mut self.metadata, prefix)
    }

    /// As [`StateDict::rename`].
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateKey`] when two keys get the same new name; nothing is changed.
    pub fn rename<F: FnMut(&str) -> String>(&mut self, f: F) -> Result<(), Error> {
        keyed::rename(&mut self.entries, f)
    }

    /// As [`StateDict::rename_prefix`].
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateKey`] when a renamed key equals another key; nothing is changed.
    pub fn rename_prefix(&mut self, from: &str, to: &str) -> Result<usize, Error> {
        keyed::rename_prefix(&mut self.entries, &mut self.metadata, from, to)
    }

    /// Keeps only the entries that `f` accepts, in order. `f` sees each entry's shape and
    /// dtype without reading it: `sd.retain(|_, t| t.size() != [100, 2048])`.
    pub fn retain<F: FnMut(&str, &LazyTensor<'a>) -> bool>(&mut self, mut f: F) {
        self.entries.retain(|k, v| f(k, v));
    }

    /// The total size of the entries' values in bytes.
    pub fn nbytes(&self) -> u64 {
        self.entries.values().map(LazyTensor::nbytes).sum()
    }

    /// A copy that shares the files and the in-memory tensors' storage.
    pub fn shallow_clone(&self) -> LazyStateDict<'a> {
        LazyStateDict {
            entries: self
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect(),
            metadata: self.metadata.as_ref().map(shallow_clone_metadata),
            safetensors_metadata: self.safetensors_metadata.clone(),
        }
    }

    /// Reads every tensor: the in-memory [`StateDict`] that [`StateDict::load`] gives. Each
    /// file's storages are read once, across threads, and tensors that shared a storage in
    /// Python share one.
    ///
    /// # Errors
    ///
    /// As [`LazyTensor::read`].
    pub fn into_state_dict(self) -> Result<StateDict, Error> {
        // Every entry is readable before anything is read.
        for (key, entry) in &self.entries {
            entry.check_readable(key)?;
        }
        let wanted: Vec<(&OpenFile<'a>, usize)> = self
            .entries
            .values()
            .filter_map(|entry| match &entry.entry {
                LazyEntry::File { file, index, .. } => Some((&**file, *index)),
                LazyEntry::Memory(_) | LazyEntry::Chunked(_) => None,
            })
            .collect();
        // Entries of one file are read together, each file's storages once.
        let mut read = read_file_tensors(&wanted)?.into_iter();
        let mut tensors: Vec<Option<Tensor>> = Vec::with_capacity(self.entries.len());
        for (key, entry) in &self.entries {
            tensors.push(match &entry.entry {
                LazyEntry::Memory(t) => Some(t.shallow_clone()),
                LazyEntry::Chunked(t) => Some(t.read(Some(key))?),
                LazyEntry::File { detached, .. } => {
                    read.next().map(|t| if *detached { t.detach() } else { t })
                }
            });
        }
        let mut sd = StateDict::with_capacity(self.entries.len());
        for (key, tensor) in self.entries.keys().zip(tensors) {
            if let Some(tensor) = tensor {
                sd.insert(key.clone(), tensor);
            }
        }
        sd.set_metadata(self.metadata);
        sd.set_safetensors_metadata(self.safetensors_metadata);
        Ok(sd)
    }
}

impl<'a> TryFrom<LazyStateDict<'a>> for StateDict {
    type Error = Error;

    /// [`LazyStateDict::into_state_dict`].
    fn try_from(lazy: LazyStateDict<'a>) -> Result<Self, Error> {
        lazy.into_state_dict()
    }
}

/// A table of key, shape, dtype and where the values are; never the values.
impl fmt::Display for LazyStateDict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<Vec<String>> = self
            .entries
            .iter()
            .map(|(k, t)| {
                vec![
                    k.clone(),
                    pyfmt::Shape(&t.size()).to_string(),
                    t.kind()
                        .map_or(t.dtype_name(), pyfmt::dtype_name)
                        .to_string(),
                    match &t.entry {
                        LazyEntry::File { .. } => "in file".to_string(),
                        LazyEntry::Chunked(t) => format!("in {} chunks", t.chunks.len()),
                        LazyEntry::Memory(t) => pyfmt::device_name(t.device()),
                    },
                ]
            })
            .collect();
        let title = format!(
            "LazyStateDict: {} tensor{}, {}",
            rows.len(),
            if rows.len() == 1 { "" } else { "s" },
            pyfmt::human_bytes(self.nbytes())
        );
        keyed::write_table(f, &title, &rows)
    }
}

impl fmt::Debug for LazyStateDict<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
