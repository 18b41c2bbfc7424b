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

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use zip::read::{ArchiveOffset, Config};
use zip::{CompressionMethod, ZipArchive};

use super::budget::{heap, Budget};
use super::crc::{check_crc, Crcs};
use super::index::out_of_budget;
use super::pickle::{self, Flavor};
use super::torchscript::{self, ScriptClasses};
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
    mut budget: Budget,
) -> Result<Parsed<'a>, Error> {
    let limits = &options.limits;
    let records = match &source {
        Source::Mapped(_, file) => {
            let reader = std::io::BufReader::with_capacity(1024, PreadReader { file, pos: 0 });
            records(path, reader, source.len(), limits)?
        }
        other => records(path, Cursor::new(other.bytes()), source.len(), limits)?,
    };
    let kept: u64 = (records.storages.keys())
        .map(|key| RECORD_COST + 2 * heap(key.len()))
        .sum();
    budget.charge(kept).map_err(out_of_budget(path))?;
    if records.script && options.weights_only {
        return Err(Error::TorchScript {
            path: path.to_path_buf(),
        });
    }
    let record = |name: &str| format!("{}/{name}", records.root);
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
            let bytes = read_charged(path, &source, loc, &record("byteorder"), *crc, &budget)?;
            match bytes.as_slice() {
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
    let pickle_bytes = read_checked(path, &source, &pickle_loc, &data_pkl, pickle_crc)?;
    let flavor = if records.script {
        Flavor::Script
    } else {
        Flavor::Zip
    };
    let (arena, _) = pickle::run(&pickle_bytes, flavor, options, &mut budget)
        .map_err(|f| pickle_error(path, &data_pkl, f))?;
    drop(pickle_bytes);
    budget.release(pickle_cost);
    check_tensors(path, &arena, &records.storages, &record("data/"))?;
    let script_classes = if records.script {
        Some(script_classes(path, &source, &records, limits, &budget)?)
    } else {
        None
    };
    Ok(Parsed {
        source,
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
        safetensors_metadata: None,
        script_classes,
        budget,
    })
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
fn read_charged(
    path: &Path,
    source: &Source<'_>,
    loc: &StorageLoc,
    record: &str,
    crc: u32,
    budget: &Budget,
) -> Result<Vec<u8>, Error> {
    budget.check(read_cost(loc)).map_err(out_of_budget(path))?;
    read_checked(path, source, loc, record, crc)
}

/// The class declarations of a TorchScript archive's code, read as text. The code records
/// together may be no larger than a pickle may.
fn script_classes(
    path: &Path,
    source: &Source<'_>,
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
        let bytes = read_charged(path, source, loc, &record, *crc, budget)?;
        torchscript::read_declarations(&module, &String::from_utf8_lossy(&bytes), &mut classes);
    }
    Ok(classes)
}

/// Reads the zip's directory and locates `data.pkl`, `byteorder` and the storages.
fn records<R: Read + Seek>(
    path: &Path,
    reader: R,
    file_len: u64,
    limits: &ReadLimits,
) -> Result<Records, Error> {
    let zip_error = |source| Error::Zip {
        path: path.to_path_buf(),
        source,
    };
    // The archive starts at byte 0, as torch.load reads it (miniz takes the directory's
    // offsets from the start of the file). Left to detect the start, the zip crate guesses
    // it from the end-of-directory record's position less the directory's size, which
    // overlooks the zip64 records (76 bytes) that torch.save writes between the two: when the
    // first directory header is also 76 bytes long (an archive name of 21 characters), a
    // header sits where the guess points, and the crate reads the directory 76 bytes late
    // and fails on a valid file.
    let config = Config {
        archive_offset: ArchiveOffset::Known(0),
    };
    let mut archive = ZipArchive::with_config(config, reader).map_err(zip_error)?;
    if archive.has_duplicate_names() {
        // The zip reader keeps one record of each name; torch.load's picks one or the other
        // depending on the directory's order. Neither is safe to trust.
        let start = archive.central_directory_start();
        let record =
            first_duplicate(archive.into_inner(), start).unwrap_or_else(|| "(a name)".to_string());
        return Err(Error::InvalidRecord {
            path: path.to_path_buf(),
            record,
            reason: "the archive holds this record twice; torch.load reads one copy or the \
                     other, depending on the order of the directory"
                .into(),
        });
    }
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(zip_error)?;
    // PyTorch takes the archive's root from its first record.
    let root = names
        .first()
        .and_then(|n| n.split('/').next())
        .unwrap_or("")
        .to_string();
    let record = |name: &str| format!("{root}/{name}");
    let code_prefix = record("code/");
    let script = names.contains(&record("constants.pkl"))
        || names.iter().any(|n| n.starts_with(&code_prefix));
    let data_pkl = record("data.pkl");
    let byteorder = record("byteorder");
    let data_prefix = record("data/");
    let mut found = Records {
        root: root.clone(),
        storages: HashMap::new(),
        crcs: Crcs {
            prefix: data_prefix.clone(),
            by_key: HashMap::new(),
        },
        pickle: None,
        byteorder: None,
        script,
        code: Vec::new(),
        model_json: names.contains(&record("model.json")),
    };
    for (index, name) in names.iter().enumerate() {
        let is_storage = name.starts_with(&data_prefix) && name.len() > data_prefix.len();
        let is_code = script && name.starts_with(&code_prefix) && name.ends_with(".py");
        if !(is_storage || is_code || *name == data_pkl || *name == byteorder) {
            continue;
        }
        let (loc, crc) = locate(path, &mut archive, index, file_len, limits)?;
        if is_storage {
            let key = &name[data_prefix.len()..];
            if crc != 0 {
                found.crcs.by_key.insert(key.to_string(), crc);
            }
            found.storages.insert(key.to_string(), loc);
        } else if is_code {
            found
                .code
                .push((name[code_prefix.len()..].to_string(), loc, crc));
        } else if *name == data_pkl {
            found.pickle = Some((loc, crc));
        } else {
            found.byteorder = Some((loc, crc));
        }
    }
    Ok(found)
}

/// The first name that two records of the central directory share, walking it from byte
/// `start`; `None` when the walk finds none or cannot read a header.
fn first_duplicate<R: Read + Seek>(mut reader: R, start: u64) -> Option<String> {
    let mut seen = HashSet::new();
    let mut pos = start;
    loop {
        let mut header = [0u8; 46];
        reader.seek(SeekFrom::Start(pos)).ok()?;
        reader.read_exact(&mut header).ok()?;
        if &header[..4] != b"PK\x01\x02" {
            return None;
        }
        let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]) as u64;
        let (name_len, extra_len, comment_len) = (field(28), field(30), field(32));
        let mut name = vec![0u8; name_len as usize];
        reader.read_exact(&mut name).ok()?;
        let name = String::from_utf8_lossy(&name).into_owned();
        if !seen.insert(name.clone()) {
            return Some(name);
        }
        // Each header is at least 46 bytes: the walk ends at the end of the file.
        pos = pos.checked_add(46 + name_len + extra_len + comment_len)?;
    }
}

/// Where record `index`'s bytes are, checked against the file's length, and its CRC-32.
fn locate<R: Read + Seek>(
    path: &Path,
    archive: &mut ZipArchive<R>,
    index: usize,
    file_len: u64,
    limits: &ReadLimits,
) -> Result<(StorageLoc, u32), Error> {
    let zip_error = |source| Error::Zip {
        path: path.to_path_buf(),
        source,
    };
    let entry = archive.by_index_raw(index).map_err(zip_error)?;
    let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
    let invalid = |reason: String| Error::InvalidRecord {
        path: path.to_path_buf(),
        record: name.clone(),
        reason,
    };
    if entry.encrypted() {
        return Err(invalid(
            "the record is encrypted (torch.load refuses it too)".into(),
        ));
    }
    let start = entry
        .data_start()
        .ok_or_else(|| invalid("no data offset".into()))?;
    let compressed = entry.compressed_size();
    let len = entry.size();
    let crc = entry.crc32();
    let end = start
        .checked_add(compressed)
        .ok_or_else(|| invalid("its end overflows".into()))?;
    if end > file_len {
        return Err(invalid(format!(
            "its data ends at byte {end}, past the end of the file ({file_len} bytes)"
        )));
    }
    match entry.compression() {
        CompressionMethod::Stored => {
            if len != compressed {
                return Err(invalid(format!(
                    "stored with {compressed} bytes but declares {len}"
                )));
            }
            Ok((StorageLoc::Range { start, len }, crc))
        }
        CompressionMethod::Deflated => {
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
        other => Err(invalid(format!("unsupported compression {other:?}"))),
    }
}

/// A record's bytes, inflated if needed, checked against its CRC-32.
fn read_checked(
    path: &Path,
    source: &Source<'_>,
    loc: &StorageLoc,
    record: &str,
    crc: u32,
) -> Result<Vec<u8>, Error> {
    let bytes = read_record(path, source, loc)?;
    check_crc(path, record, crc, &bytes)?;
    Ok(bytes)
}

/// A record's bytes, inflated if needed.
pub(crate) fn read_record(
    path: &Path,
    source: &Source<'_>,
    loc: &StorageLoc,
) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    match *loc {
        StorageLoc::Range { start, len } => source.read_at(start, len as usize).map_err(io),
        StorageLoc::Deflated {
            start,
            compressed,
            len,
        } => {
            let compressed = source.read_at(start, compressed as usize).map_err(io)?;
            let mut out = vec![0u8; len as usize];
            inflate_into(path, &compressed, &mut out)?;
            Ok(out)
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

/// A reader of a file by positional reads: seeking is free (no `lseek`), each read is one
/// `pread`. The zip reader seeks to every record's local header, so this halves its system
/// calls.
struct PreadReader<'f> {
    file: &'f std::fs::File,
    pos: u64,
}

impl Read for PreadReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = super::source::read_at(self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PreadReader<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            std::io::SeekFrom::Start(p) => Some(p),
            std::io::SeekFrom::End(d) => self.file.metadata()?.len().checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}
