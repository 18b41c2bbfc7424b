//! torch.save's zip format: `<root>/data.pkl`, `<root>/data/<key>` for each storage, and
//! `<root>/byteorder`. Any root name; storages aligned or not. An archive that holds a name
//! twice is refused (which copy `torch.load` reads depends on the directory's order), and so
//! is a record flagged as encrypted (as `torch.load` refuses it).
//!
//! CRCs: PyTorch writes them, other writers leave them zero (read as not recorded), and
//! `torch.load` checks none. This reader checks every record it reads whole: `data.pkl` and
//! `byteorder` here, deflated and small stored storages as they are read, large stored
//! storages when [`ReadOptions::verify_crc`](super::ReadOptions::verify_crc) asks (see
//! [`crc`](super::crc)).
//!
//! A TorchScript archive is the same container with `<root>/constants.pkl` and
//! `<root>/code/`; its `data.pkl` is read the same way, and its code only for the class
//! declarations of [`super::torchscript`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::budget::{heap, Budget};
use super::crc::{check_crc, Crcs};
use super::index::out_of_budget;
use super::pickle::{self, Flavor};
use super::torchscript::{self, ScriptClasses};
use super::zip_dir::{Bytes, Directory, Entry};
use super::{
    check_tensors, pickle_error, Format, Parsed, ReadLimits, ReadOptions, Source, StorageLoc,
};
use crate::error::Error;

/// The records the reader needs, located, each with its CRC-32.
struct Records {
    root: String,
    storages: HashMap<String, StorageLoc>,
    crcs: Crcs,
    pickle: Option<(StorageLoc, u32)>,
    byteorder: Option<(StorageLoc, u32)>,
    /// Whether it is a TorchScript archive (it has `constants.pkl` or `code/`).
    script: bool,
    /// A TorchScript archive's `code/*.py` records, by their name after `code/`, each with
    /// its CRC-32.
    code: Vec<(String, StorageLoc, u32)>,
    /// Whether it has `<root>/model.json`: torch 1.0 to 1.2's TorchScript format.
    model_json: bool,
}

/// What the memory budget is charged for each storage record, besides its name (kept
/// twice): its entries in the maps of locations and CRCs, and the zip reader's own entry
/// while it reads the directory.
const RECORD_COST: u64 = 320;

/// Parses the archive, runs its pickle and checks every tensor against its storage,
/// charging `budget`.
///
/// A file is parsed through small reads, not through the memory map: finding each record's
/// data means reading its local header, and through a map each such read would make the
/// kernel map (and count as resident) the 64 KiB around it, which for a checkpoint of many
/// tensors is a sizeable part of the file.
///
/// Records read whole (`data.pkl`, `byteorder`, code) are charged, inflated, before they
/// are read, and released once read: a deflated `data.pkl` may expand only within the
/// budget, whatever its compression ratio.
pub(crate) fn parse<'a>(
    path: &Path,
    source: Source<'a>,
    options: &ReadOptions,
    budget: Budget,
) -> Result<Parsed<'a>, Error> {
    let bytes = match &source {
        Source::Mapped(_, file) => Bytes::file(file, source.len()),
        other => Bytes::Memory(other.bytes()),
    };
    let zip = read(path, bytes, options, budget)?;
    Ok(zip.with_source(source))
}

/// A torch.save zip, parsed: all of a [`Parsed`] but where its bytes are.
pub(crate) struct Zip {
    pub format: Format,
    pub arena: super::pickle::Arena,
    pub storages: HashMap<String, StorageLoc>,
    pub crcs: Crcs,
    pub big_endian: bool,
    pub entry: String,
    pub script_classes: Option<ScriptClasses>,
    pub budget: Budget,
}

impl Zip {
    /// The parsed file, its bytes in `source`.
    pub(crate) fn with_source(self, source: Source<'_>) -> Parsed<'_> {
        Parsed {
            source,
            format: self.format,
            arena: self.arena,
            storages: self.storages,
            crcs: self.crcs,
            big_endian: self.big_endian,
            entry: self.entry,
            safetensors_metadata: None,
            script_classes: self.script_classes,
            budget: self.budget,
        }
    }
}

/// [`parse`], from `bytes`.
pub(crate) fn read(
    path: &Path,
    bytes: Bytes<'_>,
    options: &ReadOptions,
    mut budget: Budget,
) -> Result<Zip, Error> {
    let limits = &options.limits;
    let records = records(path, bytes, limits)?;
    let kept: u64 = (records.storages.keys())
        .map(|key| RECORD_COST + 2 * heap(key.len()))
        .sum();
    budget.charge(kept).map_err(out_of_budget(path))?;
    if records.script && options.weights_only {
        return Err(Error::TorchScript {
            path: path.to_path_buf(),
        });
    }
    let record = |name: &str| joined(&records.root, name);
    let data_pkl = record("data.pkl");
    if records.pickle.is_none() && records.model_json {
        // torch 1.0 to 1.2 wrote TorchScript as JSON and protobuf-described tensors; PyTorch
        // 2.11's torch.jit.load refuses it too ("Legacy model format is not supported").
        return Err(Error::InvalidRecord {
            path: path.to_path_buf(),
            record: record("model.json"),
            reason: "a TorchScript archive of torch 1.0 to 1.2, a format torch.jit.load no \
                     longer reads either: load it with such a torch, and save it again"
                .to_string(),
        });
    }
    let (pickle_loc, pickle_crc) = records.pickle.clone().ok_or_else(|| Error::MissingRecord {
        path: path.to_path_buf(),
        record: data_pkl.clone(),
    })?;
    if pickle_loc.len() > limits.max_pickle_bytes {
        return Err(Error::LimitExceeded {
            path: path.to_path_buf(),
            limit: "max_pickle_bytes",
            max: limits.max_pickle_bytes,
        });
    }
    let big_endian = match &records.byteorder {
        None => false,
        Some((loc, crc)) => {
            let name = format_args!("{}/byteorder", records.root);
            let read = read_charged(path, bytes, loc, &name, *crc, &budget)?;
            match &*read {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(Error::InvalidRecord {
                        path: path.to_path_buf(),
                        record: record("byteorder"),
                        reason: format!(
                            "expected 'little' or 'big', found {:?}",
                            String::from_utf8_lossy(&other[..other.len().min(16)])
                        ),
                    })
                }
            }
        }
    };
    let pickle_cost = read_cost(&pickle_loc);
    budget.charge(pickle_cost).map_err(out_of_budget(path))?;
    let pickle_bytes = read_checked(path, bytes, &pickle_loc, &data_pkl, pickle_crc)?;
    let flavor = if records.script {
        Flavor::Script
    } else {
        Flavor::Zip
    };
    let (arena, _) = pickle::run(&pickle_bytes, flavor, options, &mut budget)
        .map_err(|f| pickle_error(path, &data_pkl, f))?;
    drop(pickle_bytes);
    budget.release(pickle_cost);
    check_tensors(
        path,
        &arena,
        &records.storages,
        &format_args!("{}/data/", records.root),
    )?;
    let script_classes = if records.script {
        Some(script_classes(path, bytes, &records, limits, &budget)?)
    } else {
        None
    };
    Ok(Zip {
        format: if records.script {
            Format::TorchScript
        } else {
            Format::TorchZip
        },
        arena,
        storages: records.storages,
        crcs: records.crcs,
        big_endian,
        entry: data_pkl,
        script_classes,
        budget,
    })
}

/// `{root}/{rel}`, allocated once at its size (`format!` grows its string as it writes:
/// two allocations for each of a DCP checkpoint's 4096 items).
fn joined(root: &str, rel: &str) -> String {
    let mut name = String::with_capacity(root.len() + 1 + rel.len());
    name.push_str(root);
    name.push('/');
    name.push_str(rel);
    name
}

/// What reading a record whole costs while it is held: its bytes, and for a deflated
/// record the compressed bytes too while it is inflated.
fn read_cost(loc: &StorageLoc) -> u64 {
    match *loc {
        StorageLoc::Range { len, .. } => heap(len as usize),
        StorageLoc::Deflated {
            compressed, len, ..
        } => heap(len as usize) + heap(compressed as usize),
    }
}

/// [`read_checked`], once `budget` has room for the record; the record is freed by the
/// caller before anything else is charged.
fn read_charged<'b>(
    path: &Path,
    bytes: Bytes<'b>,
    loc: &StorageLoc,
    record: &dyn std::fmt::Display,
    crc: u32,
    budget: &Budget,
) -> Result<Cow<'b, [u8]>, Error> {
    budget.check(read_cost(loc)).map_err(out_of_budget(path))?;
    read_checked(path, bytes, loc, record, crc)
}

/// The class declarations of a TorchScript archive's code, read as text. The code records
/// together may be no larger than a pickle may.
fn script_classes(
    path: &Path,
    bytes: Bytes<'_>,
    records: &Records,
    limits: &ReadLimits,
    budget: &Budget,
) -> Result<ScriptClasses, Error> {
    let total = records
        .code
        .iter()
        .fold(0u64, |acc, (_, loc, _)| acc.saturating_add(loc.len()));
    if total > limits.max_pickle_bytes {
        return Err(Error::LimitExceeded {
            path: path.to_path_buf(),
            limit: "max_pickle_bytes",
            max: limits.max_pickle_bytes,
        });
    }
    let mut classes = ScriptClasses::new();
    for (rel, loc, crc) in &records.code {
        let Some(module) = torchscript::module_of_record(rel) else {
            continue;
        };
        let record = format!("{}/code/{rel}", records.root);
        let code = read_charged(path, bytes, loc, &record, *crc, budget)?;
        torchscript::read_declarations(&module, &String::from_utf8_lossy(&code), &mut classes);
    }
    Ok(classes)
}

/// Reads the zip's directory and locates `data.pkl`, `byteorder` and the storages.
fn records(path: &Path, bytes: Bytes<'_>, limits: &ReadLimits) -> Result<Records, Error> {
    let zip_error = |source| Error::Zip {
        path: path.to_path_buf(),
        source,
    };
    let directory = Directory::read(bytes).map_err(zip_error)?;
    if let Some(name) = directory.first_duplicate() {
        // torch.load's reader picks one copy or the other depending on the directory's
        // order. Neither is safe to trust.
        return Err(Error::InvalidRecord {
            path: path.to_path_buf(),
            record: String::from_utf8_lossy(name).into_owned(),
            reason: "the archive holds this record twice; torch.load reads one copy or the \
                     other, depending on the order of the directory"
                .into(),
        });
    }
    // PyTorch takes the archive's root from its first record. Names are bytes, as torch.load
    // compares them; a name that is not UTF-8 can be no key of the pickle's.
    let root = (directory.entries().next())
        .map(|(name, _)| name.split(|&b| b == b'/').next().unwrap_or_default())
        .unwrap_or_default();
    let under = |name, rel| under(root, name, rel);
    let is = |name, rel| under(name, rel) == Some(b"".as_slice());
    let script = directory
        .entries()
        .any(|(name, _)| is(name, b"constants.pkl") || under(name, b"code/").is_some());
    let root = String::from_utf8_lossy(root).into_owned();
    let mut found = Records {
        storages: HashMap::new(),
        crcs: Crcs {
            prefix: joined(&root, "data/"),
            by_key: HashMap::new(),
        },
        pickle: None,
        byteorder: None,
        script,
        code: Vec::new(),
        model_json: directory.entries().any(|(name, _)| is(name, b"model.json")),
        root,
    };
    for (name, entry) in directory.entries() {
        let storage = under(name, b"data/").filter(|key| !key.is_empty());
        let code = under(name, b"code/").filter(|rel| script && rel.ends_with(b".py"));
        if let Some(key) = storage {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            let (loc, crc) = locate(path, bytes, name, entry, limits)?;
            if crc != 0 {
                found.crcs.by_key.insert(key.to_string(), crc);
            }
            found.storages.insert(key.to_string(), loc);
        } else if let Some(rel) = code {
            let Ok(rel) = std::str::from_utf8(rel) else {
                continue;
            };
            let (loc, crc) = locate(path, bytes, name, entry, limits)?;
            found.code.push((rel.to_string(), loc, crc));
        } else if is(name, b"data.pkl") {
            found.pickle = Some(locate(path, bytes, name, entry, limits)?);
        } else if is(name, b"byteorder") {
            found.byteorder = Some(locate(path, bytes, name, entry, limits)?);
        }
    }
    Ok(found)
}

/// What follows `<root>/<rel>` in `name`, if it starts so.
fn under<'n>(root: &[u8], name: &'n [u8], rel: &[u8]) -> Option<&'n [u8]> {
    name.strip_prefix(root)?
        .strip_prefix(b"/")?
        .strip_prefix(rel)
}

/// Where `entry`'s bytes are, checked against the file's length, and its CRC-32.
fn locate(
    path: &Path,
    bytes: Bytes<'_>,
    name: &[u8],
    entry: &Entry,
    limits: &ReadLimits,
) -> Result<(StorageLoc, u32), Error> {
    let invalid = |reason: String| Error::InvalidRecord {
        path: path.to_path_buf(),
        record: String::from_utf8_lossy(name).into_owned(),
        reason,
    };
    if entry.encrypted() {
        return Err(invalid(
            "the record is encrypted (torch.load refuses it too)".into(),
        ));
    }
    let start = entry.data_start(bytes).map_err(|source| Error::Zip {
        path: path.to_path_buf(),
        source,
    })?;
    let (compressed, len, crc) = (entry.compressed, entry.size, entry.crc);
    let file_len = bytes.len();
    let end = start
        .checked_add(compressed)
        .ok_or_else(|| invalid("its end overflows".into()))?;
    if end > file_len {
        return Err(invalid(format!(
            "its data ends at byte {end}, past the end of the file ({file_len} bytes)"
        )));
    }
    match entry.method {
        0 => {
            if len != compressed {
                return Err(invalid(format!(
                    "stored with {compressed} bytes but declares {len}"
                )));
            }
            Ok((StorageLoc::Range { start, len }, crc))
        }
        8 => {
            let bound = compressed
                .saturating_mul(limits.max_compression_ratio)
                .saturating_add(1024);
            if len > bound {
                return Err(Error::LimitExceeded {
                    path: path.to_path_buf(),
                    limit: "max_compression_ratio",
                    max: limits.max_compression_ratio,
                });
            }
            Ok((
                StorageLoc::Deflated {
                    start,
                    compressed,
                    len,
                },
                crc,
            ))
        }
        other => Err(invalid(format!(
            "unsupported compression method {other} (torch.save stores or deflates)"
        ))),
    }
}

/// A record's bytes, inflated if needed, checked against its CRC-32.
fn read_checked<'b>(
    path: &Path,
    bytes: Bytes<'b>,
    loc: &StorageLoc,
    record: &dyn std::fmt::Display,
    crc: u32,
) -> Result<Cow<'b, [u8]>, Error> {
    let read = read_record(path, bytes, loc)?;
    check_crc(path, record, crc, &read)?;
    Ok(read)
}

/// A record's bytes, inflated if needed; borrowed where they are already in memory (a
/// DCP item's pickle, in its held head).
fn read_record<'b>(
    path: &Path,
    bytes: Bytes<'b>,
    loc: &StorageLoc,
) -> Result<Cow<'b, [u8]>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    match *loc {
        StorageLoc::Range { start, len } => match bytes.held(start, len as usize) {
            Some(held) => Ok(Cow::Borrowed(held)),
            None => bytes
                .read_vec(start, len as usize)
                .map(Cow::Owned)
                .map_err(io),
        },
        StorageLoc::Deflated {
            start,
            compressed,
            len,
        } => {
            let compressed = bytes.read_vec(start, compressed as usize).map_err(io)?;
            let mut out = vec![0u8; len as usize];
            inflate_into(path, &compressed, &mut out)?;
            Ok(Cow::Owned(out))
        }
    }
}

/// Inflates `compressed` into exactly `out.len()` bytes.
pub(crate) fn inflate_into(path: &Path, compressed: &[u8], out: &mut [u8]) -> Result<(), Error> {
    let mut decoder = flate2::read::DeflateDecoder::new(compressed);
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    decoder.read_exact(out).map_err(io)?;
    let mut extra = [0u8; 1];
    if decoder.read(&mut extra).map_err(io)? != 0 {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a deflated record is longer than it declares",
            ),
        });
    }
    Ok(())
}
