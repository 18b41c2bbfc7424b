//! Loading a checkpoint file straight into a model: bytes go from the file into the model's
//! tensors with one copy, no intermediate tensor.
//!
//! # Design note
//!
//! The floor of a CPU load is one pass over the bytes: from the page cache into the model's
//! parameters. `pread` into the parameter's memory does exactly that; reading into a buffer
//! and then `copy_` does it twice. Copying out of the file's memory map instead was measured
//! and lost: for resnet18 (47 MB) 4.4 ms with the map's pages kept, 6.3 ms with them dropped
//! in 32 MiB windows so that they do not count against the process (a 1 GiB load would
//! otherwise add 1 GiB to its peak RSS), against 2.4 ms with `pread` (release build, 2
//! threads). `pread` also turns a file truncated during the load into an error, where a map
//! would raise SIGBUS. So where a tensor's bytes lie in the file as the model's tensor lays them out
//! (stored, little-endian, contiguous, same dtype, CPU), they are read into the parameter
//! directly; anything else (another dtype or device, strides, compression) goes through a
//! materialized tensor and `copy_`, which converts.

use std::fs::File;
use std::io;

use tch::{Device, Tensor};

use super::pickle::TensorRef;
use super::source::read_exact_at;
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

/// A read of `len` bytes at `offset` of the checkpoint into `dst`, whose layout
/// [`direct_range`] checked.
pub(crate) struct Read<'t> {
    pub dst: &'t Tensor,
    pub offset: u64,
    pub len: usize,
}

/// Where the checkpoint's bytes come from.
#[derive(Clone, Copy)]
pub(crate) enum From<'a> {
    /// The file, read with `pread`.
    File(&'a File),
    /// The bytes, in memory.
    Bytes(&'a [u8]),
}

/// A piece of a read, as plain numbers that can go to another thread.
#[derive(Clone, Copy)]
struct Piece {
    ptr: usize,
    offset: u64,
    len: usize,
}

/// Below this, splitting reads across threads costs more than it gains.
const PARALLEL_BYTES: usize = 8 << 20;

/// Does every read, on `threads` threads when there is enough to read: the bytes are cut in
/// file order into `threads` runs of about equal length (a tensor can span two runs), so
/// that each thread reads sequentially.
pub(crate) fn read_all(reads: &[Read<'_>], from: From<'_>, threads: usize) -> io::Result<()> {
    let pieces: Vec<Piece> = reads
        .iter()
        .filter(|r| r.len > 0)
        .map(|r| Piece {
            ptr: r.dst.data_ptr() as usize,
            offset: r.offset,
            len: r.len,
        })
        .collect();
    let total: usize = pieces.iter().map(|p| p.len).sum();
    // Tensors that share memory (tied weights) are written in order, on one thread, so that
    // the last write wins as with `copy_`.
    if threads <= 1 || total < PARALLEL_BYTES || overlapping(&pieces) {
        return pieces.iter().try_for_each(|p| read_piece(*p, from));
    }
    let mut sorted = pieces;
    sorted.sort_by_key(|p| p.offset);
    let share = total.div_ceil(threads);
    let mut runs: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut filled = 0;
    for mut p in sorted {
        while p.len > 0 {
            let room = share - filled;
            let take = p.len.min(room);
            runs.last_mut()
                .expect("one run")
                .push(Piece { len: take, ..p });
            p = Piece {
                ptr: p.ptr + take,
                offset: p.offset + take as u64,
                len: p.len - take,
            };
            filled += take;
            if filled == share {
                runs.push(Vec::new());
                filled = 0;
            }
        }
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(|run| scope.spawn(move || run.into_iter().try_for_each(|p| read_piece(p, from))))
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a read thread panicked")))
        })
    })
}

/// Whether two pieces write the same memory.
fn overlapping(pieces: &[Piece]) -> bool {
    let mut spans: Vec<(usize, usize)> = pieces.iter().map(|p| (p.ptr, p.ptr + p.len)).collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

fn read_piece(p: Piece, from: From<'_>) -> io::Result<()> {
    // SAFETY: `p` is a part of a `Read` whose `dst` `direct_range` checked to be a contiguous
    // CPU tensor of at least `offset - start + len` bytes from `ptr`'s tensor start; the
    // tensors outlive `read_all`, and the pieces of all reads are disjoint, so each byte is
    // written by one thread only.
    let bytes = unsafe { bytes_mut(p.ptr as *mut u8, p.len) };
    match from {
        From::File(file) => read_exact_at(file, bytes, p.offset),
        From::Bytes(src) => {
            let start = p.offset as usize;
            bytes.copy_from_slice(&src[start..start + p.len]);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_pieces_are_found() {
        let piece = |ptr, len| Piece {
            ptr,
            offset: 0,
            len,
        };
        assert!(!overlapping(&[piece(0, 10), piece(10, 5), piece(100, 1)]));
        assert!(overlapping(&[piece(100, 10), piece(0, 10), piece(105, 1)]));
        assert!(overlapping(&[piece(0, 10), piece(0, 10)]));
    }

    #[test]
    fn contiguity_ignores_unit_dimensions() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[2, 1, 3], &[3, 99, 1]));
        assert!(!is_contiguous(&[3, 2], &[1, 3]));
        assert!(is_contiguous(&[0, 5], &[7, 7]));
        assert!(is_contiguous(&[], &[]));
    }
}
