//! Converting reads into a CPU model: a tensor whose bytes lie contiguous in the file, but in
//! another dtype or byte order than the model's tensor, is read in parts of [`PART_BYTES`]
//! through a small buffer per thread and converted into the matching slice of the model's
//! tensor. There is no intermediate tensor of the whole checkpoint or of a whole tensor. (A
//! model on another device takes the staged route, [`stage`](super::stage).)
//!
//! # Design note
//!
//! The parts of all tensors are cut in file order into one run per thread, as the direct
//! reads are, so each thread reads its share of the file sequentially. Within a part, blocks
//! of [`BLOCK_BYTES`] are read into the buffer and converted while still in L2 by this
//! crate's kernels ([`cast`](super::cast), bit for bit libtorch's rounding), which write the
//! model's memory with non-temporal stores.
//!
//! Measured on the bench's 1 GiB bf16 checkpoint into an fp32 model (2 threads, release): the
//! route that handed each 1 MiB part to libtorch's `copy_` took 188–192 ms against 141–145
//! ms for libtorch's own in-memory `copy_` of the same tensors (the floor), each thread
//! spending 55 ms in `pread` and 134 ms in `copy_`. The kernels alone brought the conversion
//! to libtorch's pace (127 ms a thread: both are bound by writing 2 GiB); the non-temporal
//! stores, which skip reading each destination line before writing it, halved it (58 ms a
//! thread), and the load fell to 115–121 ms, 0.80–0.85× the floor. fp16 goes through F16C
//! where the machine has it (the portable loop, compiled for the baseline x86-64, took twice
//! as long as bf16's). Regular stores instead of non-temporal ones lost on every checkpoint
//! of the bench, even resnet18's 47 MB (`--bench floors`, interleaved runs: copy / floor
//! 2.5–3.6 against 1.7–2.2 for resnet18, 1.5–1.8 against 1.2–1.6 for resnet50). Measured
//! again as a user loads, once into a model just built (a scratch loop, 9 fresh models
//! each, medians, ms): fp16 → fp32 non-temporal 8.2–8.8 against regular 10.2–10.3 for
//! resnet18, 13.3–13.8 against 16.6–17.2 for resnet50, 19.8–23.9 against 27.9–36.5 for
//! resnet152; fp32 → bf16 within 5% either way. Regular stores won only where the load
//! came right after a `copy_` that had left the model's lines in the cache (1.33–1.52×
//! the floor against 2.02–2.36× for resnet18), which a single load does not meet.
//!
//! What is left on the small models is the read itself. Timed per thread on resnet18's
//! fp32 → bf16 load (scratch timers): 1.3–1.9 ms in `pread` and 1.6–2.6 ms converting, a
//! thread, against 1.9–2.3 ms for libtorch's whole in-memory `copy_`, which reads its source
//! from the 300 MiB L3 that holds resnet18 whole; `pread` alone of the same file, 128 KiB at
//! a time on two threads, took 1.8–2.7 ms. So a load that reads its file with `pread` stays
//! above 1.5× that floor on resnet18 on this machine, whatever its conversion costs. Measured
//! again with 1 GiB written between runs, so that neither the floor's source nor the file's
//! pages start in the cache (a scratch loop, 15 runs each, twice; fp32 → bf16): the load took
//! 1.26–1.36× the floor on resnet18, resnet50 and resnet152, and the same load with its
//! `pread`s left out (converting whatever the buffer held) 0.56–0.60×. The kernel's copy out
//! of the page cache is all of the gap: about 7.6 GB/s a thread here, while the floor's
//! in-memory read overlaps its writes. Converting out of a map of the file instead was
//! slower: 1.40–1.67× with each thread's span mapped with `MAP_POPULATE`, 1.34–1.74× with the
//! whole file mapped once and faulted in or populated (`MADV_POPULATE_READ`) a block at a
//! time; its page-table setup and unmapping cost more than the copy it saves. The
//! runs are cut at each thread's exact share of the bytes (whole parts had left one thread
//! 8% more), and the calling thread takes the first run (`on_threads`). From a cold
//! cache each thread waits on its read, then converts; asking the kernel to read two parts
//! ahead (`posix_fadvise(WILLNEED)`) made the 1 GiB cold load slower (1.24–1.31× a parallel
//! read against 1.13–1.16×), and reading a whole part per `pread` instead of a block was
//! within the noise, so neither is done; nor is `posix_fadvise(SEQUENTIAL)` on each file,
//! which doubles the kernel's read-ahead: 540–603 ms against 542–630 ms for the 1 GiB bf16
//! shard into an fp32 model from a cold cache (a scratch loop, six interleaved loads each).
//! Pairs with no kernel (fp64, integers, bf16 ↔ fp16,
//! a big-endian file of the model's dtype) are converted by libtorch's `copy_` from the
//! buffer, a part at a time.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::cast::Cast;
use crate::dtype::{reverse_units, swap_unit};
use crate::error::Error;
use crate::read::{bytes_mut, on_threads, OpenFile, ReadFrom, PARALLEL_BYTES};

/// The most bytes one part reads: the unit of work cut across threads and of progress.
pub(crate) const PART_BYTES: usize = 1 << 20;

/// One tensor to read with conversion.
pub(crate) struct Convert<'t> {
    /// The key, for errors.
    pub key: &'t str,
    /// Where the values go: the model's memory for the crate's kernels, or the model's
    /// tensor, detached and flattened, for libtorch's `copy_`.
    dst: Target,
    /// The dtype of the bytes in the file.
    pub kind: Kind,
    /// Whether the file is big-endian.
    pub big_endian: bool,
    /// Where the first element is in the file.
    pub offset: u64,
    /// The number of elements.
    pub numel: usize,
    pub from: ReadFrom<'t>,
    pub path: &'t Path,
}

/// Where a conversion, or one part of it, writes. A part's target is its tensor's, moved to
/// the part's first element; it owns its slice, so a run of parts can go to another thread.
enum Target {
    /// The address of the first element of a contiguous CPU tensor that `cast` converts into.
    /// No libtorch call is made per part: cutting a tensor into parts by `narrow` cost a
    /// dispatch each, and resnet50's 320 tensors have about 400 parts.
    Kernel { ptr: usize, cast: Cast },
    /// The model's tensor, detached and flattened (a part: narrowed to its slice), for
    /// `copy_`.
    Torch(Tensor),
}

impl<'t> Convert<'t> {
    /// The conversion of `dst`'s values from its number of elements of `kind` at `offset` of
    /// `file`, or `None` when `dst` cannot be seen as one flat slice (not contiguous).
    pub(crate) fn new(
        key: &'t str,
        dst: &Tensor,
        file: &'t OpenFile<'t>,
        offset: u64,
        kind: Kind,
    ) -> Option<Self> {
        if !dst.is_contiguous() {
            return None;
        }
        let big_endian = file.parsed.big_endian;
        let numel = dst.numel();
        let cast = (dst.device() == Device::Cpu)
            .then(|| Cast::new(kind, dst.kind(), big_endian))
            .flatten();
        let dst = match cast {
            Some(cast) => Target::Kernel {
                ptr: dst.data_ptr() as usize,
                cast,
            },
            None => Target::Torch(dst.detach().f_view([-1]).ok()?),
        };
        Some(Convert {
            key,
            dst,
            kind,
            big_endian,
            offset,
            numel,
            from: file.parsed.source.read_from(),
            path: &file.path,
        })
    }
}

impl Target {
    /// The target of `count` elements from element `first` of this one: the address moved
    /// on, or the tensor narrowed (its only libtorch call, which can fail).
    fn slice(&self, first: usize, count: usize, key: &str) -> Result<Target, Error> {
        Ok(match self {
            Target::Kernel { ptr, cast } => Target::Kernel {
                ptr: ptr + first * cast.dst_size(),
                cast: *cast,
            },
            Target::Torch(t) => Target::Torch(t.f_narrow(0, first as i64, count as i64).map_err(
                |source| Error::Copy {
                    key: key.to_string(),
                    source,
                },
            )?),
        })
    }
}

/// A part of one conversion: `len` bytes at `offset`, converted into its slice of the
/// model's tensor.
struct Part<'t> {
    dst: Target,
    kind: Kind,
    big_endian: bool,
    offset: u64,
    len: usize,
    from: ReadFrom<'t>,
    key: &'t str,
    path: &'t Path,
}

/// Runs every conversion, on up to `threads` threads, calling `done(n)` after each part with
/// the bytes it wrote into the model.
pub(crate) fn run_all(
    converts: &[Convert<'_>],
    threads: usize,
    done: &(dyn Fn(usize) + Sync),
) -> Result<(), Error> {
    let mut parts = Vec::new();
    let mut total = 0usize;
    for c in converts {
        let elem = c.kind.elt_size_in_bytes();
        let per_part = (PART_BYTES / elem).max(1);
        let mut first = 0;
        while first < c.numel {
            let count = per_part.min(c.numel - first);
            parts.push(Part {
                dst: c.dst.slice(first, count, c.key)?,
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
        return run_parts(parts, done);
    }
    parts.sort_by_key(|part| part.offset);
    let runs = even_runs(parts, threads)?;
    let path = converts.first().map(|c| c.path);
    on_threads(runs, |run| run_parts(run, done))
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

/// `parts`, in order, cut into at most `threads` runs of an equal share of their bytes: a
/// part that crosses a run's end is split there, at a whole element, so that every thread
/// reads and converts as much as the others. (Whole parts of up to [`PART_BYTES`] left one of
/// resnet18's two threads 1.7 MB, 8%, longer than the other.) A share that is not a whole
/// number of elements leaves a few bytes over at the end; they join the last run.
fn even_runs(parts: Vec<Part<'_>>, threads: usize) -> Result<Vec<Vec<Part<'_>>>, Error> {
    let share = parts
        .iter()
        .map(|p| p.len)
        .sum::<usize>()
        .div_ceil(threads.max(1));
    let mut runs = vec![Vec::new()];
    let mut filled = 0;
    for mut part in parts {
        loop {
            let elem = part.kind.elt_size_in_bytes();
            // A run takes at least one element, however small its share.
            let room = (share.saturating_sub(filled) / elem * elem).max(if filled == 0 {
                elem
            } else {
                0
            });
            if part.len <= room {
                filled += part.len;
                runs.last_mut().expect("one run").push(part);
                break;
            }
            if room > 0 {
                let (head, tail) = part.split(room)?;
                runs.last_mut().expect("one run").push(head);
                part = tail;
            }
            runs.push(Vec::new());
            filled = 0;
        }
    }
    runs.retain(|run| !run.is_empty());
    while runs.len() > threads.max(1) {
        let over = runs.pop().expect("more runs than threads");
        runs.last_mut().expect("a run before it").extend(over);
    }
    Ok(runs)
}

impl<'t> Part<'t> {
    /// This part as its first `bytes` (a whole number of elements, fewer than it has) and
    /// the rest.
    fn split(self, bytes: usize) -> Result<(Part<'t>, Part<'t>), Error> {
        debug_assert!(
            bytes > 0 && bytes < self.len && bytes.is_multiple_of(self.kind.elt_size_in_bytes())
        );
        let elem = self.kind.elt_size_in_bytes();
        let (first, numel) = (bytes / elem, self.len / elem);
        let head = self.dst.slice(0, first, self.key)?;
        let tail = self.dst.slice(first, numel - first, self.key)?;
        let head = Part {
            dst: head,
            len: bytes,
            ..self
        };
        let tail = Part {
            dst: tail,
            offset: head.offset + bytes as u64,
            len: self.len - bytes,
            ..head
        };
        Ok((head, tail))
    }
}

/// Reads and converts `parts` in order, through one buffer of this thread's.
fn run_parts(parts: Vec<Part<'_>>, done: &(dyn Fn(usize) + Sync)) -> Result<(), Error> {
    let Some(largest) = parts.iter().map(|part| part.len).max() else {
        return Ok(());
    };
    let torch = |key: &str| {
        let key = key.to_string();
        move |source| Error::Copy { key, source }
    };
    let buffer = Tensor::f_empty([largest as i64], (Kind::Uint8, Device::Cpu))
        .map_err(torch(parts[0].key))?;
    for part in parts {
        let dst = match &part.dst {
            Target::Kernel { ptr, cast } => {
                convert_part(&part, *ptr, *cast, &buffer)?;
                done(part.len / cast.src_size() * cast.dst_size());
                continue;
            }
            Target::Torch(dst) => dst,
        };
        // SAFETY: `buffer` is this thread's own contiguous CPU tensor of `largest >= len`
        // bytes; nothing else reads or writes it while the slice lives (the view below is
        // made after the slice's last use, and `copy_` from pageable memory has finished
        // reading it when it returns).
        let bytes = unsafe { bytes_mut(buffer.data_ptr() as *mut u8, part.len) };
        read_into(&part, bytes, part.offset)?;
        if part.big_endian {
            reverse_units(bytes, swap_unit(part.kind));
        }
        let src = buffer
            .f_narrow(0, 0, part.len as i64)
            .and_then(|b| b.f_view_dtype(part.kind))
            .map_err(torch(part.key))?;
        dst.shallow_clone().f_copy_(&src).map_err(torch(part.key))?;
        done(dst.numel() * dst.kind().elt_size_in_bytes());
    }
    Ok(())
}

/// The bytes of one `cast` block: small enough that a block read into the buffer is still in
/// L2 when it is converted.
const BLOCK_BYTES: usize = 128 << 10;

/// Reads `part` in blocks into `buffer` and converts each, with this crate's kernels, into
/// the model's memory at `ptr`.
fn convert_part(part: &Part<'_>, ptr: usize, cast: Cast, buffer: &Tensor) -> Result<(), Error> {
    let (from, to) = (cast.src_size(), cast.dst_size());
    let numel = part.len / from;
    // SAFETY: `ptr` is where this part's `numel` elements of `to` bytes start in a contiguous
    // CPU tensor of the model (`Convert::new` took the tensor's first element's address and
    // checked it contiguous; `run_all` cut the parts within its element count); parts are
    // disjoint and each is written by one thread, and the model is borrowed for the whole
    // load, so the memory stays allocated and nothing else touches it.
    let dst = unsafe { bytes_mut(ptr as *mut u8, numel * to) };
    let per_block = (BLOCK_BYTES / from).max(1);
    let mut first = 0;
    while first < numel {
        let count = per_block.min(numel - first);
        // SAFETY: as in `run_parts`: this thread's own buffer of at least `part.len` bytes,
        // nothing else uses it while the slice lives.
        let block = unsafe { bytes_mut(buffer.data_ptr() as *mut u8, count * from) };
        read_into(part, block, part.offset + (first * from) as u64)?;
        cast.run_streaming(block, &mut dst[first * to..(first + count) * to]);
        first += count;
    }
    Ok(())
}

/// Reads `bytes.len()` bytes of `part`'s source at `offset`.
fn read_into(part: &Part<'_>, bytes: &mut [u8], offset: u64) -> Result<(), Error> {
    part.from
        .read_exact_at(bytes, offset)
        .map_err(|source| Error::Io {
            path: part.path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(offset: u64, len: usize, kind: Kind, dst: Target) -> Part<'static> {
        Part {
            dst,
            kind,
            big_endian: false,
            offset,
            len,
            from: ReadFrom::Bytes(&[]),
            key: "k",
            path: Path::new("f"),
        }
    }

    fn kernel(ptr: usize, from: Kind, to: Kind) -> Target {
        Target::Kernel {
            ptr,
            cast: Cast::new(from, to, false).expect("a kernel"),
        }
    }

    /// (offset, len, the kernel target's address) of each part of each run.
    fn shape(runs: &[Vec<Part<'_>>]) -> Vec<Vec<(u64, usize, usize)>> {
        let at = |p: &Part<'_>| match p.dst {
            Target::Kernel { ptr, .. } => ptr,
            Target::Torch(_) => 0,
        };
        let runs = runs.iter();
        runs.map(|r| r.iter().map(|p| (p.offset, p.len, at(p))).collect())
            .collect()
    }

    #[test]
    fn runs_are_cut_at_their_share_on_whole_elements() {
        // 10 fp32 elements into bf16 at 1000, then 7 bf16 into fp32 at 5000.
        let parts = vec![
            part(
                0,
                40,
                Kind::Float,
                kernel(1000, Kind::Float, Kind::BFloat16),
            ),
            part(
                40,
                14,
                Kind::BFloat16,
                kernel(5000, Kind::BFloat16, Kind::Float),
            ),
        ];
        let runs = even_runs(parts, 2).unwrap();
        // A share of 27 bytes holds 6 fp32 elements (24 bytes); the second run takes the
        // other 4 (16) and 5 bf16 elements (10), 26 in all; the last 2 bf16 elements, over
        // the two shares, join it.
        assert_eq!(
            shape(&runs),
            vec![
                vec![(0, 24, 1000)],
                vec![(24, 16, 1012), (40, 10, 5000), (50, 4, 5020)],
            ]
        );
        // A share under one element still moves on: one element a run.
        let parts = vec![part(0, 8, Kind::Float, kernel(0, Kind::Float, Kind::Half))];
        let runs = even_runs(parts, 3).unwrap();
        assert_eq!(shape(&runs), vec![vec![(0, 4, 0)], vec![(4, 4, 2)]]);
        assert!(even_runs(Vec::new(), 8).unwrap().is_empty());
        let parts = vec![part(0, 8, Kind::Float, kernel(0, Kind::Float, Kind::Half))];
        assert_eq!(shape(&even_runs(parts, 1).unwrap()), vec![vec![(0, 8, 0)]]);
    }

    #[test]
    fn a_libtorch_target_is_split_into_its_two_slices() {
        let dst = Tensor::zeros([10], (Kind::Int64, Device::Cpu));
        let parts = vec![part(100, 40, Kind::Int, Target::Torch(dst.shallow_clone()))];
        // Shares of 14 bytes: 3 int32 elements a run, and the last one joins the third run.
        let runs = even_runs(parts, 3).unwrap();
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 2]);
        let views: Vec<(i64, usize, u64)> = runs
            .iter()
            .flatten()
            .map(|p| match &p.dst {
                Target::Torch(t) => (
                    t.numel() as i64,
                    t.data_ptr() as usize - dst.data_ptr() as usize,
                    p.offset,
                ),
                Target::Kernel { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(
            views,
            vec![(3, 0, 100), (3, 24, 112), (3, 48, 124), (1, 72, 136)]
        );
    }
}
