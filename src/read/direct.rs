//! Loading a checkpoint file straight into a model: bytes go from the file into the model's
//! tensors with one copy, no intermediate tensor.
//!
//! # Design note
//!
//! The floor of a CPU load is one pass over the bytes: from the page cache into the model's
//! parameters. `pread` into the parameter's memory does exactly that; reading into a buffer
//! and then `copy_` does it twice, and copying out of a memory map adds a page fault per
//! 4 KiB. So where a tensor's bytes lie in the file as the model's tensor lays them out
//! (stored, little-endian, contiguous, same dtype, CPU), they are read into the parameter
//! directly; anything else (another dtype or device, strides, compression) goes through a
//! materialized tensor and `copy_`, which converts.

use std::fs::File;
use std::io;

use tch::{Device, Tensor};

use super::pickle::TensorRef;
use super::StorageLoc;

/// Where the bytes of `t` are in the file when they can be read straight into `dst`:
/// `(offset, length)`.
pub(crate) fn direct_range(
    t: &TensorRef,
    loc: &StorageLoc,
    big_endian: bool,
    dst: &Tensor,
) -> Option<(u64, usize)> {
    let StorageLoc::Range { start, .. } = loc else {
        return None;
    };
    if big_endian
        || dst.device() != Device::Cpu
        || dst.kind() != t.dtype
        || !dst.is_contiguous()
        || !is_contiguous(&t.size, &t.stride)
    {
        return None;
    }
    let numel: i64 = t.size.iter().product();
    if dst.numel() as i64 != numel {
        return None;
    }
    let elem = t.dtype.elt_size_in_bytes() as u64;
    // Checked when the checkpoint was opened: the whole extent lies inside the storage.
    let base = t.storage.view.map_or(0, |(offset, _)| offset) as u64;
    let offset = start + (base + t.offset as u64) * elem;
    Some((offset, numel as usize * elem as usize))
}

/// PyTorch's contiguity: strides of a row-major layout, ignoring dimensions of size 1.
fn is_contiguous(size: &[i64], stride: &[i64]) -> bool {
    if size.contains(&0) {
        return true;
    }
    let mut expected = 1;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 {
            if s != expected {
                return false;
            }
            expected *= d;
        }
    }
    true
}

/// `len` bytes at `data`, to write: the memory of a contiguous CPU tensor.
///
/// # Safety
///
/// `data` must point to `len` writable bytes (a defined, contiguous CPU tensor's elements)
/// that stay allocated, and that nothing else reads or writes, while the slice lives. Within
/// a load this holds as it does for `copy_`: the model is borrowed, and using its tensors from
/// another thread during a load is a data race either way.
unsafe fn bytes_mut<'a>(data: *mut u8, len: usize) -> &'a mut [u8] {
    std::slice::from_raw_parts_mut(data, len)
}

/// Reads `len` bytes at `offset` of `file` into `dst`, whose layout [`direct_range`]
/// checked.
pub(crate) fn read_into(dst: &Tensor, file: &File, offset: u64, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: `direct_range` checked that `dst` is a contiguous CPU tensor of `len` bytes;
    // `dst` outlives the slice, and the load holds the only handle that writes it.
    let bytes = unsafe { bytes_mut(dst.data_ptr().cast(), len) };
    read_exact_at(file, bytes, offset)
}

/// Copies `src` (the file's bytes, from memory) into `dst`, as [`read_into`] does.
pub(crate) fn copy_into(dst: &Tensor, src: &[u8]) {
    if src.is_empty() {
        return;
    }
    // SAFETY: as in `read_into`; `src.len()` is the length `direct_range` gave.
    let bytes = unsafe { bytes_mut(dst.data_ptr().cast(), src.len()) };
    bytes.copy_from_slice(src);
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity_ignores_unit_dimensions() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[2, 1, 3], &[3, 99, 1]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
        assert!(is_contiguous(&[0, 5], &[7, 7]));
        assert!(is_contiguous(&[], &[]));
    }
}
