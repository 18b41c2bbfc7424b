//! Positional reads of byte ranges into tensors' memory, split across threads: how bytes go
//! from a file into a model's tensors (or a storage's buffer) with one copy. Why `pread` and
//! not a memory map is argued in `load/direct.rs`.

use std::fs::File;
use std::io;

use tch::Tensor;

use super::source::read_exact_at;
use super::threads::{on_threads, PARALLEL_BYTES};

/// PyTorch's contiguity: strides of a row-major layout, ignoring dimensions of size 1.
pub(crate) fn is_contiguous(size: &[i64], stride: &[i64]) -> bool {
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

/// The strides of a row-major tensor of `size`, as PyTorch computes them (a dimension of
/// 0 counts as 1); `None` when one overflows, as for `[0, 2^62, 2^62]`.
pub(crate) fn contiguous_strides(size: &[i64]) -> Option<Vec<i64>> {
    let mut stride = vec![1i64; size.len()];
    for i in (0..size.len().saturating_sub(1)).rev() {
        stride[i] = stride[i + 1].checked_mul(size[i + 1].max(1))?;
    }
    Some(stride)
}

/// One past the furthest element that a view of `size` and `stride` (none of them negative)
/// at element `offset` of its storage reaches: `offset` for an empty view, `None` when it
/// overflows. What a storage must hold for the view (the reader's check) and what a writer
/// must write of it.
pub(crate) fn view_end(offset: u64, size: &[i64], stride: &[i64]) -> Option<u64> {
    if size.contains(&0) {
        return Some(offset);
    }
    size.iter()
        .zip(stride)
        .try_fold(offset, |end, (&d, &s)| {
            (d as u64 - 1).checked_mul(s as u64)?.checked_add(end)
        })?
        .checked_add(1)
}

/// `len` bytes at `data`, to write: the memory of a contiguous CPU tensor.
///
/// # Safety
///
/// `data` must point to `len` writable bytes (a defined, contiguous CPU tensor's elements)
/// that stay allocated, and that nothing else reads or writes, while the slice lives. Within
/// a load this holds as it does for `copy_`: the model is borrowed, and using its tensors from
/// another thread during a load is a data race either way.
pub(crate) unsafe fn bytes_mut<'a>(data: *mut u8, len: usize) -> &'a mut [u8] {
    // SAFETY: the caller gives a live, writable, unaliased region of `len` bytes.
    unsafe { std::slice::from_raw_parts_mut(data, len) }
}

/// `len` bytes at `data`, to read: the memory of a contiguous CPU tensor.
///
/// # Safety
///
/// `data` must point to `len` readable bytes (a defined, contiguous CPU tensor's elements)
/// that stay allocated, and that nothing writes, while the slice lives. A load reads its
/// source tensors this way only when their memory overlaps none of the model's tensors it
/// writes.
pub(crate) unsafe fn bytes<'a>(data: *const u8, len: usize) -> &'a [u8] {
    // SAFETY: the caller gives a live region of `len` bytes that nothing writes.
    unsafe { std::slice::from_raw_parts(data, len) }
}

/// A read of `len` bytes at `offset` of `from` into `dst` from its byte `dst_at` on: `dst` is
/// a contiguous CPU tensor of at least `dst_at + len` bytes (its maker checks this).
pub(crate) struct Read<'t> {
    pub dst: &'t Tensor,
    /// Where in `dst` the bytes go, in bytes from its first element: 0 for a whole tensor,
    /// the start of a DCP chunk's box of contiguous rows.
    pub dst_at: usize,
    pub offset: u64,
    pub len: usize,
    pub from: ReadFrom<'t>,
}

/// Where the checkpoint's bytes come from.
#[derive(Clone, Copy)]
pub(crate) enum ReadFrom<'a> {
    /// The file, read with `pread`.
    File(&'a File),
    /// The bytes, in memory.
    Bytes(&'a [u8]),
}

impl ReadFrom<'_> {
    /// Fills `buf` with the bytes at `offset`: `pread` from the file (an `UnexpectedEof`
    /// error where it ends first), or a copy of the bytes in memory.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match *self {
            ReadFrom::File(file) => read_exact_at(file, buf, offset),
            ReadFrom::Bytes(src) => {
                let start = offset as usize;
                buf.copy_from_slice(&src[start..start + buf.len()]);
                Ok(())
            }
        }
    }

    /// What the reads come from, as a number: the descriptor or the bytes' address. Reads of
    /// the same file share it, whichever entry of the file they are for.
    pub(crate) fn id(&self) -> usize {
        match *self {
            ReadFrom::File(f) => f as *const File as usize,
            ReadFrom::Bytes(b) => b.as_ptr() as usize,
        }
    }
}

/// A piece of a read, as plain numbers that can go to another thread.
#[derive(Clone, Copy)]
struct Piece<'a> {
    ptr: usize,
    offset: u64,
    len: usize,
    from: ReadFrom<'a>,
}

/// The most bytes one `pread` asks for: a larger read is cut, so that progress is reported
/// every few MiB.
const PIECE_BYTES: usize = 16 << 20;

/// Does every read, on `threads` threads when there is enough to read: the bytes are cut in
/// file order into `threads` runs of about equal length (a tensor can span two runs), so
/// that each thread reads sequentially.
pub(crate) fn read_all(reads: &[Read<'_>], threads: usize) -> io::Result<()> {
    read_all_with(reads, threads, &|_| {})
}

/// [`read_all`], calling `done(n)` from the reading threads after each `n` bytes read (at
/// most [`PIECE_BYTES`] at a time).
pub(crate) fn read_all_with(
    reads: &[Read<'_>],
    threads: usize,
    done: &(dyn Fn(usize) + Sync),
) -> io::Result<()> {
    let pieces: Vec<Piece<'_>> = reads
        .iter()
        .filter(|r| r.len > 0)
        .map(|r| Piece {
            ptr: r.dst.data_ptr() as usize + r.dst_at,
            offset: r.offset,
            len: r.len,
            from: r.from,
        })
        .collect();
    let total: usize = pieces.iter().map(|p| p.len).sum();
    // Tensors that share memory (tied weights) are written in order, on one thread, so that
    // the last write wins as with `copy_`.
    if threads <= 1 || total < PARALLEL_BYTES || overlapping(&pieces) {
        return pieces.iter().try_for_each(|p| read_piece(*p, done));
    }
    let mut sorted = pieces;
    sorted.sort_by_key(|p| p.offset);
    let share = total.div_ceil(threads);
    let mut runs: Vec<Vec<Piece<'_>>> = vec![Vec::new()];
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
                from: p.from,
            };
            filled += take;
            if filled == share {
                runs.push(Vec::new());
                filled = 0;
            }
        }
    }
    runs.retain(|r| !r.is_empty());
    on_threads(runs, |run| {
        run.into_iter().try_for_each(|p| read_piece(p, done))
    })
    .into_iter()
    .try_for_each(|r| r.unwrap_or_else(|_| Err(io::Error::other("a read thread panicked"))))
}

/// Whether two pieces write the same memory.
fn overlapping(pieces: &[Piece<'_>]) -> bool {
    let mut spans: Vec<(usize, usize)> = pieces.iter().map(|p| (p.ptr, p.ptr + p.len)).collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

/// Reads one piece, in parts of at most [`PIECE_BYTES`], reporting each to `done`.
fn read_piece(p: Piece<'_>, done: &(dyn Fn(usize) + Sync)) -> io::Result<()> {
    let mut at = 0;
    while at < p.len {
        let len = PIECE_BYTES.min(p.len - at);
        read_part(Piece {
            ptr: p.ptr + at,
            offset: p.offset + at as u64,
            len,
            from: p.from,
        })?;
        done(len);
        at += len;
    }
    Ok(())
}

fn read_part(p: Piece<'_>) -> io::Result<()> {
    // SAFETY: `p` is a part of a `Read` whose maker checked its `dst` to be a contiguous CPU
    // tensor of `dst_at + len` bytes (`Dst::takes_as_is` in load/route.rs, through
    // `route::choose`, `Layout::run` and `plain_copy`, or a buffer just allocated); the
    // tensors outlive `read_all`, and the pieces of all reads are disjoint (`overlapping`
    // sends overlapping ones to one thread, in order), so each byte is written by one thread
    // only.
    let bytes = unsafe { bytes_mut(p.ptr as *mut u8, p.len) };
    p.from.read_exact_at(bytes, p.offset)
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
            from: ReadFrom::Bytes(&[]),
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
