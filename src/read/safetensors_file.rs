//! safetensors, through the `safetensors` crate, which checks the header: its size (100 MB at
//! most), that offsets are in order, contiguous, without overlap, match each tensor's shape,
//! and cover the data exactly (no trailing bytes). This reader adds what libtorch needs of a
//! shape: every dimension below 2^63 and strides that do not overflow (an empty tensor can
//! have a shape whose strides overflow); then each tensor is checked against its bytes as
//! a torch file's are ([`check_tensors`]).
//!
//! The header's JSON is read here ([`read_header`]) rather than by
//! `SafeTensors::read_metadata`, into the crate's own types and checked by the crate's
//! `Metadata::new`, with the crate's errors: the crate reads the tensors as a flattened map,
//! which serde first copies whole into a tree of its own, about 950 bytes per tensor (16
//! bytes per byte of a header of short names); read entry by entry, a header costs about
//! 215 bytes per tensor. The header and what parsing it takes are charged to the file's
//! memory budget before it is parsed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;
use safetensors::tensor::{Metadata, SafeTensorError, TensorInfo};
use serde::de::{Deserializer as _, MapAccess, Visitor};

use super::budget::{heap, Budget};
use super::crc::Crcs;
use super::index::out_of_budget;
use super::pickle::{Arena, DictObj, Obj, StorageRef, TensorRef};
use super::{check_tensors, contiguous_strides, Format, Parsed, ReadLimits, Source, StorageLoc};
use crate::dtype;
use crate::error::Error;

/// What parsing the header may use, per byte of it: each tensor's name and description in
/// a vector, sorted, then the `safetensors` crate's index of names and vector of
/// descriptions. Measured at about 215 bytes per tensor, whatever the names' length: 2.6
/// bytes per byte of a header of a million tensors named `layers.<i>.weight`, 3.6 for names
/// `t<i>`. The shortest entry a header can hold, about 48 bytes, makes it 6.
const PARSE_PER_HEADER_BYTE: u64 = 6;

/// The largest header the `safetensors` crate reads.
const MAX_HEADER_BYTES: usize = 100_000_000;

pub(crate) fn parse<'a>(
    path: &Path,
    source: Source<'a>,
    limits: &ReadLimits,
    mut budget: Budget,
) -> Result<Parsed<'a>, Error> {
    let bytes = source.bytes();
    // The header is read through the map, whose pages stay resident, and parsed: both are
    // charged first, by the length the file declares (more than 100 MB, or more than the
    // file holds, is refused).
    let declared = bytes
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .min(bytes.len() as u64);
    let parsing = PARSE_PER_HEADER_BYTE * declared;
    budget
        .charge(declared + parsing)
        .map_err(out_of_budget(path))?;
    let (header_len, metadata) = read_header(bytes).map_err(|source| Error::Safetensors {
        path: path.to_path_buf(),
        source,
    })?;
    let data_start = 8 + header_len as u64;
    let names = metadata.offset_keys();

    if names.len() as u64 > limits.max_tensors {
        return Err(Error::LimitExceeded {
            path: path.to_path_buf(),
            limit: "max_tensors",
            max: limits.max_tensors,
        });
    }
    // First the descriptions and byte ranges, so that the crate's metadata is freed before
    // the rest of the arena is built.
    let mut arena = Arena {
        objs: Vec::with_capacity(2 * names.len() + 1),
        tensors: Vec::with_capacity(names.len()),
        ..Arena::default()
    };
    let mut ranges = Vec::with_capacity(names.len());
    for name in &names {
        let info = metadata.info(name).expect("offset_keys lists known names");
        // Every safetensors dtype of today's crate has a row (a test says so); one that tch
        // cannot hold is refused when its tensor is read.
        let dtype = dtype::file_dtype_by_safetensors(info.dtype).ok_or_else(|| {
            Error::UnsupportedDtype {
                path: path.to_path_buf(),
                key: Some(name.clone()),
                dtype: format!("{:?}", info.dtype),
            }
        })?;
        let invalid = |reason: String| Error::InvalidTensor {
            path: path.to_path_buf(),
            storage: name.clone(),
            reason,
        };
        let size: Vec<i64> = info
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| invalid(format!("shape {:?}: a dimension past 2^63 - 1", info.shape)))?;
        let stride = contiguous_strides(&size)
            .ok_or_else(|| invalid(format!("shape {:?}: its strides overflow", info.shape)))?;
        let (start, end) = info.data_offsets;
        let storage = Arc::new(StorageRef {
            key: name.clone(),
            // The bytes the header gives it, which the safetensors crate checked against the
            // shape: an untyped storage of that many bytes.
            dtype: None,
            numel: (end - start) as u64,
            view: None,
        });
        let tensor = TensorRef::new(storage, dtype, 0, &size, &stride);
        let storage_cost =
            heap(2 * std::mem::size_of::<usize>() + std::mem::size_of::<StorageRef>())
                + heap(name.len());
        budget
            .charge(tensor.cost() + storage_cost + 16)
            .map_err(out_of_budget(path))?;
        arena.tensors.push(tensor);
        ranges.push((data_start + start as u64, (end - start) as u64));
    }
    let safetensors_metadata = metadata.metadata().as_ref().map(|m| {
        let mut sorted: Vec<(String, String)> =
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        sorted.sort();
        sorted.into_iter().collect::<IndexMap<_, _>>()
    });
    drop(metadata);
    budget.release(parsing);

    // Then the dict of names and tensors, and where each storage is. A name is in the
    // dict (moved), in its storage and in the map of storages (copied).
    let mut storages = HashMap::with_capacity(names.len());
    let mut items = Vec::with_capacity(names.len());
    arena.objs.push(Obj::None);
    for (index, (name, (start, len))) in names.into_iter().zip(ranges).enumerate() {
        // Two objects, a dict item, and an entry of a map at most 7/8 full.
        let cost = 2 * 32 + 8 + 2 * heap(name.len()) + 2 * (24 + 32 + 1);
        budget.charge(cost).map_err(out_of_budget(path))?;
        storages.insert(name.clone(), StorageLoc::Range { start, len });
        let key = arena.objs.len() as u32;
        arena.objs.push(Obj::Str(name));
        let value = arena.objs.len() as u32;
        arena.objs.push(Obj::Tensor(index));
        items.push((key, value));
    }
    check_tensors(path, &arena, &storages, &"")?;
    arena.objs[0] = Obj::Dict(DictObj {
        items,
        ordered: true,
    });
    Ok(Parsed {
        source,
        format: Format::Safetensors,
        arena,
        storages,
        crcs: Crcs::default(),
        big_endian: false,
        entry: "header".to_string(),
        safetensors_metadata,
        script_classes: None,
        budget,
    })
}

/// The header's length and its metadata, as `SafeTensors::read_metadata` gives them, with
/// the same checks and errors, but read entry by entry.
fn read_header(bytes: &[u8]) -> Result<(usize, Metadata), SafeTensorError> {
    let len: [u8; 8] = bytes
        .get(..8)
        .ok_or(SafeTensorError::HeaderTooSmall)?
        .try_into()
        .expect("8 bytes");
    let n = usize::try_from(u64::from_le_bytes(len))
        .ok()
        .filter(|&n| n <= MAX_HEADER_BYTES)
        .ok_or(SafeTensorError::HeaderTooLarge)?;
    let header = bytes
        .get(8..8 + n)
        .ok_or(SafeTensorError::InvalidHeaderLength)?;
    let text = std::str::from_utf8(header).map_err(SafeTensorError::InvalidHeader)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let (metadata, mut tensors) = de
        .deserialize_map(HeaderVisitor)
        .and_then(|header| de.end().map(|()| header))
        .map_err(SafeTensorError::InvalidHeaderDeserialization)?;
    // A name given twice keeps its last entry, as the crate's map does; then the order of
    // the data, ties (empty tensors) by name.
    tensors.sort_by(|(a, _), (b, _)| a.cmp(b));
    tensors.reverse();
    tensors.dedup_by(|(later, _), (earlier, _)| later == earlier);
    tensors.sort_by(|(a_name, a), (b_name, b)| {
        (a.data_offsets, a_name).cmp(&(b.data_offsets, b_name))
    });
    let metadata = Metadata::new(metadata, tensors)?;
    if metadata.data_len() + 8 + n != bytes.len() {
        return Err(SafeTensorError::MetadataIncompleteBuffer);
    }
    Ok((n, metadata))
}

/// Reads a header's map: `__metadata__`, and every other key as a tensor.
struct HeaderVisitor;

type Header = (Option<HashMap<String, String>>, Vec<(String, TensorInfo)>);

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map of tensor names to their dtype, shape and data offsets")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header, A::Error> {
        let mut metadata = None;
        let mut tensors = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "__metadata__" {
                metadata = map.next_value()?;
            } else {
                tensors.push((key, map.next_value()?));
            }
        }
        Ok((metadata, tensors))
    }
}

#[cfg(test)]
mod tests {
    use safetensors::tensor::SafeTensors;

    use super::*;

    /// `read_header` and `SafeTensors::read_metadata` on `bytes`: the same names in the same
    /// order with the same descriptions, or errors of the same kind.
    fn agree(what: &str, bytes: &[u8]) {
        match (read_header(bytes), SafeTensors::read_metadata(bytes)) {
            (Ok((n, ours)), Ok((m, theirs))) => {
                assert_eq!(n, m, "{what}");
                let keys = ours.offset_keys();
                let theirs_keys = theirs.offset_keys();
                // The crate orders empty tensors at one offset by its map's hash.
                let mut sorted = (keys.clone(), theirs_keys.clone());
                sorted.0.sort();
                sorted.1.sort();
                assert_eq!(sorted.0, sorted.1, "{what}");
                for k in &keys {
                    let (a, b) = (ours.info(k).unwrap(), theirs.info(k).unwrap());
                    assert_eq!(
                        (a.dtype, &a.shape, a.data_offsets),
                        (b.dtype, &b.shape, b.data_offsets),
                        "{what}: {k}"
                    );
                }
                assert_eq!(ours.metadata(), theirs.metadata(), "{what}");
            }
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "{what}: {a} / {b}"
            ),
            (a, b) => panic!("{what}: {:?} / {:?}", a.map(|x| x.0), b.map(|x| x.0)),
        }
    }

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        bytes
    }

    #[test]
    fn the_header_reads_as_the_safetensors_crate_reads_it() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut dirs = vec![fixtures];
        let mut seen = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "safetensors") {
                    agree(&path.display().to_string(), &std::fs::read(&path).unwrap());
                    seen += 1;
                }
            }
        }
        assert!(seen >= 10, "{seen} files");
        let t =
            |offsets: &str| format!(r#"{{"dtype":"F32","shape":[1],"data_offsets":{offsets}}}"#);
        for (what, bytes) in [
            // A name twice: the last entry counts.
            (
                "twice",
                file(&format!(r#"{{"a":{},"a":{}}}"#, t("[0,8]"), t("[0,4]")), 4),
            ),
            (
                "metadata",
                file(
                    r#"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#,
                    4,
                ),
            ),
            ("null metadata", file(r#"{"__metadata__":null}"#, 0)),
            ("empty", file("{}", 0)),
            (
                "empty tensors",
                file(
                    r#"{"b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#,
                    0,
                ),
            ),
            ("not a map", file("[1]", 0)),
            ("trailing JSON", file("{} {}", 0)),
            ("bad metadata", file(r#"{"__metadata__":{"k":1}}"#, 0)),
            ("gap", file(&format!(r#"{{"a":{}}}"#, t("[4,8]")), 8)),
            ("short data", file(&format!(r#"{{"a":{}}}"#, t("[0,4]")), 2)),
            ("not UTF-8", {
                let mut b = file("{}", 0);
                b[8] = 0xff;
                b
            }),
            ("too short", vec![1, 0]),
            ("too long", 200_000_000u64.to_le_bytes().to_vec()),
        ] {
            agree(what, &bytes);
        }
    }
}
