//! [`Checkpoint`]: a checkpoint file opened and parsed, and the entry points that read state
//! dicts from files ([`StateDict::load`], [`LazyStateDict::load`] and their variants).
//!
//! Every way of getting a state dict out of a file goes through one path: the file's state
//! dict as a [`LazyStateDict`] (nothing read), which is then read whole
//! ([`LazyStateDict::into_state_dict`]) or loaded into a model, entry by entry, straight from
//! the file. A sharded checkpoint is one more way of building that lazy state dict: its
//! entries point into the shards.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use crate::error::Error;
use crate::read::dcp::Dcp;
use crate::read::{
    self, top_level_entry, Format, Id, Materializer, Obj, OpenFile, Opened, ReadOptions, Shards,
    Source,
};
use crate::state_dict::{LazyStateDict, LazyTensor, StateDict};
use crate::value::Value;

/// A checkpoint file, parsed and checked but not yet read: `torch.load` in two steps.
///
/// Opening reads the file's structure (the pickle, or the safetensors header) and checks
/// every tensor against its storage, without reading tensor data. The values are read by
/// [`value`](Self::value), [`state_dict`](Self::state_dict) or
/// [`state_dict_at`](Self::state_dict_at), which reads only the storages of the subtree it
/// returns; [`lazy_state_dict_at`](Self::lazy_state_dict_at) reads nothing.
///
/// Training checkpoints open whatever else they hold: an `argparse.Namespace`, a class
/// from a package this crate cannot know, a whole pickled `nn.Module` are read as
/// [`Value::Object`]s, never imported or called (numpy values, paths and datetimes as plain
/// values). A state dict is found in a dict of tensors, in a pickled `nn.Module` (its
/// `state_dict()`), and in a TorchScript archive such as tch's `VarStore::save` files.
///
/// ```no_run
/// # fn main() -> Result<(), tch_state_dict::Error> {
/// use tch_state_dict::Checkpoint;
///
/// let ckpt = Checkpoint::open("ckpt_epoch_240.pth")?;
/// println!("{:?}", ckpt.keys()); // ["model", "epoch", "acc", "optimizer"]
/// let model = ckpt.state_dict_at("model")?; // torch.load(p)["model"]
/// let epoch = ckpt.value()?.get("epoch").and_then(|v| v.as_int());
/// # let _ = (model, epoch);
/// # Ok(())
/// # }
/// ```
pub struct Checkpoint<'a> {
    path: PathBuf,
    inner: Inner<'a>,
}

enum Inner<'a> {
    Single(Arc<OpenFile<'a>>),
    Sharded(Shards),
    Distributed(Dcp),
}

impl Checkpoint<'static> {
    /// Opens and parses the checkpoint at `path`, whatever its format: a file; a
    /// `torch.distributed.checkpoint` directory or its `.metadata` ([`Format::Distributed`]);
    /// or a model directory, opened as the first of `model.safetensors`,
    /// `model.safetensors.index.json`, `pytorch_model.bin` and `pytorch_model.bin.index.json`
    /// it holds.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read (a directory holding none of these among
    /// them); a format error ([`Error::EmptyFile`], [`Error::LfsPointer`],
    /// [`Error::UnknownFormat`]); and every error of a malformed or hostile file
    /// ([`Error::Zip`], [`Error::MissingRecord`], [`Error::Pickle`],
    /// [`Error::InvalidTensor`], [`Error::StorageSizeMismatch`], [`Error::LimitExceeded`],
    /// [`Error::Safetensors`], [`Error::ShardIndex`], [`Error::InvalidDistributed`],
    /// [`Error::ChunkLayout`], ...). With
    /// [`ReadOptions::weights_only`](crate::ReadOptions::weights_only),
    /// [`Error::DisallowedGlobal`] and [`Error::TorchScript`] too.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, &ReadOptions::default())
    }

    /// [`open`](Self::open) with options.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn open_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self, Error> {
        let path = path.as_ref();
        Ok(Self::new(
            path.to_path_buf(),
            read::open_path(path, options)?,
        ))
    }

    /// Reads a whole checkpoint from `reader` into memory and parses it.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when reading fails, then as [`open`](Self::open). A sharded index needs
    /// its shard files and cannot be read from a reader.
    pub fn from_reader(mut reader: impl Read, options: &ReadOptions) -> Result<Self, Error> {
        let path = PathBuf::from("<reader>");
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let opened = read::parse(path.clone(), Source::Owned(bytes), options)?;
        Ok(Self::new(path, opened))
    }
}

impl<'a> Checkpoint<'a> {
    /// Parses a checkpoint held in memory.
    ///
    /// # Errors
    ///
    /// As [`open`](Checkpoint::open).
    pub fn from_bytes(bytes: &'a [u8], options: &ReadOptions) -> Result<Self, Error> {
        let path = PathBuf::from("<bytes>");
        let opened = read::parse(path.clone(), Source::Borrowed(bytes), options)?;
        Ok(Self::new(path, opened))
    }

    fn new(path: PathBuf, opened: Opened<'a>) -> Self {
        let inner = match opened {
            Opened::Single(file) => Inner::Single(Arc::new(*file)),
            Opened::Sharded(shards) => Inner::Sharded(shards),
            Opened::Distributed(dcp) => Inner::Distributed(dcp),
        };
        Checkpoint { path, inner }
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        match &self.inner {
            Inner::Single(f) => f.parsed.format,
            Inner::Sharded(_) => Format::ShardedIndex,
            Inner::Distributed(_) => Format::Distributed,
        }
    }

    /// The path the checkpoint was opened from (`<bytes>` or `<reader>` otherwise).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys of the top-level object when it is a dict with string keys (`["model",
    /// "epoch", ...]`, or a state dict's keys); empty otherwise.
    pub fn keys(&self) -> Vec<String> {
        match &self.inner {
            Inner::Single(f) => {
                let arena = &f.parsed.arena;
                match arena.get(arena.root) {
                    Obj::Dict(d) => d
                        .items
                        .iter()
                        .filter_map(|&(k, _)| match arena.get(k) {
                            Obj::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                }
            }
            Inner::Sharded(s) => s.keys(),
            Inner::Distributed(d) => d.keys(),
        }
    }

    /// The number of tensors the checkpoint describes (each counted once per rebuild).
    pub fn num_tensors(&self) -> usize {
        match &self.inner {
            Inner::Single(f) => f.parsed.arena.tensors.len(),
            Inner::Sharded(s) => s.num_tensors(),
            Inner::Distributed(d) => d.num_tensors(),
        }
    }

    /// A safetensors file's `__metadata__` (string to string), if it has one.
    pub fn safetensors_metadata(&self) -> Option<&IndexMap<String, String>> {
        match &self.inner {
            Inner::Single(f) => f.parsed.safetensors_metadata.as_ref(),
            Inner::Sharded(_) | Inner::Distributed(_) => None,
        }
    }

    /// The whole saved object, as `torch.load(path)` returns it.
    ///
    /// # Errors
    ///
    /// [`Error::Pickle`] for values nested too deep or duplicate dict keys;
    /// [`Error::LimitExceeded`] for memo expansions past the budget of values (`max_values`)
    /// or values past what the file's memory budget leaves (`max_memory`, see
    /// [`ReadLimits`](crate::ReadLimits#the-memory-budget)); [`Error::UnsupportedDtype`] for a
    /// tensor of a dtype this crate cannot hold, naming its path from the root
    /// (`model.buf`; see [`value_with_unreadable`](Self::value_with_unreadable)); read errors
    /// of the storages.
    pub fn value(&self) -> Result<Value, Error> {
        match &self.inner {
            Inner::Single(f) => Materializer::new(f).value(f.parsed.arena.root),
            Inner::Sharded(_) => Ok(Value::from(self.state_dict()?)),
            Inner::Distributed(d) => d.value(false, None),
        }
    }

    /// The value under `key` of the top-level dict, whatever it holds (a state dict, an
    /// optimizer's state, hyperparameters): `torch.load(path, weights_only=False)[key]`.
    /// Only that value's storages are read, not those of the rest of the checkpoint.
    ///
    /// A sharded checkpoint's top level is one flat state dict, so the value under a key is
    /// one tensor, as `value()[key]` is (for the entries under a prefix, see
    /// [`lazy_state_dict_at`](Self::lazy_state_dict_at)).
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`] when the top level has no such key, listing the keys it has;
    /// otherwise as [`value`](Self::value), for that value alone.
    pub fn value_at(&self, key: &str) -> Result<Value, Error> {
        match &self.inner {
            // An error names its tensor's path from the root, as `value`'s does.
            Inner::Single(f) => Materializer::new(f)
                .value(self.object_at(f, Some(key))?)
                .map_err(|e| e.under(|| key.to_string())),
            Inner::Sharded(_) => match self.lazy_state_dict()?.get(key) {
                Some(t) => Ok(Value::Tensor(t.read()?)),
                None => Err(self.key_not_found(key)),
            },
            Inner::Distributed(d) => d.value(false, Some(key)),
        }
    }

    /// As [`value`](Self::value), except that a tensor of a dtype this crate cannot hold
    /// (`torch.uint64`) is described as [`Value::Unreadable`] instead of refused: what the
    /// file holds, to show it (`tch-state-dict inspect` prints this).
    ///
    /// # Errors
    ///
    /// As [`value`](Self::value), [`Error::UnsupportedDtype`] excepted.
    pub fn value_with_unreadable(&self) -> Result<Value, Error> {
        match &self.inner {
            Inner::Single(f) => Materializer::new(f)
                .with_unreadable()
                .value(f.parsed.arena.root),
            Inner::Distributed(d) => d.value(true, None),
            Inner::Sharded(_) => {
                let lazy = self.lazy_state_dict()?;
                let mut items = Vec::with_capacity(lazy.len());
                for (key, t) in lazy.iter() {
                    let value = match t.kind() {
                        Some(_) => Value::Tensor(t.read()?),
                        None => Value::Unreadable {
                            dtype: t.dtype_name().to_string(),
                            shape: t.size(),
                        },
                    };
                    items.push((Value::Str(key.to_string()), value));
                }
                Ok(Value::Dict(crate::value::Dict {
                    items,
                    ordered: true,
                    metadata: None,
                }))
            }
        }
    }

    /// The top-level object as a state dict, when it is one (`torch.load(path)` of a
    /// `state_dict()`).
    ///
    /// # Errors
    ///
    /// [`Error::NotAStateDict`] when the top level is something else, listing its keys and
    /// what each holds; [`Error::OpaqueObject`] when it is an object that is not a module
    /// (naming its class); [`Error::InvalidModule`] for a module holding what a module
    /// cannot; otherwise as [`value`](Self::value).
    pub fn state_dict(&self) -> Result<StateDict, Error> {
        self.lazy_state_dict()?.into_state_dict()
    }

    /// The state dict under `key` of the top-level dict: `torch.load(path)[key]`. Only the
    /// storages of that state dict are read.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`] when the top level has no such key, listing the keys it has;
    /// [`Error::NotAStateDict`] when the value under `key` is not a state dict, and
    /// [`Error::OpaqueObject`] or [`Error::InvalidModule`] as for
    /// [`state_dict`](Self::state_dict).
    pub fn state_dict_at(&self, key: &str) -> Result<StateDict, Error> {
        self.lazy_state_dict_at(key)?.into_state_dict()
    }

    /// The top-level state dict with nothing read yet: see [`LazyStateDict`].
    ///
    /// # Errors
    ///
    /// As [`state_dict`](Self::state_dict), without its read errors.
    pub fn lazy_state_dict(&self) -> Result<LazyStateDict<'a>, Error> {
        self.lazy_at(None)
    }

    /// The state dict under `key` of the top-level dict, with nothing read yet.
    ///
    /// For a sharded checkpoint, whose top level is one flat state dict, `key` selects the
    /// entries under the prefix `key.`, with the prefix removed: the state dict of the
    /// submodule `key` (`"model"` of a checkpoint whose keys are `model.layers.0.weight`,
    /// ..., `lm_head.weight`).
    ///
    /// # Errors
    ///
    /// As [`state_dict_at`](Self::state_dict_at), without its read errors.
    pub fn lazy_state_dict_at(&self, key: &str) -> Result<LazyStateDict<'a>, Error> {
        self.lazy_at(Some(key))
    }

    /// The one path from a file to a state dict: the entries of the state dict at `at` (the
    /// top level when `None`), each pointing at its tensor in its file.
    pub(crate) fn lazy_at(&self, at: Option<&str>) -> Result<LazyStateDict<'a>, Error> {
        match &self.inner {
            Inner::Single(file) => {
                let id = self.object_at(file, at)?;
                let sd = Materializer::new(file).state_dict_entries(id, at)?;
                let entries = sd
                    .entries
                    .into_iter()
                    .map(|(key, index)| {
                        (
                            key.into_owned(),
                            LazyTensor::in_file(Arc::clone(file), index, sd.from_module),
                        )
                    })
                    .collect();
                Ok(LazyStateDict::from_parts(
                    entries,
                    sd.metadata,
                    file.parsed.safetensors_metadata.clone(),
                ))
            }
            Inner::Sharded(shards) => {
                let prefix = at.map(|key| format!("{key}."));
                let mut entries = crate::state_dict::Map::default();
                for (key, shard, index) in shards.resolve()? {
                    let key = match &prefix {
                        None => key,
                        Some(p) => match key.strip_prefix(p.as_str()) {
                            Some(rest) => rest,
                            None => continue,
                        },
                    };
                    let file: Arc<OpenFile<'a>> = shards.shards[shard].clone();
                    entries.insert(key.to_string(), LazyTensor::in_file(file, index, false));
                }
                if let (Some(key), true) = (at, entries.is_empty()) {
                    return Err(self.key_not_found(key));
                }
                Ok(LazyStateDict::from_parts(entries, None, None))
            }
            Inner::Distributed(dcp) => {
                let mut entries = crate::state_dict::Map::default();
                for (key, tensor) in dcp.tensors_under(at) {
                    entries.insert(key, LazyTensor::chunked(tensor));
                }
                match (at, entries.is_empty()) {
                    (Some(key), true) if dcp.keys().iter().any(|k| k == key) => {
                        return Err(Error::NotAStateDict {
                            path: self.path.clone(),
                            at: Some(key.to_string()),
                            found: "values that are not tensors".to_string(),
                            entries: Vec::new(),
                        })
                    }
                    (Some(key), true) => return Err(self.key_not_found(key)),
                    _ => {}
                }
                Ok(LazyStateDict::from_parts(entries, None, None))
            }
        }
    }

    /// The top-level object, or the value under `key` of the top-level dict.
    fn object_at(&self, file: &OpenFile<'_>, at: Option<&str>) -> Result<Id, Error> {
        let arena = &file.parsed.arena;
        match at {
            None => Ok(arena.root),
            Some(key) => top_level_entry(arena, key).ok_or_else(|| self.key_not_found(key)),
        }
    }

    fn key_not_found(&self, key: &str) -> Error {
        Error::KeyNotFound {
            path: self.path.clone(),
            key: key.to_string(),
            available: self.keys(),
        }
    }
}

/// Reads a checkpoint's state dict; see [`Checkpoint`].
impl StateDict {
    /// `torch.load(path)` of a file whose top-level object is a state dict: torch.save (zip
    /// or legacy), safetensors, or a sharded index. The format comes from the bytes.
    ///
    /// This reads every tensor into memory. To change keys and then load into a model, use
    /// [`LazyStateDict::load`], which reads each tensor straight into the model instead.
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::open`] and [`Checkpoint::state_dict`]; in particular
    /// [`Error::NotAStateDict`] when the file wraps the state dict in a checkpoint dict (use
    /// [`load_key`](Self::load_key)).
    pub fn load(path: impl AsRef<Path>) -> Result<StateDict, Error> {
        Checkpoint::open(path)?.state_dict()
    }

    /// [`load`](Self::load) with options (device, dtype, memory map, limits).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn load_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<StateDict, Error> {
        Checkpoint::open_with(path, options)?.state_dict()
    }

    /// `torch.load(path)[key]`: the state dict under `key` of a checkpoint dict such as
    /// `{'model': ..., 'epoch': 240}`. Only that state dict's storages are read. To change
    /// keys and then load into a model, [`LazyStateDict::load_key`] is faster.
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::open`] and [`Checkpoint::state_dict_at`].
    pub fn load_key(path: impl AsRef<Path>, key: &str) -> Result<StateDict, Error> {
        Checkpoint::open(path)?.state_dict_at(key)
    }

    /// [`load_key`](Self::load_key) with options.
    ///
    /// # Errors
    ///
    /// As [`load_key`](Self::load_key).
    pub fn load_key_with(
        path: impl AsRef<Path>,
        key: &str,
        options: &ReadOptions,
    ) -> Result<StateDict, Error> {
        Checkpoint::open_with(path, options)?.state_dict_at(key)
    }

    /// [`load`](Self::load) from bytes in memory.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn from_bytes(bytes: &[u8]) -> Result<StateDict, Error> {
        Checkpoint::from_bytes(bytes, &ReadOptions::default())?.state_dict()
    }

    /// [`load`](Self::load) from a reader, read to its end.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn from_reader(reader: impl Read) -> Result<StateDict, Error> {
        Checkpoint::from_reader(reader, &ReadOptions::default())?.state_dict()
    }
}

/// Opens a checkpoint's state dict without reading it; see [`LazyStateDict`].
impl LazyStateDict<'static> {
    /// `torch.load(path)` of a state dict, with nothing read yet: the keys, shapes and dtypes
    /// of the file's top-level state dict, each tensor read only when it is loaded into a
    /// model or [read](LazyTensor::read).
    ///
    /// # Errors
    ///
    /// As [`StateDict::load`], without its read errors.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        Checkpoint::open(path)?.lazy_state_dict()
    }

    /// [`load`](Self::load) with options. The options' device and dtype apply to
    /// [`LazyTensor::read`] and [`into_state_dict`](Self::into_state_dict); a load into a
    /// model converts to the model's dtype and device.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn load_with(path: impl AsRef<Path>, options: &ReadOptions) -> Result<Self, Error> {
        Checkpoint::open_with(path, options)?.lazy_state_dict()
    }

    /// `torch.load(path)[key]`, with nothing read yet.
    ///
    /// # Errors
    ///
    /// As [`StateDict::load_key`], without its read errors.
    pub fn load_key(path: impl AsRef<Path>, key: &str) -> Result<Self, Error> {
        Checkpoint::open(path)?.lazy_state_dict_at(key)
    }

    /// [`load_key`](Self::load_key) with options.
    ///
    /// # Errors
    ///
    /// As [`load_key`](Self::load_key).
    pub fn load_key_with(
        path: impl AsRef<Path>,
        key: &str,
        options: &ReadOptions,
    ) -> Result<Self, Error> {
        Checkpoint::open_with(path, options)?.lazy_state_dict_at(key)
    }
}

impl<'a> LazyStateDict<'a> {
    /// [`load`](LazyStateDict::load) of a checkpoint held in memory; its tensors are copied
    /// out of `bytes` when they are read.
    ///
    /// # Errors
    ///
    /// As [`load`](LazyStateDict::load).
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        Checkpoint::from_bytes(bytes, &ReadOptions::default())?.lazy_state_dict()
    }
}

impl Value {
    /// `torch.load(path)`: the whole saved object (see [`Checkpoint::value`]).
    ///
    /// # Errors
    ///
    /// As [`Checkpoint::open`] and [`Checkpoint::value`].
    pub fn load(path: impl AsRef<Path>) -> Result<Value, Error> {
        Checkpoint::open(path)?.value()
    }
}
