//! torch.save's legacy format (PyTorch 0.4 to 1.5, or `_use_new_zipfile_serialization=False`):
//! five pickles back to back (the magic number, the protocol version 1001, `sys_info`, the
//! object, the list of storage keys) and then, for each key in that order, the storage's
//! element count as a little-endian int64 followed by its bytes.

use std::collections::HashMap;
use std::path::Path;

use super::budget::{heap, Budget};
use super::crc::Crcs;
use super::index::out_of_budget;
use super::pickle::{self, Arena, Flavor, Obj};
use super::{check_tensors, pickle_error, Format, Parsed, ReadOptions, Source, StorageLoc};
use crate::dtype::FileDtype;
use crate::error::{Error, PickleError};

const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// What the memory budget is charged for each storage, besides its name (kept twice): its
/// entries in the maps of element types and locations.
const STORAGE_COST: u64 = 256;

/// Parses the file's five pickles and locates its storages, charging `budget`. The pickles
/// are read through the memory map, whose pages stay resident: their bytes are charged
/// too.
pub(crate) fn parse<'a>(
    path: &Path,
    source: Source<'a>,
    options: &ReadOptions,
    mut budget: Budget,
) -> Result<Parsed<'a>, Error> {
    let bytes = source.bytes();
    let limits = &options.limits;
    let invalid = |record: &str, reason: String| Error::InvalidRecord {
        path: path.to_path_buf(),
        record: record.to_string(),
        reason,
    };
    let mut pos = 0usize;
    // Each pickle's length is known only by running it: it may use at most
    // `max_pickle_bytes` of what follows. The storages after the pickles are not pickle
    // bytes, so a checkpoint of many GB is not refused for its size.
    let max = usize::try_from(limits.max_pickle_bytes).unwrap_or(usize::MAX);
    let mut next = |name: &str, flavor: Flavor| -> Result<Arena, Error> {
        let end = pos.saturating_add(max).min(bytes.len());
        let capped = end < bytes.len();
        let (arena, used) =
            pickle::run(&bytes[pos..end], flavor, options, &mut budget).map_err(|f| {
                match f {
                    // Cut short by the limit, not by the file.
                    pickle::Failure::Pickle(_, PickleError::Truncated) if capped => {
                        Error::LimitExceeded {
                            path: path.to_path_buf(),
                            limit: "max_pickle_bytes",
                            max: limits.max_pickle_bytes,
                        }
                    }
                    f => pickle_error(path, name, shift(f, pos)),
                }
            })?;
        budget.charge(used as u64).map_err(out_of_budget(path))?;
        pos += used;
        Ok(arena)
    };

    let magic = next("magic number", Flavor::Plain)?;
    match magic.get(magic.root) {
        Obj::BigInt(b) if b.as_slice() == MAGIC => {}
        _ => return Err(invalid("magic number", "not torch's magic number".into())),
    }
    let version = next("protocol version", Flavor::Plain)?;
    match version.get(version.root) {
        Obj::Int(PROTOCOL_VERSION) => {}
        Obj::Int(v) => {
            return Err(invalid(
                "protocol version",
                format!("{v}, expected {PROTOCOL_VERSION}"),
            ))
        }
        other => {
            return Err(invalid(
                "protocol version",
                format!("a {}", other.type_name()),
            ))
        }
    }
    let sys_info = next("sys_info", Flavor::Plain)?;
    if !matches!(sys_info.get(sys_info.root), Obj::Dict(_)) {
        return Err(invalid("sys_info", "not a dict".into()));
    }
    let arena = next("object", Flavor::Legacy)?;
    let keys_arena = next("storage keys", Flavor::Plain)?;
    let keys: Vec<String> = match keys_arena.get(keys_arena.root) {
        Obj::List(items) => items
            .iter()
            .map(|&i| match keys_arena.get(i) {
                Obj::Str(s) => Ok(s.clone()),
                other => Err(invalid(
                    "storage keys",
                    format!("a {} key", other.type_name()),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(invalid(
                "storage keys",
                format!("a {}, not a list", other.type_name()),
            ))
        }
    };

    // Each storage's element size, from the persistent id that named it: the size header
    // counts elements of a typed storage, bytes of an untyped one (`torch.UntypedStorage`,
    // which torch.save uses for uint16, float8 and the other dtypes of
    // `_rebuild_tensor_v3`).
    let mut dtypes: HashMap<&str, usize> = HashMap::new();
    for obj in &arena.objs {
        if let Obj::Storage(s) = obj {
            dtypes.insert(&s.key, s.dtype.map_or(1, FileDtype::elt_size));
        }
    }

    let kept: u64 = keys.iter().map(|k| STORAGE_COST + 2 * heap(k.len())).sum();
    budget.charge(kept).map_err(out_of_budget(path))?;
    let mut storages = HashMap::new();
    for key in &keys {
        let record = format!("storage {key}");
        let elem = *dtypes
            .get(key.as_str())
            .ok_or_else(|| invalid(&record, "no persistent id names it".into()))?;
        let header_end = pos
            .checked_add(8)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| invalid(&record, "the file ends before its size".into()))?;
        let numel = i64::from_le_bytes(bytes[pos..header_end].try_into().expect("8 bytes"));
        let len = u64::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(elem as u64))
            .ok_or_else(|| invalid(&record, format!("a size of {numel} elements")))?;
        let end = (header_end as u64)
            .checked_add(len)
            .filter(|&e| e <= bytes.len() as u64)
            .ok_or_else(|| {
                invalid(
                    &record,
                    format!(
                        "{len} bytes from byte {header_end}, past the end of the file ({} bytes)",
                        bytes.len()
                    ),
                )
            })?;
        if storages
            .insert(
                key.clone(),
                StorageLoc::Range {
                    start: header_end as u64,
                    len,
                },
            )
            .is_some()
        {
            return Err(invalid(&record, "listed twice".into()));
        }
        pos = end as usize;
    }
    check_tensors(path, &arena, &storages, &"storage ")?;
    Ok(Parsed {
        source,
        format: Format::TorchLegacy,
        arena,
        storages,
        crcs: Crcs::default(),
        big_endian: false,
        entry: "object".to_string(),
        safetensors_metadata: None,
        script_classes: None,
        budget,
    })
}

/// Makes a failure's offset relative to the file rather than to the pickle.
fn shift(failure: pickle::Failure, by: usize) -> pickle::Failure {
    match failure {
        pickle::Failure::Pickle(o, k) => pickle::Failure::Pickle(o + by as u64, k),
        pickle::Failure::Disallowed(o, m, n) => pickle::Failure::Disallowed(o + by as u64, m, n),
        other => other,
    }
}
