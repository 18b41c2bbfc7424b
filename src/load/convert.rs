//! Converting reads: a tensor whose bytes lie contiguous in the file, but in another dtype,
//! byte order or for another device than the model's tensor, is read in chunks into a small
//! buffer and copied into the matching slice of the model's tensor by libtorch's `copy_`,
//! which converts. There is no intermediate tensor of the whole checkpoint or of a whole
//! tensor: each thread owns one buffer of [`CHUNK_BYTES`].
//!
//! # Design note
//!
//! The chunks of all tensors are cut in file order into one run per thread, as the direct
//! reads are, so each thread reads its part of the file sequentially. `copy_` is libtorch's,
//! so the rounding of a narrowing conversion (fp32 into a bf16 model) is PyTorch's own. A
//! chunk of 4 MiB keeps the buffer in L2/L3 between the read and the conversion; measured on
//! the bench's fp16 resnet50 file (2 threads), 1 MiB and 16 MiB chunks were no faster.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::cast::Cast;
use crate::dtype::{reverse_units, swap_unit};
use crate::error::Error;
use crate::read::{bytes_mut, on_threads, read_exact_at, runs, From};

/// The most bytes one chunk reads.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// Below this, a single thread does all the reads.
const PARALLEL_BYTES: usize = 8 << 20;

/// One tensor to read with conversion.
pub(crate) struct Convert<'t> {
    /// The key, for errors.
    pub key: &'t str,
    /// The model's tensor, detached and flattened to one dimension.
    pub dst: Tensor,
    /// The dtype of the bytes in the file.
    pub kind: Kind,
    /// Whether the file is big-endian.
    pub big_endian: bool,
    /// Where the first element is in the file.
    pub offset: u64,
    /// The number of elements.
    pub numel: usize,
    pub from: From<'t>,
    pub path: &'t Path,
}

impl<'t> Convert<'t> {
    /// The conversion of `dst`'s values from `numel` elements of `kind` at `offset`, or
    /// `None` when `dst` cannot be seen as one flat slice (not contiguous).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        key: &'t str,
        dst: &Tensor,
        kind: Kind,
        big_endian: bool,
        offset: u64,
        from: From<'t>,
        path: &'t Path,
    ) -> Option<Self> {
        if !dst.is_contiguous() {
            return None;
        }
        let dst = dst.detach().f_view([-1]).ok()?;
        let numel = dst.numel();
        Some(Convert {
            key,
            dst,
            kind,
            big_endian,
            offset,
            numel,
            from,
            path,
        })
    }
}

/// A chunk of one conversion: `len` bytes at `offset`, converted into `dst`, a slice of the
/// model's tensor. Chunks own their slice, so a run of them can go to another thread.
struct Chunk<'t> {
    dst: Tensor,
    kind: Kind,
    big_endian: bool,
    offset: u64,
    len: usize,
    from: From<'t>,
    key: &'t str,
    path: &'t Path,
}

/// Runs every conversion, on up to `threads` threads, calling `done(n)` after each chunk with
/// the bytes it wrote into the model.
pub(crate) fn run_all(
    converts: &[Convert<'_>],
    threads: usize,
    done: &(dyn Fn(usize) + Sync),
) -> Result<(), Error> {
    let mut chunks = Vec::new();
    let mut total = 0usize;
    for c in converts {
        let elem = c.kind.elt_size_in_bytes();
        let per_chunk = (CHUNK_BYTES / elem).max(1);
        let mut first = 0;
        while first < c.numel {
            let count = per_chunk.min(c.numel - first);
            let dst = c
                .dst
                .f_narrow(0, first as i64, count as i64)
                .map_err(|source| Error::Copy {
                    key: c.key.to_string(),
                    source,
                })?;
            chunks.push(Chunk {
                dst,
                kind: c.kind,
                big_endian: c.big_endian,
                offset: c.offset + (first * elem) as u64,
                len: count * elem,
                from: c.from,
                key: c.key,
                path: c.path,
            });
            first += count;
        }
        total += c.numel * elem;
    }
    if threads <= 1 || total < PARALLEL_BYTES {
        return run_chunks(chunks, done);
    }
    chunks.sort_by_key(|ch| ch.offset);
    let runs = runs(chunks, total.div_ceil(threads) as u64, |ch| ch.len as u64);
    let path = converts.first().map(|c| c.path);
    on_threads(runs, |run| run_chunks(run, done))
        .into_iter()
        .try_for_each(|r| {
            r.unwrap_or_else(|_| {
                Err(Error::Io {
                    path: path.unwrap_or(Path::new("")).to_path_buf(),
                    source: std::io::Error::other("a read thread panicked"),
                })
            })
        })
}

/// Reads and converts `chunks` in order, through one buffer of this thread's.
fn run_chunks(chunks: Vec<Chunk<'_>>, done: &(dyn Fn(usize) + Sync)) -> Result<(), Error> {
    let Some(largest) = chunks.iter().map(|ch| ch.len).max() else {
        return Ok(());
    };
    let torch = |key: &str| {
        let key = key.to_string();
        move |source| Error::Copy { key, source }
    };
    let buffer = Tensor::f_empty([largest as i64], (Kind::Uint8, Device::Cpu))
        .map_err(torch(chunks[0].key))?;
    for mut ch in chunks {
        let cast = (ch.dst.device() == Device::Cpu)
            .then(|| Cast::new(ch.kind, ch.dst.kind(), ch.big_endian))
            .flatten();
        if let Some(cast) = cast {
            convert_chunk(&ch, cast, &buffer)?;
            done(ch.dst.numel() * cast.dst_size());
            continue;
        }
        // SAFETY: `buffer` is this thread's own contiguous CPU tensor of `largest >= len`
        // bytes; nothing else reads or writes it while the slice lives (the view below is
        // made after the slice's last use, and `copy_` from pageable memory has finished
        // reading it when it returns).
        let bytes = unsafe { bytes_mut(buffer.data_ptr() as *mut u8, ch.len) };
        read_into(&ch, bytes, ch.offset)?;
        if ch.big_endian {
            reverse_units(bytes, swap_unit(ch.kind));
        }
        let src = buffer
            .f_narrow(0, 0, ch.len as i64)
            .and_then(|b| b.f_view_dtype(ch.kind))
            .map_err(torch(ch.key))?;
        ch.dst.f_copy_(&src).map_err(torch(ch.key))?;
        done(ch.dst.numel() * ch.dst.kind().elt_size_in_bytes());
    }
    Ok(())
}

/// The bytes of one `cast` block: small enough that a block read into the buffer is still in
/// L2 when it is converted.
const BLOCK_BYTES: usize = 128 << 10;

/// Reads `ch` in blocks into `buffer` and converts each into its slice of the model's tensor
/// with this crate's kernels.
fn convert_chunk(ch: &Chunk<'_>, cast: Cast, buffer: &Tensor) -> Result<(), Error> {
    let (from, to) = (cast.src_size(), cast.dst_size());
    let numel = ch.len / from;
    // SAFETY: `ch.dst` is a contiguous CPU slice of the model's tensor holding `numel`
    // elements of `to` bytes (its maker narrowed the flattened tensor); chunks are disjoint
    // and each is written by one thread, and the model is borrowed for the whole load.
    let dst = unsafe { bytes_mut(ch.dst.data_ptr() as *mut u8, numel * to) };
    let per_block = (BLOCK_BYTES / from).max(1);
    let mut first = 0;
    while first < numel {
        let count = per_block.min(numel - first);
        // SAFETY: as in `run_chunks`: this thread's own buffer of at least `ch.len` bytes,
        // nothing else uses it while the slice lives.
        let block = unsafe { bytes_mut(buffer.data_ptr() as *mut u8, count * from) };
        read_into(ch, block, ch.offset + (first * from) as u64)?;
        cast.run_streaming(block, &mut dst[first * to..(first + count) * to]);
        first += count;
    }
    Ok(())
}

/// Reads `bytes.len()` bytes of `ch`'s source at `offset`.
fn read_into(ch: &Chunk<'_>, bytes: &mut [u8], offset: u64) -> Result<(), Error> {
    let read = match ch.from {
        From::File(file) => read_exact_at(file, bytes, offset),
        From::Bytes(src) => {
            let start = offset as usize;
            bytes.copy_from_slice(&src[start..start + bytes.len()]);
            Ok(())
        }
    };
    read.map_err(|source| Error::Io {
        path: ch.path.to_path_buf(),
        source,
    })
}
