//! Reading checkpoints as Python writes them, without executing anything.
//!
//! # Design note
//!
//! A file goes through three steps:
//!
//! 1. **Detect** the format from its first bytes, never from its name ([`Format`]).
//! 2. **Parse** the container (torch.save's zip or legacy layout, safetensors, a sharded
//!    index) and, for torch files, run the pickle in the restricted machine of
//!    [`pickle`]. The result is a tree of objects whose tensors are descriptions (storage,
//!    dtype, offset, size, stride), each checked with checked arithmetic against its
//!    storage's real length. No tensor data has been read yet, so a hostile file fails here,
//!    cheaply, and reading a checkpoint's structure costs only its pickle.
//! 3. **Materialize** what was asked for ([`Checkpoint::state_dict_at`] reads only that
//!    subtree's storages): each storage is read once into one buffer and its tensors are
//!    views of it, so tensors that shared a storage in Python share one here.
//!
//! The file is memory-mapped for parsing; tensors are copied out of the map by default, as
//! `torch.load` copies. With [`ReadOptions::mmap`] they are views of a private mapping that
//! libtorch owns, as `torch.load(mmap=True)` gives.

mod detect;
mod direct;
mod index;
mod legacy;
mod materialize;
mod options;
pub(crate) mod pickle;
mod safetensors_file;
mod sharded;
mod source;
mod torch_zip;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;

use crate::error::Error;
use crate::load::{self, LoadOptions, PlannedCopy};
use crate::module_tree::StateDictModule;
use crate::report::IncompatibleKeys;
use crate::state_dict::StateDict;
use crate::value::Value;

pub(crate) use detect::detect;
pub use detect::Format;
pub(crate) use index::{check_tensors, pickle_error, top_level_entry, Parsed, StorageLoc};
pub use options::{ReadLimits, ReadOptions};
pub use pickle::PickleError;
use pickle::{Id, Obj};
pub(crate) use safetensors_file::dtype_of;
pub(crate) use source::{map_file, Source};

/// A checkpoint file, parsed and checked but not yet read: `torch.load` in two steps.
///
/// Opening reads the file's structure (the pickle, or the safetensors header) and checks
/// every tensor against its storage, without reading tensor data. The values are read by
/// [`value`](Self::value), [`state_dict`](Self::state_dict) or
/// [`state_dict_at`](Self::state_dict_at), which reads only the storages of the subtree it
/// returns.
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
    options: ReadOptions,
    inner: Inner<'a>,
}

enum Inner<'a> {
    Single(Box<Parsed<'a>>),
    Sharded(sharded::Shards),
}

impl Checkpoint<'static> {
    /// Opens and parses the checkpoint at `path`, whatever its format.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the file cannot be read; a format error ([`Error::EmptyFile`],
    /// [`Error::LfsPointer`], [`Error::TorchScript`], [`Error::UnknownFormat`]); and every
    /// error of a malformed or hostile file ([`Error::Zip`], [`Error::MissingRecord`],
    /// [`Error::Pickle`], [`Error::DisallowedGlobal`], [`Error::InvalidTensor`],
    /// [`Error::LimitExceeded`], [`Error::Safetensors`], [`Error::ShardIndex`], ...).
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
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Err(Error::EmptyFile {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: see `map_file`; the map lives in the Checkpoint and its tensors are copies
        // unless the caller asked for `mmap`, whose docs state the same caveat.
        let map = unsafe { map_file(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), Source::Mapped(map, file), options)
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
        Self::parse(path, Source::Owned(bytes), options)
    }
}

impl<'a> Checkpoint<'a> {
    /// Parses a checkpoint held in memory.
    ///
    /// # Errors
    ///
    /// As [`open`](Checkpoint::open).
    pub fn from_bytes(bytes: &'a [u8], options: &ReadOptions) -> Result<Self, Error> {
        Self::parse(PathBuf::from("<bytes>"), Source::Borrowed(bytes), options)
    }

    fn parse(path: PathBuf, source: Source<'a>, options: &ReadOptions) -> Result<Self, Error> {
        let format = detect(&path, source.bytes())?;
        let limits = &options.limits;
        let inner = match format {
            Format::TorchZip => Inner::Single(Box::new(torch_zip::parse(&path, source, limits)?)),
            Format::TorchLegacy => Inner::Single(Box::new(legacy::parse(&path, source, limits)?)),
            Format::Safetensors => {
                Inner::Single(Box::new(safetensors_file::parse(&path, source, limits)?))
            }
            Format::ShardedIndex => {
                // Shards are found next to the index, so only an index opened by its path
                // has any.
                let from_path = matches!(source, Source::Mapped(..));
                Inner::Sharded(sharded::parse(&path, source.bytes(), from_path, options)?)
            }
        };
        Ok(Checkpoint {
            path,
            options: options.clone(),
            inner,
        })
    }

    /// The file's format.
    pub fn format(&self) -> Format {
        match &self.inner {
            Inner::Single(p) => p.format,
            Inner::Sharded(_) => Format::ShardedIndex,
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
            Inner::Single(p) => match p.arena.get(p.arena.root) {
                Obj::Dict(d) => d
                    .items
                    .iter()
                    .filter_map(|&(k, _)| match p.arena.get(k) {
                        Obj::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            },
            Inner::Sharded(s) => s.keys(),
        }
    }

    /// The number of tensors the checkpoint describes (each counted once per rebuild).
    pub fn num_tensors(&self) -> usize {
        match &self.inner {
            Inner::Single(p) => p.arena.tensors.len(),
            Inner::Sharded(s) => s.num_tensors(),
        }
    }

    /// A safetensors file's `__metadata__` (string to string), if it has one.
    pub fn safetensors_metadata(&self) -> Option<&IndexMap<String, String>> {
        match &self.inner {
            Inner::Single(p) => p.safetensors_metadata.as_ref(),
            Inner::Sharded(_) => None,
        }
    }

    /// The whole saved object, as `torch.load(path)` returns it.
    ///
    /// # Errors
    ///
    /// [`Error::Pickle`] for values nested too deep, memo expansions past the limit,
    /// duplicate dict keys or objects that cannot be values (a bare class); read errors of
    /// the storages.
    pub fn value(&self) -> Result<Value, Error> {
        match &self.inner {
            Inner::Single(p) => {
                materialize::Materializer::new(&self.path, p, &self.options).value(p.arena.root)
            }
            Inner::Sharded(s) => Ok(Value::from(s.state_dict()?)),
        }
    }

    /// The top-level object as a state dict, when it is one (`torch.load(path)` of a
    /// `state_dict()`).
    ///
    /// # Errors
    ///
    /// [`Error::NotAStateDict`] when the top level is something else, listing its keys and
    /// what each holds; otherwise as [`value`](Self::value).
    pub fn state_dict(&self) -> Result<StateDict, Error> {
        match &self.inner {
            Inner::Single(p) => materialize::Materializer::new(&self.path, p, &self.options)
                .state_dict(p.arena.root, None),
            Inner::Sharded(s) => s.state_dict(),
        }
    }

    /// The state dict under `key` of the top-level dict: `torch.load(path)[key]`. Only the
    /// storages of that state dict are read.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`] when the top level has no such key, listing the keys it has;
    /// [`Error::NotAStateDict`] when the value under `key` is not a state dict.
    pub fn state_dict_at(&self, key: &str) -> Result<StateDict, Error> {
        match &self.inner {
            Inner::Single(p) => {
                let id = self.object_at(p, Some(key))?;
                materialize::Materializer::new(&self.path, p, &self.options)
                    .state_dict(id, Some(key))
            }
            Inner::Sharded(_) => Err(self.key_not_found(key)),
        }
    }

    /// The top-level object, or the value under `key` of the top-level dict.
    fn object_at(&self, p: &Parsed<'_>, at: Option<&str>) -> Result<Id, Error> {
        match at {
            None => Ok(p.arena.root),
            Some(key) => top_level_entry(&p.arena, key).ok_or_else(|| self.key_not_found(key)),
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

impl Checkpoint<'_> {
    /// `model.load_state_dict(torch.load(path))` in one step, at memory speed: the state
    /// dict at the top of the file is checked against the model with `load_state_dict`'s
    /// rules and words, then each tensor's bytes are read from the file straight into the
    /// model's tensor (or, where dtype, device or layout differ, through a converting copy).
    /// Nothing is read when the check fails, and the model is then unchanged.
    ///
    /// # Errors
    ///
    /// As [`load_state_dict`](crate::load_state_dict) and [`state_dict`](Self::state_dict).
    /// An I/O error while reading ([`Error::Io`]: the file truncated underneath) can leave
    /// the model partly written.
    pub fn load_into<M: StateDictModule + ?Sized>(
        &self,
        module: &M,
        options: &LoadOptions,
    ) -> Result<IncompatibleKeys, Error> {
        self.load_into_from(None, module, options)
    }

    /// [`load_into`](Self::load_into) of the state dict under `key` of the top-level dict:
    /// `model.load_state_dict(torch.load(path)[key])`.
    ///
    /// # Errors
    ///
    /// As [`load_into`](Self::load_into) and [`state_dict_at`](Self::state_dict_at).
    pub fn load_into_at<M: StateDictModule + ?Sized>(
        &self,
        key: &str,
        module: &M,
        options: &LoadOptions,
    ) -> Result<IncompatibleKeys, Error> {
        self.load_into_from(Some(key), module, options)
    }

    fn load_into_from<M: StateDictModule + ?Sized>(
        &self,
        at: Option<&str>,
        module: &M,
        options: &LoadOptions,
    ) -> Result<IncompatibleKeys, Error> {
        let p = match (&self.inner, at) {
            (Inner::Single(p), _) => p,
            (Inner::Sharded(s), None) => {
                return load::load_state_dict_with(module, &s.state_dict()?, options)
            }
            (Inner::Sharded(_), Some(key)) => return Err(self.key_not_found(key)),
        };
        let id = self.object_at(p, at)?;
        let mut mat = materialize::Materializer::new(&self.path, p, &self.options);
        let source = mat.file_state_dict(id, at)?;
        let tree = module.module_tree()?;
        let plan = load::plan(&tree, &source, options);
        if let Some(error) = plan.error {
            return Err(error.into());
        }
        self.commit(&plan.copies, &source, p, &mut mat)?;
        Ok(plan.report)
    }

    fn commit(
        &self,
        copies: &[PlannedCopy<'_>],
        source: &materialize::FileStateDict<'_>,
        p: &Parsed<'_>,
        mat: &mut materialize::Materializer<'_, '_>,
    ) -> Result<(), Error> {
        let _no_grad = tch::no_grad_guard();
        let mut reads = Vec::new();
        for c in copies {
            let index = source.tensor_index(c.src);
            let t = &p.arena.tensors[index];
            let loc = &p.storages[&t.storage.key];
            match direct::direct_range(t, loc, p.big_endian, c.dst) {
                Some((offset, len)) => reads.push(direct::Read {
                    dst: c.dst,
                    offset,
                    len,
                }),
                None => {
                    let src = mat.tensor(index)?;
                    load::copy_into(c.dst, &src, c.squeeze).map_err(|source| Error::Copy {
                        key: c.key.to_string(),
                        source,
                    })?;
                }
            }
        }
        let threads = self.options.read_threads();
        let from = match &p.source {
            Source::Mapped(_, file) => direct::From::File(file),
            other => direct::From::Bytes(other.bytes()),
        };
        direct::read_all(&reads, from, threads).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// `model.load_state_dict(torch.load(path))`: opens the checkpoint at `path` and loads the
/// state dict at its top into `module`, reading each tensor straight into the model (see
/// [`Checkpoint::load_into`]).
///
/// # Errors
///
/// As [`Checkpoint::open`] and [`Checkpoint::load_into`].
pub fn load_checkpoint<M: StateDictModule + ?Sized>(
    module: &M,
    path: impl AsRef<Path>,
    strict: bool,
) -> Result<IncompatibleKeys, Error> {
    Checkpoint::open(path)?.load_into(module, &LoadOptions::new().strict(strict))
}

/// Reads a checkpoint's state dict; see [`Checkpoint`].
impl StateDict {
    /// `torch.load(path)` of a file whose top-level object is a state dict: torch.save (zip
    /// or legacy), safetensors, or a sharded index. The format comes from the bytes.
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
    /// `{'model': ..., 'epoch': 240}`. Only that state dict's storages are read.
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
