//! The parsed, format-neutral index of a checkpoint file: its object tree, whose tensors are
//! descriptions (storage, dtype, offset, size, stride), and where each storage's bytes lie.
//! Every format fills it: the torch zip and legacy readers through the pickle machine,
//! safetensors from its header. Nothing here reads tensor data.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;

use super::budget::{Budget, Exhausted};
use super::crc::Crcs;
use super::detect::Format;
use super::options::ReadOptions;
use super::pickle::{Arena, Failure, Id, Obj};
use super::pread::view_end;
use super::source::Source;
use super::torchscript::ScriptClasses;
use crate::error::Error;

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
    /// The CRC-32 of each storage, for a zip; empty for other formats.
    pub crcs: Crcs,
    pub big_endian: bool,
    /// The record that held the pickle (`archive/data.pkl`), for errors.
    pub entry: String,
    pub safetensors_metadata: Option<IndexMap<String, String>>,
    /// A TorchScript archive's class declarations.
    pub script_classes: Option<ScriptClasses>,
    /// The file's memory budget, charged with what the parsed file keeps: what building
    /// values may still use.
    pub budget: Budget,
}

/// A parsed file with what reading its tensors needs: its path (for errors) and the options
/// it was opened with. Lazy state dicts share it, so it outlives the `Checkpoint` it came from.
pub(crate) struct OpenFile<'a> {
    pub path: PathBuf,
    pub options: ReadOptions,
    pub parsed: Parsed<'a>,
    /// One past the last byte any storage occupies: the least length the file must still
    /// have when its tensors are read.
    pub extent: u64,
}

impl<'a> OpenFile<'a> {
    pub(crate) fn new(path: PathBuf, options: ReadOptions, parsed: Parsed<'a>) -> Self {
        let extent = parsed
            .storages
            .values()
            .map(|loc| match *loc {
                StorageLoc::Range { start, len } => start.saturating_add(len),
                StorageLoc::Deflated {
                    start, compressed, ..
                } => start.saturating_add(compressed),
            })
            .max()
            .unwrap_or(0);
        OpenFile {
            path,
            options,
            parsed,
            extent,
        }
    }

    /// What a load checks of the file before its first write into the model. Fails with
    /// [`Error::FileChanged`] when the file is now shorter than the storages it was parsed
    /// with: truncated or replaced since it was opened (a file in memory cannot change).
    /// With [`ReadOptions::verify_crc`], also fails with [`Error::CrcMismatch`] when a
    /// stored storage does not match its CRC-32 (deflated ones are checked as they are
    /// inflated).
    ///
    /// `lengths` holds the length of each descriptor already asked for (see
    /// [`check_before_writing`]).
    fn check_before_write(&self, lengths: &mut HashMap<*const File, u64>) -> Result<(), Error> {
        if let Source::Mapped(_, file) = &self.parsed.source {
            let id = Arc::as_ptr(file);
            let len = match lengths.get(&id) {
                Some(&len) => len,
                None => {
                    let len = file
                        .metadata()
                        .map_err(|source| Error::Io {
                            path: self.path.clone(),
                            source,
                        })?
                        .len();
                    lengths.insert(id, len);
                    len
                }
            };
            if len < self.extent {
                return Err(Error::FileChanged {
                    path: self.path.clone(),
                    needed: self.extent,
                    found: len,
                });
            }
        }
        if self.options.verify_crc {
            let from = self.parsed.source.read_from();
            let threads = self.options.read_threads();
            (self.parsed.crcs).check_stored(&self.path, &self.parsed.storages, from, threads)?;
        }
        Ok(())
    }
}

/// [`OpenFile::check_before_write`] of each of `files`, in order, each descriptor's length
/// asked once: the entries of a DCP `.distcp` file share one descriptor, and its hundreds of
/// chunks need one `fstat`, not one each.
pub(crate) fn check_before_writing<'f, 'a: 'f>(
    files: impl IntoIterator<Item = &'f OpenFile<'a>>,
) -> Result<(), Error> {
    let mut lengths = HashMap::new();
    for file in files {
        file.check_before_write(&mut lengths)?;
    }
    Ok(())
}

impl OpenFile<'_> {
    /// [`Error::UnsupportedDtype`] when tensor `index` is of a dtype this crate cannot read,
    /// naming `key`, or else the key a dict of the file holds it under.
    pub(crate) fn check_readable(&self, index: usize, key: Option<&str>) -> Result<(), Error> {
        let dtype = self.parsed.arena.tensors[index].dtype;
        if dtype.kind().is_some() {
            return Ok(());
        }
        let key = key.map(str::to_string).or_else(|| self.key_of(index));
        Err(Error::UnsupportedDtype {
            path: self.path.clone(),
            key,
            dtype: format!("torch.{}", dtype.name()),
        })
    }

    /// The key under which a dict of the file holds tensor `index`, for errors: a search of
    /// the whole arena, made only when an error needs it.
    fn key_of(&self, index: usize) -> Option<String> {
        let arena = &self.parsed.arena;
        arena.objs.iter().find_map(|obj| match obj {
            Obj::Dict(d) => d
                .items
                .iter()
                .find_map(|&(k, v)| match (arena.get(k), arena.get(v)) {
                    (Obj::Str(k), Obj::Tensor(i)) if *i == index => Some(k.clone()),
                    _ => None,
                }),
            _ => None,
        })
    }
}

/// The value under a string key of the top-level dict.
pub(crate) fn top_level_entry(arena: &Arena, key: &str) -> Option<Id> {
    match arena.get(arena.root) {
        Obj::Dict(d) => d.items.iter().find_map(|&(k, v)| match arena.get(k) {
            Obj::Str(s) if s == key => Some(v),
            _ => None,
        }),
        _ => None,
    }
}

/// The error of a file whose memory budget ran out.
pub(crate) fn out_of_budget(path: &Path) -> impl FnOnce(Exhausted) -> Error + '_ {
    move |e| Error::LimitExceeded {
        path: path.to_path_buf(),
        limit: "max_memory",
        max: e.max,
    }
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
    record_prefix: &dyn std::fmt::Display,
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
        // The storage holds what its persistent id declares, exactly, as torch.load asks.
        let storage_elem = t.storage.dtype.map_or(1, |d| d.elt_size() as u64);
        let expected = t.storage.numel.saturating_mul(storage_elem);
        if expected != loc.len() {
            return Err(Error::StorageSizeMismatch {
                path: path.to_path_buf(),
                storage: t.storage.key.clone(),
                expected,
                found: loc.len(),
            });
        }
        // safetensors' 4- and 6-bit formats: the safetensors crate checked the tensor's bytes
        // against its shape, and such a tensor is never read.
        if t.dtype.bits() % 8 != 0 {
            continue;
        }
        let elem = t.dtype.elt_size() as u64;
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
        if let Some(d) = t.size().iter().find(|&&d| d < 0) {
            return Err(invalid(format!("negative size {d} in {:?}", t.size())));
        }
        if let Some(s) = t.stride().iter().find(|&&s| s < 0) {
            return Err(invalid(format!("negative stride {s} in {:?}", t.stride())));
        }
        let overflow = || {
            invalid(format!(
                "size {:?} and stride {:?} overflow",
                t.size(),
                t.stride()
            ))
        };
        let numel = t
            .size()
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(overflow)?;
        numel.checked_mul(elem).ok_or_else(overflow)?;
        let end = view_end(t.offset as u64, t.size(), t.stride()).ok_or_else(overflow)?;
        if end > available {
            return Err(invalid(format!(
                "a {} tensor of size {:?}, stride {:?} and offset {} needs {} elements; the \
                 storage holds {}",
                t.dtype.name(),
                t.size(),
                t.stride(),
                t.offset,
                end,
                available
            )));
        }
    }
    Ok(())
}
