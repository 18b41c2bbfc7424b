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

mod direct;
mod legacy;
mod materialize;
pub(crate) mod pickle;
mod safetensors_file;
mod sharded;
mod torch_zip;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use tch::{Device, Kind};

use crate::error::Error;
use crate::load::{self, LoadOptions, PlannedCopy};
use crate::module_tree::StateDictModule;
use crate::report::IncompatibleKeys;
use crate::state_dict::StateDict;
use crate::value::Value;

use pickle::{Arena, Failure, Id, Obj};

/// The formats this crate reads, detected from a file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// `torch.save`'s zip format (PyTorch 1.6 and later).
    TorchZip,
    /// `torch.save`'s legacy format (PyTorch 0.4 to 1.5, or
    /// `_use_new_zipfile_serialization=False`).
    TorchLegacy,
    /// safetensors.
    Safetensors,
    /// A sharded checkpoint's `*.index.json` with its `weight_map`.
    ShardedIndex,
}

/// Bounds on what a checkpoint may make this crate do. A file that would pass one gets
/// [`Error::LimitExceeded`]. The defaults admit checkpoints of millions of tensors; lower
/// them for files from strangers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadLimits {
    /// The largest pickle (`data.pkl`) in bytes. Default: 1 GiB.
    pub max_pickle_bytes: u64,
    /// The most objects a pickle may create. Default: 256 M.
    pub max_objects: u64,
    /// The most memo entries a pickle may store. Default: 64 M.
    pub max_memo_entries: u64,
    /// The deepest nesting of containers. Default: 100.
    pub max_depth: usize,
    /// The most tensors a checkpoint may describe. Default: 16 M.
    pub max_tensors: u64,
    /// The most values a pickle may expand into, counting every copy a memo reference
    /// makes; the limit applied is also at most 16 values per object of the pickle, so a
    /// memo bomb fails in proportion to its size. Default: 256 M.
    pub max_values: u64,
    /// The largest a compressed storage may decompress to, as a multiple of its compressed
    /// size. Default: 1100 (deflate's own bound is about 1032).
    pub max_compression_ratio: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_pickle_bytes: 1 << 30,
            max_objects: 256 << 20,
            max_memo_entries: 64 << 20,
            max_depth: 100,
            max_tensors: 16 << 20,
            max_values: 256 << 20,
            max_compression_ratio: 1100,
        }
    }
}

/// How a checkpoint is read. Setters cannot fail and name their default.
///
/// ```
/// use tch::{Device, Kind};
/// use tch_state_dict::ReadOptions;
///
/// // torch.load(p, map_location="cuda:0"), then .half() on floating-point tensors.
/// let options = ReadOptions::new().device(Device::Cuda(0)).kind(Some(Kind::Half));
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ReadOptions {
    device: Device,
    kind: Option<Kind>,
    mmap: bool,
    threads: Option<usize>,
    limits: ReadLimits,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            device: Device::Cpu,
            kind: None,
            mmap: false,
            threads: None,
            limits: ReadLimits::default(),
        }
    }
}

impl ReadOptions {
    /// Tensors on the CPU, in their saved dtypes, copied out of the file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where tensors are placed, like `map_location` (default: `Device::Cpu`). The saved
    /// location (`cuda:0`) is ignored, so a checkpoint saved on a GPU loads on a CPU machine.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Casts floating-point tensors to `kind` as they are read (default: `None`, keep each
    /// tensor's dtype). Integer and boolean tensors keep theirs, as `model.half()` does.
    pub fn kind(mut self, kind: Option<Kind>) -> Self {
        self.kind = kind;
        self
    }

    /// Makes CPU tensors views of a private memory map of the file instead of copies, as
    /// `torch.load(mmap=True)` (default: `false`). Nothing is read until used; writing to a
    /// tensor never changes the file. Replacing the file while its tensors live is unsafe
    /// in the way every memory map is: do not overwrite a checkpoint in place while you hold
    /// its tensors. Storages that cannot be mapped (compressed, big-endian, misaligned, or a
    /// path that is not UTF-8) are copied.
    pub fn mmap(mut self, mmap: bool) -> Self {
        self.mmap = mmap;
        self
    }

    /// How many threads [`Checkpoint::load_into`] reads with (default: `None`, libtorch's
    /// intra-op thread count, `tch::get_num_threads()`). Reads are split across threads only
    /// when there are at least 8 MiB to read.
    pub fn threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }

    /// The bounds on what a file may make the reader do (default: [`ReadLimits::default`]).
    pub fn limits(mut self, limits: ReadLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// The bytes of a checkpoint.
pub(crate) enum Source<'a> {
    /// A file, mapped for parsing and kept open for reading tensors into a model.
    Mapped(memmap2::Mmap, File),
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

impl Source<'_> {
    pub(crate) fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// `len` bytes at `offset`: read from the file (not through the map) when there is one.
    /// The caller has checked the range against the length.
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        match self {
            Source::Mapped(_, file) => {
                let mut buf = vec![0u8; len];
                direct::read_exact_at(file, &mut buf, offset)?;
                Ok(buf)
            }
            other => Ok(other.bytes()[offset as usize..offset as usize + len].to_vec()),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Source::Mapped(m, _) => m,
            Source::Owned(v) => v,
            Source::Borrowed(b) => b,
        }
    }
}

/// Maps `file` read-only.
///
/// # Safety
///
/// The map is only sound while no one truncates or writes the file; every memory map carries
/// this caveat, and this crate never writes a file it has open. Readers that must not trust
/// the file system's other users can read the file into memory and use
/// [`Checkpoint::from_bytes`] instead.
unsafe fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    memmap2::Mmap::map(file)
}

/// Where a storage's bytes are in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StorageLoc {
    /// Stored bytes, `start..start + len`.
    Range { start: u64, len: u64 },
    /// Deflated bytes at `start..start + compressed`, `len` bytes once inflated.
    Deflated {
        start: u64,
        compressed: u64,
        len: u64,
    },
}

impl StorageLoc {
    pub(crate) fn len(&self) -> u64 {
        match self {
            StorageLoc::Range { len, .. } | StorageLoc::Deflated { len, .. } => *len,
        }
    }
}

/// A parsed file: its object tree (tensors as descriptions) and where its storages are.
pub(crate) struct Parsed<'a> {
    pub source: Source<'a>,
    pub format: Format,
    pub arena: Arena,
    pub storages: HashMap<String, StorageLoc>,
    pub big_endian: bool,
    /// The record that held the pickle (`archive/data.pkl`), for errors.
    pub entry: String,
    pub safetensors_metadata: Option<IndexMap<String, String>>,
}

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
        let threads = self
            .options
            .threads
            .unwrap_or_else(|| tch::get_num_threads().max(1) as usize);
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

/// The value under a string key of the top-level dict.
fn top_level_entry(arena: &Arena, key: &str) -> Option<Id> {
    match arena.get(arena.root) {
        Obj::Dict(d) => d.items.iter().find_map(|&(k, v)| match arena.get(k) {
            Obj::Str(s) if s == key => Some(v),
            _ => None,
        }),
        _ => None,
    }
}

/// The pickle protocol 2 header and LONG1 of torch's legacy magic number
/// 0x1950a86a20f9469cfc6c.
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

/// Tells a checkpoint's format from its first bytes.
pub(crate) fn detect(path: &Path, bytes: &[u8]) -> Result<Format, Error> {
    let path = path.to_path_buf();
    if bytes.is_empty() {
        return Err(Error::EmptyFile { path });
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(Format::TorchZip);
    }
    if bytes.starts_with(b"version https://git-lfs.github.com/spec") {
        return Err(Error::LfsPointer { path });
    }
    if bytes.starts_with(&LEGACY_MAGIC) {
        return Ok(Format::TorchLegacy);
    }
    // safetensors: a little-endian u64 header length, then the JSON header. A real length
    // has zero high bytes, which JSON text (a sharded index) never has.
    if bytes.len() >= 10 && bytes[8] == b'{' && bytes[6] == 0 && bytes[7] == 0 {
        return Ok(Format::Safetensors);
    }
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"{") {
        return Ok(Format::ShardedIndex);
    }
    let found = if bytes[0] == 0x80 && bytes.len() > 1 && bytes[1] <= 5 {
        "a pickle without torch.save's magic number (pickle.dump?)".to_string()
    } else if text.len() >= 5
        && (text[..5].eq_ignore_ascii_case(b"<!doc") || text[..5].eq_ignore_ascii_case(b"<html"))
    {
        "an HTML page (a download that failed?)".to_string()
    } else if bytes.starts_with(b"\x93NUMPY") {
        "a NumPy .npy file".to_string()
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        "a gzip file".to_string()
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        "a tar archive (torch.save before PyTorch 0.4 is not supported)".to_string()
    } else {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("it starts with {}", head.join(" "))
    };
    Err(Error::UnknownFormat { path, found })
}

/// Turns a pickle machine failure into the crate's error, naming the file and record.
pub(crate) fn pickle_error(path: &Path, entry: &str, failure: Failure) -> Error {
    let path = path.to_path_buf();
    let entry = entry.to_string();
    match failure {
        Failure::Pickle(offset, kind) => Error::Pickle {
            path,
            entry,
            offset: Some(offset),
            kind,
        },
        Failure::Disallowed(offset, module, name) => Error::DisallowedGlobal {
            path,
            entry,
            offset,
            module,
            name,
        },
        Failure::UnsupportedDtype(dtype) => Error::UnsupportedDtype { path, dtype },
        Failure::Limit(limit, max) => Error::LimitExceeded { path, limit, max },
    }
}

/// Checks every tensor of `arena` against the storages it views, with checked arithmetic:
/// the storage exists, sizes, strides and offset are non-negative, and the furthest element
/// lies inside the storage (or legacy view).
pub(crate) fn check_tensors(
    path: &Path,
    arena: &Arena,
    storages: &HashMap<String, StorageLoc>,
    record_prefix: &str,
) -> Result<(), Error> {
    for t in &arena.tensors {
        let invalid = |reason: String| Error::InvalidTensor {
            path: path.to_path_buf(),
            storage: t.storage.key.clone(),
            reason,
        };
        let loc = storages
            .get(&t.storage.key)
            .ok_or_else(|| Error::MissingRecord {
                path: path.to_path_buf(),
                record: format!("{record_prefix}{}", t.storage.key),
            })?;
        let elem = t.dtype.elt_size_in_bytes() as u64;
        let storage_elems = loc.len() / elem;
        let available = match t.storage.view {
            None => storage_elems,
            Some((offset, size)) => {
                let (offset, size) = (offset as u64, size as u64);
                let end = offset
                    .checked_add(size)
                    .ok_or_else(|| invalid("the view's end overflows".into()))?;
                if end > storage_elems {
                    return Err(invalid(format!(
                        "a view of elements {offset}..{end} of a storage of {storage_elems}"
                    )));
                }
                size
            }
        };
        if t.offset < 0 {
            return Err(invalid(format!("negative storage offset {}", t.offset)));
        }
        if let Some(d) = t.size.iter().find(|&&d| d < 0) {
            return Err(invalid(format!("negative size {d} in {:?}", t.size)));
        }
        if let Some(s) = t.stride.iter().find(|&&s| s < 0) {
            return Err(invalid(format!("negative stride {s} in {:?}", t.stride)));
        }
        let overflow = || {
            invalid(format!(
                "size {:?} and stride {:?} overflow",
                t.size, t.stride
            ))
        };
        let numel = t
            .size
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(overflow)?;
        numel.checked_mul(elem).ok_or_else(overflow)?;
        let offset = t.offset as u64;
        // One past the furthest element the view reaches.
        let end = if numel == 0 {
            offset
        } else {
            t.size
                .iter()
                .zip(&t.stride)
                .try_fold(offset, |acc, (&d, &s)| {
                    (d as u64 - 1)
                        .checked_mul(s as u64)
                        .and_then(|x| acc.checked_add(x))
                })
                .and_then(|x| x.checked_add(1))
                .ok_or_else(overflow)?
        };
        if end > available {
            return Err(invalid(format!(
                "a {} tensor of size {:?}, stride {:?} and offset {} needs {} elements; the \
                 storage holds {}",
                crate::pyfmt::dtype_name(t.dtype),
                t.size,
                t.stride,
                t.offset,
                end,
                available
            )));
        }
    }
    Ok(())
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
