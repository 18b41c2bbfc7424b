//! safetensors, through the `safetensors` crate, which checks the header: its size (100 MB at
//! most), that offsets are in order, contiguous, without overlap, match each tensor's shape,
//! and cover the data exactly (no trailing bytes). This reader adds what libtorch needs of a
//! shape: every dimension below 2^63 and strides that do not overflow (an empty tensor can
//! have a shape whose strides overflow); then each tensor is checked against its bytes as
//! a torch file's are ([`check_tensors`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;
use safetensors::tensor::SafeTensors;

use super::crc::Crcs;
use super::pickle::{Arena, DictObj, Obj, StorageRef, TensorRef};
use super::{check_tensors, Format, Parsed, ReadLimits, Source, StorageLoc};
use crate::dtype;
use crate::error::Error;

pub(crate) fn parse<'a>(
    path: &Path,
    source: Source<'a>,
    limits: &ReadLimits,
) -> Result<Parsed<'a>, Error> {
    let bytes = source.bytes();
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
    let mut arena = Arena {
        objs: Vec::with_capacity(2 * names.len() + 1),
        tensors: Vec::with_capacity(names.len()),
        ..Arena::default()
    };
    arena.objs.push(Obj::None);
    let mut storages = HashMap::with_capacity(names.len());
    let mut items = Vec::with_capacity(names.len());
    for name in names {
        let info = metadata.info(&name).expect("offset_keys lists known names");
        let kind = dtype::by_safetensors(info.dtype)
            .map(|d| d.kind)
            .ok_or_else(|| Error::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: format!("{:?} (tensor {name:?})", info.dtype),
            })?;
        let (start, end) = info.data_offsets;
        storages.insert(
            name.clone(),
            StorageLoc::Range {
                start: data_start + start as u64,
                len: (end - start) as u64,
            },
        );
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
        let index = arena.tensors.len();
        let storage = Arc::new(StorageRef {
            key: name.clone(),
            dtype: Some(kind),
            view: None,
        });
        arena
            .tensors
            .push(TensorRef::new(storage, kind, 0, &size, &stride));
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
    let safetensors_metadata = metadata.metadata().as_ref().map(|m| {
        let mut sorted: Vec<(String, String)> =
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        sorted.sort();
        sorted.into_iter().collect::<IndexMap<_, _>>()
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
