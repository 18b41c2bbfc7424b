//! safetensors, through the `safetensors` crate, which checks the header: its size (100 MB at
//! most), that offsets are in order, contiguous, without overlap, match each tensor's shape,
//! and cover the data exactly (no trailing bytes). This reader adds what libtorch needs of a
//! shape: every dimension below 2^63 and strides that do not overflow (an empty tensor can
//! have a shape whose strides overflow); then each tensor is checked against its bytes as
//! a torch file's are ([`check_tensors`]). The header and what parsing it takes are charged
//! to the file's memory budget before the crate parses it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;
use safetensors::tensor::SafeTensors;

use super::budget::{heap, Budget};
use super::crc::Crcs;
use super::index::out_of_budget;
use super::pickle::{Arena, DictObj, Obj, StorageRef, TensorRef};
use super::{check_tensors, Format, Parsed, ReadLimits, Source, StorageLoc};
use crate::dtype;
use crate::error::Error;

/// What the `safetensors` crate may use, per byte of the header, to parse it: serde reads
/// the header into a tree of its own first (the tensors are a flattened map), then a map
/// of every tensor's name and description, then a sorted vector and an index of them.
/// Measured at 950 to 970 bytes per tensor, whatever the names' length: 12 bytes per byte
/// of a header of a million tensors named `layers.<i>.weight`, 16 for names `t<i>`. The
/// shortest entry a header can hold, about 48 bytes, makes it 20.
const PARSE_PER_HEADER_BYTE: u64 = 20;

pub(crate) fn parse<'a>(
    path: &Path,
    source: Source<'a>,
    limits: &ReadLimits,
    mut budget: Budget,
) -> Result<Parsed<'a>, Error> {
    let bytes = source.bytes();
    // The header is read through the map, whose pages stay resident, and parsed by the
    // safetensors crate: both are charged before it runs, by the length the file declares
    // (the crate refuses more than 100 MB, or more than the file holds).
    let declared = bytes
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .min(bytes.len() as u64);
    let parsing = PARSE_PER_HEADER_BYTE * declared;
    budget
        .charge(declared + parsing)
        .map_err(out_of_budget(path))?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|source| Error::Safetensors {
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
        let kind = dtype::by_safetensors(info.dtype)
            .map(|d| d.kind)
            .ok_or_else(|| Error::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: format!("{:?} (tensor {name:?})", info.dtype),
            })?;
        let (start, end) = info.data_offsets;
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
        let storage = Arc::new(StorageRef {
            key: name.clone(),
            dtype: Some(kind),
            view: None,
        });
        let tensor = TensorRef::new(storage, kind, 0, &size, &stride);
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
    check_tensors(path, &arena, &storages, "")?;
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

/// The strides of a row-major tensor of `size`, as PyTorch computes them (a dimension of
/// 0 counts as 1); `None` when one overflows, as for `[0, 2^62, 2^62]`.
fn contiguous_strides(size: &[i64]) -> Option<Vec<i64>> {
    let mut stride = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1].checked_mul(size[i + 1].max(1))?;
    }
    Some(stride)
}
