//! Commit: write every checked value into the model, all or nothing for everything that can
//! be found before the first write.
//!
//! Each planned copy takes a route ([`route`](super::route) chooses it, from where its values
//! are and the model's tensor):
//!
//! * a tensor in memory: `copy_`, or a `memcpy` across threads where it is laid out as the
//!   model's tensor;
//! * bytes in a file laid out as the model's tensor is (same dtype, little-endian,
//!   contiguous, CPU): `pread` straight into the tensor ([`direct`](super::direct));
//! * bytes in a file in another dtype or byte order, for a CPU tensor: converting reads in
//!   parts ([`convert`](super::convert));
//! * bytes in a file for a tensor on another device: pinned buffers, copied and converted
//!   there ([`stage`](super::stage));
//! * a strided block of a DCP chunk's box: a buffer of its shape, then `copy_`;
//! * anything else (deflated storages, strided views, a cast the read options ask for): the
//!   tensor is materialized, then `copy_`.
//!
//! Before anything is written, the tensors of the last route are materialized (a corrupt
//! deflated storage fails here), every file is checked to be as long as when it was parsed
//! ([`Error::FileChanged`]), and the staged route's host buffers are allocated. What remains
//! is an I/O error or a change to the file during the copy itself, and for a model on a GPU
//! the device running out of memory for a piece in flight, either of which can leave the
//! model partly written.
//!
//! Tensors of the model that share memory (tied weights) are written one after the other in
//! the plan's order, so that the last write wins as with `copy_`; otherwise the reads run
//! across threads.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tch::{Kind, Tensor};

use super::convert::{self, Convert, PART_BYTES};
use super::direct::readable_in_place;
use super::plan::PlannedCopy;
use super::route::{choose, staged, Choice, Dst, FileBytes};
use super::source::{Entry, SourceDict};
use super::stage::{run_staged, Buffers, Piece, Stager};
use crate::error::Error;
use crate::read::{
    bytes, check_before_writing, read_all_with, read_file_tensors, OpenFile, Read, ReadFrom,
};

enum Route<'s> {
    Copy(&'s Tensor),
    Materialized(Tensor),
    /// To be materialized: tensor `index` of `file`.
    Pending(&'s OpenFile<'s>, usize),
    Direct(DirectRead<'s>),
    Convert(Convert<'s>),
    /// Bytes at an offset of a file, bound for a tensor on another device (CUDA): through
    /// the staging pipeline's pinned buffers ([`stage`](super::stage)).
    ToDevice(Piece<'s>),
    /// Bytes at an offset of a file, in a dtype, read into a buffer of the destination's
    /// shape, then copied into the destination, which is strided (a block of a DCP chunk's
    /// box).
    Block(&'s OpenFile<'s>, u64, Kind),
}

fn from<'s>(file: &'s OpenFile<'s>) -> ReadFrom<'s> {
    file.parsed.source.read_from()
}

/// `len` bytes at `offset` of `file`, read into a destination from its byte `dst_at` on (0,
/// or where a DCP chunk's box of whole rows starts).
#[derive(Clone, Copy)]
struct DirectRead<'s> {
    file: &'s OpenFile<'s>,
    offset: u64,
    len: usize,
    dst_at: usize,
}

impl<'s> DirectRead<'s> {
    /// The read into `dst`.
    fn read_into(self, dst: &'s Tensor) -> Read<'s> {
        Read {
            dst,
            dst_at: self.dst_at,
            offset: self.offset,
            len: self.len,
            from: from(self.file),
        }
    }
}

/// A load's progress: bytes written into the model so far, reported to the caller's
/// callback at most every [`Tracker::STEP`] bytes, in increasing order, and once at the end.
pub(crate) struct Tracker<'p> {
    total: u64,
    done: AtomicU64,
    reported: Mutex<u64>,
    callback: Option<&'p (dyn Fn(u64, u64) + Send + Sync)>,
}

impl<'p> Tracker<'p> {
    const STEP: u64 = 4 << 20;

    pub(crate) fn new(
        copies: &[PlannedCopy<'_>],
        callback: Option<&'p (dyn Fn(u64, u64) + Send + Sync)>,
    ) -> Self {
        let total = copies
            .iter()
            .map(|c| (c.dst.numel() * c.dst.kind().elt_size_in_bytes()) as u64)
            .sum();
        Tracker {
            total,
            done: AtomicU64::new(0),
            reported: Mutex::new(0),
            callback,
        }
    }

    /// Counts `n` more bytes written.
    pub(crate) fn add(&self, n: usize) {
        let Some(callback) = self.callback else {
            return;
        };
        let now = self.done.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let mut reported = match self.reported.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if now > *reported && (now - *reported >= Self::STEP || now >= self.total) {
            *reported = now;
            callback(now.min(self.total), self.total);
        }
    }

    /// Reports the end, if it was not reported yet.
    pub(crate) fn finish(&self) {
        if let Some(callback) = self.callback {
            let mut reported = match self.reported.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            if *reported < self.total || self.total == 0 {
                *reported = self.total;
                callback(self.total, self.total);
            }
        }
    }
}

/// What a copy reads from: a tensor in memory, tensor `index` of a file, or a piece of a
/// file tensor laid out contiguous in the file: its elements from byte `offset` on, as many
/// as the destination holds.
#[derive(Clone, Copy)]
enum Src<'s> {
    Memory(&'s Tensor),
    File(&'s OpenFile<'s>, usize),
    Piece(&'s OpenFile<'s>, u64, usize),
}

/// The files a commit reads, each once, in the order first read.
#[derive(Default)]
struct FilesRead<'s> {
    files: Vec<&'s OpenFile<'s>>,
    seen: HashSet<*const OpenFile<'s>>,
}

impl<'s> FilesRead<'s> {
    fn note(&mut self, file: &'s OpenFile<'s>) {
        if self.seen.insert(file) {
            self.files.push(file);
        }
    }
}

/// The route of copy `c` from `src`, noting each file read: [`choose`]'s choice, with what
/// the route needs to run.
fn route_of<'s>(c: &PlannedCopy<'s>, src: Src<'s>, files: &mut FilesRead<'s>) -> Route<'s> {
    let (file, index, offset) = match src {
        Src::Memory(t) => return Route::Copy(t),
        Src::File(file, index) => (file, index, readable_in_place(file, index).map(|r| r.1)),
        Src::Piece(file, offset, index) => (file, index, Some(offset)),
    };
    files.note(file);
    let t = &file.parsed.arena.tensors[index];
    let big_endian = file.parsed.big_endian;
    let bytes = FileBytes {
        kind: t.dtype.kind(),
        in_place: offset.is_some(),
        big_endian,
        numel: t.size().iter().product::<i64>() as usize,
        piece: matches!(src, Src::Piece(..)),
    };
    let (Some(offset), Some(kind)) = (offset, bytes.kind) else {
        return Route::Pending(file, index);
    };
    match choose(&Dst::of(c.dst), &bytes) {
        Choice::Read => Route::Direct(DirectRead {
            file,
            offset,
            len: c.dst.numel() * kind.elt_size_in_bytes(),
            dst_at: 0,
        }),
        Choice::ToDevice => Route::ToDevice(Piece {
            key: c.key,
            path: &file.path,
            from: from(file),
            offset,
            kind,
            big_endian,
            dst: c.dst.shallow_clone(),
        }),
        Choice::Convert => match Convert::new(c.key, c.dst, file, offset, kind) {
            Some(convert) => Route::Convert(convert),
            None => Route::Pending(file, index),
        },
        Choice::Block => Route::Block(file, offset, kind),
        Choice::Materialize => Route::Pending(file, index),
    }
}

/// A strided box of the model's tensor (a `Shard(1)` chunk's columns) as blocks of whole
/// rows (along its first dimension) of about [`PART_BYTES`] each, each with the byte offset
/// in the file of its first element, for a chunk stored contiguous from `offset` with
/// `elem`-byte elements: each block's bytes are contiguous in the file, though the block is
/// strided in the model's tensor. `None` for a box of no dimension.
fn blocks(view: &Tensor, offset: u64, elem: u64) -> Option<Vec<(Tensor, u64)>> {
    let size = view.size();
    let (&rows, inner) = size.split_first()?;
    let row_bytes = (inner.iter().product::<i64>() as u64)
        .saturating_mul(elem)
        .max(1);
    let per_block = (PART_BYTES as u64 / row_bytes).max(1) as i64;
    let mut out = Vec::with_capacity((rows / per_block + 1) as usize);
    let mut r = 0;
    while r < rows {
        let n = per_block.min(rows - r);
        let block = view.f_narrow(0, r, n).ok()?;
        out.push((block, offset + r as u64 * row_bytes));
        r += n;
    }
    Some(out)
}

/// A destination that DCP chunks can be read straight into: a contiguous CPU tensor, its
/// size and dtype asked of libtorch once for all its chunks (a view per chunk costs a
/// `narrow` per dimension, about 1 ms for resnet50's 640 chunks).
struct Layout {
    size: Vec<i64>,
    dst: Dst,
}

impl Layout {
    fn of(dst: &Tensor) -> Option<Layout> {
        let layout = Dst::of(dst);
        (!staged(layout.device) && layout.contiguous).then(|| Layout {
            size: dst.size(),
            dst: layout,
        })
    }

    /// Where a chunk goes when its box is one run of the tensor's memory and its bytes lie
    /// in the file as they are (same dtype, little-endian, contiguous, stored): the read of
    /// its bytes into the tensor at the box's byte offset. A box is one run when, past its
    /// first dimension of more than one element, it spans every dimension whole (`Shard(0)`).
    fn run<'s>(
        &self,
        file: &'s OpenFile<'s>,
        index: usize,
        offsets: &[i64],
        sizes: &[i64],
    ) -> Option<DirectRead<'s>> {
        if offsets.len() != self.size.len() {
            return None;
        }
        let (t, at) = readable_in_place(file, index)?;
        if !t
            .dtype
            .kind()
            .is_some_and(|k| self.dst.takes_as_is(k, file.parsed.big_endian))
        {
            return None;
        }
        let first = sizes.iter().position(|&s| s > 1).unwrap_or(sizes.len());
        let whole = (first + 1..sizes.len()).all(|d| offsets[d] == 0 && sizes[d] == self.size[d]);
        if !whole {
            return None;
        }
        // Row-major: the element where the box starts, and how many it holds.
        let (mut start, mut stride) = (0i64, 1i64);
        for d in (0..self.size.len()).rev() {
            start += offsets[d] * stride;
            stride *= self.size[d];
        }
        let elem = self.dst.kind.elt_size_in_bytes();
        let numel: i64 = sizes.iter().product();
        Some(DirectRead {
            file,
            offset: at,
            len: numel as usize * elem,
            dst_at: start as usize * elem,
        })
    }
}

/// The box of `dst` that a DCP chunk fills: `dst` narrowed to `offsets` and `sizes` in each
/// dimension (a view of the model's tensor).
fn chunk_box(dst: &Tensor, offsets: &[i64], sizes: &[i64]) -> Result<Tensor, tch::TchError> {
    let mut view = dst.shallow_clone();
    for (d, (&o, &s)) in offsets.iter().zip(sizes).enumerate() {
        view = view.f_narrow(d as i64, o, s)?;
    }
    Ok(view)
}

/// Writes every planned copy from `sd` into the model, without autograd.
///
/// Four steps, each its own function: a DCP tensor's copy becomes one copy per chunk
/// ([`chunk_copies`]); each copy gets its route ([`Routed::new`]); everything that can fail
/// before a write is checked ([`Routed::check`]); then the copies run, in order or batched
/// across threads ([`Routed::run`]).
pub(crate) fn commit<D: SourceDict + ?Sized>(
    copies: &[PlannedCopy<'_>],
    sd: &D,
    progress: &Tracker<'_>,
) -> Result<(), Error> {
    let _no_grad = tch::no_grad_guard();
    // The views of the model's tensors that chunks fill, made first so that the copies
    // into them can borrow them.
    let chunks = chunk_copies(copies, sd)?;
    let mut routed = Routed::new(copies, sd, &chunks);
    routed.check()?;
    routed.run(&|n| progress.add(n))
}

/// A copy of one DCP chunk into its box of the model's tensor `copy` (an index into the
/// plan's copies).
struct ChunkCopy<'s> {
    copy: usize,
    into: ChunkInto<'s>,
}

enum ChunkInto<'s> {
    /// Straight into a run of the model's tensor's memory, with no view made
    /// ([`Layout::run`]).
    Run(DirectRead<'s>),
    /// Into a view of the model's tensor (the chunk's box, or a block of whole rows of a
    /// strided box), routed as a file tensor is.
    View(Tensor, Src<'s>),
}

/// Every DCP tensor's copy as one copy per chunk, into the chunk's box of the model's
/// tensor: a box that is one run of the tensor's memory (`Shard(0)`) is read in place at
/// its byte offset, with no view made ([`Layout::run`]); any other box is a view (a strided
/// `Shard(1)` box in blocks of whole rows). Runs come first, then views, each in plan order.
fn chunk_copies<'s, D: SourceDict + ?Sized>(
    copies: &[PlannedCopy<'_>],
    sd: &'s D,
) -> Result<Vec<ChunkCopy<'s>>, Error> {
    let mut runs = Vec::new();
    let mut views = Vec::new();
    for (i, c) in copies.iter().enumerate() {
        let Entry::Chunked(t) = sd.entry(c.src) else {
            continue;
        };
        let dst = Layout::of(c.dst);
        for chunk in &t.chunks {
            if chunk.sizes.contains(&0) {
                continue;
            }
            let file = &*chunk.file;
            if let Some(read) = dst
                .as_ref()
                .and_then(|dst| dst.run(file, chunk.index, &chunk.offsets, &chunk.sizes))
            {
                runs.push(ChunkCopy {
                    copy: i,
                    into: ChunkInto::Run(read),
                });
                continue;
            }
            let view =
                chunk_box(c.dst, &chunk.offsets, &chunk.sizes).map_err(|source| Error::Copy {
                    key: c.key.to_string(),
                    source,
                })?;
            let in_place = readable_in_place(file, chunk.index);
            let split = match in_place {
                Some((t, offset)) if !view.is_contiguous() => {
                    blocks(&view, offset, t.dtype.elt_size() as u64)
                }
                _ => None,
            };
            let view_copy = |view, src| ChunkCopy {
                copy: i,
                into: ChunkInto::View(view, src),
            };
            match (split, in_place) {
                (Some(pieces), _) => views.extend(
                    pieces
                        .into_iter()
                        .map(|(piece, at)| view_copy(piece, Src::Piece(file, at, chunk.index))),
                ),
                // A contiguous box is the whole chunk (its size was checked against the
                // metadata's when the checkpoint was opened), already located.
                (None, Some((_, at))) if view.is_contiguous() => {
                    views.push(view_copy(view, Src::Piece(file, at, chunk.index)))
                }
                (None, _) => views.push(view_copy(view, Src::File(file, chunk.index))),
            }
        }
    }
    runs.extend(views);
    Ok(runs)
}

/// A load's copies with their routes, side by side, and the files they read.
struct Routed<'s> {
    copies: Vec<PlannedCopy<'s>>,
    routes: Vec<Route<'s>>,
    files: Vec<&'s OpenFile<'s>>,
    /// Whether two of the model's tensors share memory (tied weights).
    shared: bool,
}

impl<'s> Routed<'s> {
    /// Each copy's route: the copies of whole entries in plan order, then the chunks'.
    fn new<D: SourceDict + ?Sized>(
        copies: &[PlannedCopy<'s>],
        sd: &'s D,
        chunks: &'s [ChunkCopy<'s>],
    ) -> Self {
        let mut expanded = Vec::with_capacity(copies.len() + chunks.len());
        let mut routes = Vec::with_capacity(copies.len() + chunks.len());
        let mut files = FilesRead::default();
        for c in copies {
            let src = match sd.entry(c.src) {
                Entry::Memory(t) => Src::Memory(t),
                Entry::File(file, index) => Src::File(file, index),
                Entry::Chunked(_) => continue,
            };
            routes.push(route_of(c, src, &mut files));
            expanded.push(PlannedCopy { ..*c });
        }
        for chunk in chunks {
            let whole = &copies[chunk.copy];
            match &chunk.into {
                &ChunkInto::Run(read) => {
                    files.note(read.file);
                    routes.push(Route::Direct(read));
                    expanded.push(PlannedCopy {
                        squeeze: false,
                        ..*whole
                    });
                }
                ChunkInto::View(view, src) => {
                    let c = PlannedCopy {
                        key: whole.key,
                        dst: view,
                        src: whole.src,
                        squeeze: false,
                    };
                    routes.push(route_of(&c, *src, &mut files));
                    expanded.push(c);
                }
            }
        }
        Routed {
            copies: expanded,
            routes,
            files: files.files,
            shared: shares_memory(copies),
        }
    }

    /// Everything that can fail before a write: every file as long as when it was parsed,
    /// and the tensors that are read whole materialized.
    fn check(&mut self) -> Result<(), Error> {
        check_before_writing(self.files.iter().copied())?;
        materialize_pending(&mut self.routes)
    }

    /// Runs every copy: one after the other, in plan order, when tensors share memory or a
    /// source in memory overlaps a destination; otherwise in batches across threads.
    ///
    /// The staged pieces' host buffers are allocated first, before anything is written.
    fn run(self, done: &(dyn Fn(usize) + Sync)) -> Result<(), Error> {
        let threads = self.files.first().map_or(1, |f| f.options.read_threads());
        let staged: Vec<&Piece<'_>> = (self.routes.iter())
            .filter_map(|route| match route {
                Route::ToDevice(piece) => Some(piece),
                _ => None,
            })
            .collect();
        let bytes = staged.iter().map(|p| p.len()).sum();
        let buffers = Buffers::for_pieces(&staged, Stager::for_bytes(bytes))?;
        if self.shared || sources_overlap_destinations(&self.copies, &self.routes) {
            for (c, route) in self.copies.iter().zip(&self.routes) {
                write(c, route, 1, done, &buffers)?;
            }
            return Ok(());
        }
        Batches::of(&self.copies, self.routes, threads, done, &buffers)?
            .run(threads, done, &buffers)
    }
}

/// The copies of a load that run together, by route: what remains once the copies that run
/// alone (`copy_`, a strided block) have run.
#[derive(Default)]
struct Batches<'s> {
    /// Tensors in memory laid out as the model's: copied across threads.
    memcpy: Vec<Read<'s>>,
    /// Direct reads, by what they read from, not by entry: a DCP `.distcp` file holds one
    /// entry per chunk, and read one entry at a time its chunks fall below the size worth
    /// threads.
    direct: Vec<(usize, &'s OpenFile<'s>, Vec<Read<'s>>)>,
    converts: Vec<Convert<'s>>,
    /// Pieces for other devices.
    staged: Vec<Piece<'s>>,
}

impl<'s> Batches<'s> {
    /// Groups the copies by route, running at once those that run alone.
    fn of(
        copies: &'s [PlannedCopy<'s>],
        routes: Vec<Route<'s>>,
        threads: usize,
        done: &(dyn Fn(usize) + Sync),
        buffers: &Buffers,
    ) -> Result<Self, Error> {
        let mut batches = Batches::default();
        for (c, route) in copies.iter().zip(routes) {
            match route {
                Route::Convert(convert) => batches.converts.push(convert),
                Route::ToDevice(piece) => batches.staged.push(piece),
                Route::Copy(src) => match plain_copy(c, src) {
                    Some(Some(read)) => batches.memcpy.push(read),
                    Some(None) => {}
                    None => write(c, &Route::Copy(src), threads, done, buffers)?,
                },
                Route::Direct(direct) => {
                    let read = direct.read_into(c.dst);
                    let source = read.from.id();
                    match batches.direct.iter_mut().find(|(s, _, _)| *s == source) {
                        Some((_, _, reads)) => reads.push(read),
                        None => batches.direct.push((source, direct.file, vec![read])),
                    }
                }
                other => write(c, &other, threads, done, buffers)?,
            }
        }
        Ok(batches)
    }

    /// Copies from memory, then direct reads file by file, each across threads; then the
    /// converting reads; then the pieces for other devices, in file order, through one
    /// pipeline.
    fn run(
        mut self,
        threads: usize,
        done: &(dyn Fn(usize) + Sync),
        buffers: &Buffers,
    ) -> Result<(), Error> {
        // A copy from memory reads no file: it fails only where a thread panicked, a bug,
        // and the panic goes on rather than becoming an I/O error of no file.
        if let Err(e) = read_all_with(&self.memcpy, threads, done) {
            panic!("copying tensors in memory into the model: {e}");
        }
        for (_, file, reads) in &self.direct {
            read_all_with(reads, threads, done).map_err(|source| Error::Io {
                path: file.path.clone(),
                source,
            })?;
        }
        convert::run_all(&self.converts, threads, done)?;
        self.staged.sort_by_key(|p| (p.from.id(), p.offset));
        run_staged(self.staged, buffers, threads, done)
    }
}

/// Materializes the tensors of the `Pending` routes, file by file, each file's storages read
/// once.
fn materialize_pending(routes: &mut [Route<'_>]) -> Result<(), Error> {
    let (positions, wanted): (Vec<usize>, Vec<(&OpenFile<'_>, usize)>) = routes
        .iter()
        .enumerate()
        .filter_map(|(position, route)| match route {
            Route::Pending(file, index) => Some((position, (*file, *index))),
            _ => None,
        })
        .unzip();
    let tensors = read_file_tensors(&wanted)?;
    for (position, tensor) in positions.into_iter().zip(tensors) {
        routes[position] = Route::Materialized(tensor);
    }
    Ok(())
}

/// Writes one planned copy by its route (a staged one through the load's `buffers`).
fn write(
    c: &PlannedCopy<'_>,
    route: &Route<'_>,
    threads: usize,
    done: &(dyn Fn(usize) + Sync),
    buffers: &Buffers,
) -> Result<(), Error> {
    let copy_error = |source| Error::Copy {
        key: c.key.to_string(),
        source,
    };
    let copied = |src: &Tensor| {
        copy_into(c.dst, src, c.squeeze).map_err(copy_error)?;
        done(c.dst.numel() * c.dst.kind().elt_size_in_bytes());
        Ok(())
    };
    match route {
        Route::Copy(src) => copied(src),
        Route::Materialized(src) => copied(src),
        Route::Direct(direct) => {
            read_all_with(&[direct.read_into(c.dst)], threads, done).map_err(|source| Error::Io {
                path: direct.file.path.clone(),
                source,
            })
        }
        Route::Convert(convert) => convert::run_all(std::slice::from_ref(convert), threads, done),
        Route::ToDevice(piece) => run_staged(vec![piece.clone_piece()], buffers, threads, done),
        Route::Block(file, offset, kind) => {
            let buffer =
                Tensor::f_empty(c.dst.size(), (*kind, tch::Device::Cpu)).map_err(copy_error)?;
            let read = Read {
                dst: &buffer,
                dst_at: 0,
                offset: *offset,
                len: buffer.numel() * kind.elt_size_in_bytes(),
                from: from(file),
            };
            read_all_with(&[read], threads, &|_| {}).map_err(|source| Error::Io {
                path: file.path.clone(),
                source,
            })?;
            copied(&buffer)
        }
        // `commit` materializes every pending route before it writes anything, so this is
        // never reached; were it, the file is named, not a made-up path.
        Route::Pending(file, index) => Err(Error::Io {
            path: file.path.clone(),
            source: std::io::Error::other(format!("tensor {index} was not read before writing")),
        }),
    }
}

/// `assign=True`: every model tensor takes the value itself (its dtype, device and storage)
/// with `set_data`, so that every holder of the tensor (a tch module's shallow clone) sees
/// it, and `requires_grad` is kept. Every value is read before the first tensor changes.
pub(crate) fn assign<D: SourceDict + ?Sized>(
    copies: &[PlannedCopy<'_>],
    sd: &D,
) -> Result<(), Error> {
    let _no_grad = tch::no_grad_guard();
    let mut routes: Vec<Route<'_>> = Vec::with_capacity(copies.len());
    for c in copies {
        routes.push(match sd.entry(c.src) {
            Entry::Memory(t) => Route::Copy(t),
            Entry::File(file, index) => Route::Pending(file, index),
            Entry::Chunked(t) => Route::Materialized(t.read(Some(c.key))?),
        });
    }
    check_before_writing(routes.iter().filter_map(|route| match route {
        Route::Pending(file, _) => Some(*file),
        _ => None,
    }))?;
    materialize_pending(&mut routes)?;
    let mut values = Vec::with_capacity(copies.len());
    for (c, route) in copies.iter().zip(&routes) {
        let value = match route {
            Route::Copy(t) => t.shallow_clone(),
            Route::Materialized(t) => t.shallow_clone(),
            _ => continue,
        };
        let value = if c.squeeze {
            value.f_reshape([]).map_err(|source| Error::Copy {
                key: c.key.to_string(),
                source,
            })?
        } else {
            value
        };
        values.push(value.detach());
    }
    for (c, value) in copies.iter().zip(&values) {
        let mut dst = c.dst.shallow_clone();
        dst.f_set_data(value).map_err(|source| Error::Copy {
            key: c.key.to_string(),
            source,
        })?;
    }
    Ok(())
}

/// A copy from memory that is a plain `memcpy`: both tensors contiguous on the CPU, of one
/// dtype, and not overlapping. `Some(None)` when source and destination are the same memory
/// (a state dict taken from the model itself): nothing to do. `None` otherwise: `copy_`.
fn plain_copy<'s>(c: &PlannedCopy<'s>, src: &'s Tensor) -> Option<Option<Read<'s>>> {
    let dst = c.dst;
    let plain = !c.squeeze
        && src.device() == tch::Device::Cpu
        && src.is_contiguous()
        && src.numel() == dst.numel()
        && Dst::of(dst).takes_as_is(src.kind(), false);
    if !plain {
        return None;
    }
    let len = dst.numel() * dst.kind().elt_size_in_bytes();
    let (s, d) = (src.data_ptr() as usize, dst.data_ptr() as usize);
    if len == 0 || s == d {
        return Some(None);
    }
    if s < d + len && d < s + len {
        return None;
    }
    // SAFETY: `src` is a contiguous CPU tensor of `len` bytes that lives as long as the
    // state dict borrowed for 's, and nothing writes it during the load: `commit` takes
    // this path only when no source in memory overlaps any destination
    // (`sources_overlap_destinations`).
    let from = ReadFrom::Bytes(unsafe { bytes(src.data_ptr() as *const u8, len) });
    Some(Some(Read {
        dst,
        dst_at: 0,
        offset: 0,
        len,
        from,
    }))
}

/// Whether a source tensor in memory overlaps one of the model's tensors (a state dict that
/// shares storage with the model, its keys moved): then the copies must run one after the
/// other, in order, as PyTorch's do.
fn sources_overlap_destinations(copies: &[PlannedCopy<'_>], routes: &[Route<'_>]) -> bool {
    let mut dsts: Vec<(usize, usize)> = copies.iter().filter_map(|c| span(c.dst)).collect();
    dsts.sort_unstable();
    routes
        .iter()
        .zip(copies)
        .filter_map(|(r, c)| match r {
            Route::Copy(src) => span(src).map(|s| (s, span(c.dst))),
            _ => None,
        })
        .any(|(s, own)| {
            // The destinations that end after the source starts, up to its end.
            let i = dsts.partition_point(|d| d.1 <= s.0);
            dsts[i..]
                .iter()
                .take_while(|d| d.0 < s.1)
                .any(|d| Some(*d) != own || s != *d)
        })
}

/// The bytes a defined, non-empty tensor occupies from its first element (for a contiguous
/// tensor, all of them).
fn span(t: &Tensor) -> Option<(usize, usize)> {
    if !t.defined() || t.numel() == 0 {
        return None;
    }
    let start = t.data_ptr() as usize;
    Some((start, start + t.numel() * t.kind().elt_size_in_bytes()))
}

/// Whether two of the model's tensors share memory (tied weights).
fn shares_memory(copies: &[PlannedCopy<'_>]) -> bool {
    let mut spans: Vec<(usize, usize)> = copies
        .iter()
        .filter(|c| c.dst.numel() > 0)
        .map(|c| {
            let start = c.dst.data_ptr() as usize;
            let len = c.dst.numel() * c.dst.kind().elt_size_in_bytes();
            (start, start + len)
        })
        .collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

/// `dst.copy_(src)`, converting dtype and device; `squeeze` loads a `[1]` into a 0-dim.
pub(crate) fn copy_into(dst: &Tensor, src: &Tensor, squeeze: bool) -> Result<(), tch::TchError> {
    let mut dst = dst.shallow_clone();
    if squeeze {
        dst.f_copy_(&src.f_reshape([])?)
    } else {
        dst.f_copy_(src)
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind};

    use super::super::route::staging_cpu;
    use super::*;

    fn planned<'a>(key: &'a str, dst: &'a Tensor) -> PlannedCopy<'a> {
        PlannedCopy {
            key,
            dst,
            src: 0,
            squeeze: false,
        }
    }

    #[test]
    fn sources_that_alias_another_destination_are_found() {
        let a = Tensor::zeros([16], (Kind::Float, Device::Cpu));
        let b = Tensor::zeros([16], (Kind::Float, Device::Cpu));
        let other = Tensor::zeros([16], (Kind::Float, Device::Cpu));
        let copies = [planned("a", &a), planned("b", &b)];
        // Independent sources.
        let routes = [Route::Copy(&other), Route::Copy(&other)];
        assert!(!sources_overlap_destinations(&copies, &routes));
        // Each destination is its own source: a no-op, not an alias.
        let routes = [Route::Copy(&a), Route::Copy(&b)];
        assert!(!sources_overlap_destinations(&copies, &routes));
        // Swapped: a's source is b's memory.
        let routes = [Route::Copy(&b), Route::Copy(&a)];
        assert!(sources_overlap_destinations(&copies, &routes));
        // A view into the middle of another destination.
        let middle = b.narrow(0, 4, 4);
        let routes = [Route::Copy(&middle), Route::Copy(&other)];
        assert!(sources_overlap_destinations(&copies, &routes));
    }

    /// A zero-filled model tensor as a `VarStore` holds it: a floating one requires grad.
    fn parameter(t: Tensor) -> Tensor {
        match t.is_floating_point() {
            true => t.set_requires_grad(true),
            false => t,
        }
    }

    /// A whole load through the staged route, its CPU destinations standing in for a GPU's
    /// (`STAGE_ON_CPU`): parameters that require grad, as a `VarStore`'s do, of odd element
    /// counts and mixed element sizes packed into shared buffers, from a file in the model's
    /// dtypes and from one in bf16, converted by the copier.
    #[test]
    fn a_model_loads_through_the_staged_route() {
        use crate::{load_checkpoint, ModuleTree, StateDict};
        let float = |n: &[i64]| Tensor::randn(n, (Kind::Float, Device::Cpu));
        let source: Vec<(&str, Tensor)> = vec![
            ("conv.weight", float(&[3, 5])),
            ("prelu.weight", float(&[2])),
            ("bn.num_batches_tracked", Tensor::from(7i64)),
            ("bn.running_mean", float(&[3])),
            ("head.weight", float(&[5, 7])),
        ];
        let model = || {
            let mut m = ModuleTree::new("m");
            for (k, t) in &source {
                m.add_tensor(k, parameter(t.zeros_like())).unwrap();
            }
            m
        };
        let dir = tempfile::tempdir().unwrap();
        let fp32 = dir.path().join("fp32.pth");
        let sd: StateDict = (source.iter())
            .map(|(k, t)| (k.to_string(), t.shallow_clone()))
            .collect();
        sd.save(&fp32).unwrap();
        let bf16 = dir.path().join("bf16.safetensors");
        let rounded: StateDict = (source.iter())
            .map(|(k, t)| {
                let t = if t.is_floating_point() {
                    t.to_kind(Kind::BFloat16)
                } else {
                    t.shallow_clone()
                };
                (k.to_string(), t)
            })
            .collect();
        rounded.save(&bf16).unwrap();
        for (path, want) in [(&fp32, &sd), (&bf16, &rounded)] {
            let m = model();
            let loaded = staging_cpu(|| load_checkpoint(&m, path, true));
            loaded.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for (k, t) in m.iter() {
                let want = want.get(k).unwrap().to_kind(t.kind());
                assert!(t.equal(&want), "{} {k}", path.display());
            }
        }
    }

    /// The DCP fixtures (`Shard(0)` rows, `Shard(1)` column boxes, replicated and empty
    /// chunks, zstd items) load through the staged route as through the CPU's routes, into
    /// a model of the file's dtypes and into a bf16 one: every box, strided or not, reaches
    /// its place.
    #[test]
    fn dcp_checkpoints_load_through_the_staged_route() {
        use crate::{load_state_dict, LazyStateDict, ModuleTree};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests")
            .join("fixtures")
            .join("distributed");
        let model = |sd: &LazyStateDict<'_>, bf16: bool| {
            let mut m = ModuleTree::new("m");
            for (k, t) in sd.iter() {
                let kind = t.kind().unwrap();
                let kind = match bf16 && crate::dtype::is_floating(kind) {
                    true => Kind::BFloat16,
                    false => kind,
                };
                let t = Tensor::zeros(t.size(), (kind, Device::Cpu));
                m.add_tensor(k, parameter(t)).unwrap();
            }
            m
        };
        for (dir, key) in [
            ("dtensor", None),
            ("fsdp2", Some("model")),
            ("torchtitan/step-10", Some("model")),
            ("zstd", Some("model")),
            ("threads3", Some("model")),
        ] {
            let mut sd = match key {
                Some(k) => LazyStateDict::load_key(root.join(dir), k),
                None => LazyStateDict::load(root.join(dir)),
            }
            .unwrap();
            sd.retain(|_, t| t.kind().is_some());
            for bf16 in [false, true] {
                let (want, got) = (model(&sd, bf16), model(&sd, bf16));
                load_state_dict(&want, &sd, true).unwrap();
                let staged = staging_cpu(|| load_state_dict(&got, &sd, true));
                staged.unwrap_or_else(|e| panic!("{dir}: {e}"));
                for (k, t) in got.iter() {
                    let w = want.get(k).unwrap();
                    assert!(t.equal(w), "{dir} {k}, bf16 {bf16}");
                }
            }
        }
    }

    /// The staged route's buffers are allocated before anything is written: when they
    /// cannot be, the load fails with the model as it was, though a tensor from memory is
    /// copied before the staged pieces run.
    #[test]
    fn staged_buffers_are_allocated_before_the_first_write() {
        use crate::{load_state_dict, LazyStateDict, ModuleTree, StateDict};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.pth");
        let w = Tensor::randn([4], (Kind::Float, Device::Cpu));
        let file: StateDict = [("w".to_string(), w.shallow_clone())].into_iter().collect();
        file.save(&path).unwrap();
        let mut sd = LazyStateDict::load(&path).unwrap();
        sd.insert("a", Tensor::ones([3], (Kind::Float, Device::Cpu)));
        let mut m = ModuleTree::new("m");
        m.add_tensor("a", Tensor::zeros([3], (Kind::Float, Device::Cpu)))
            .unwrap();
        m.add_tensor("w", Tensor::zeros([4], (Kind::Float, Device::Cpu)))
            .unwrap();
        super::super::stage::REFUSE_BUFFERS.with(|s| s.set(true));
        let refused = staging_cpu(|| load_state_dict(&m, &sd, true));
        super::super::stage::REFUSE_BUFFERS.with(|s| s.set(false));
        assert!(
            matches!(&refused, Err(Error::Copy { key, .. }) if key == "w"),
            "{refused:?}"
        );
        let zeros = |n| Tensor::zeros([n], (Kind::Float, Device::Cpu));
        assert!(
            m.get("a").unwrap().equal(&zeros(3)),
            "written before the failure"
        );
        // With its buffers, the same load writes both.
        staging_cpu(|| load_state_dict(&m, &sd, true)).unwrap();
        assert!(m.get("a").unwrap().equal(&zeros(3).ones_like()));
        assert!(m.get("w").unwrap().equal(&w));
    }

    #[test]
    fn plain_copies_are_memcpy_and_the_rest_copy_() {
        let dst = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
        let same = Tensor::ones([4, 4], (Kind::Float, Device::Cpu));
        let c = planned("w", &dst);
        assert!(matches!(plain_copy(&c, &same), Some(Some(_))));
        assert!(matches!(plain_copy(&c, &dst), Some(None)));
        let half = same.to_kind(Kind::Half);
        assert!(plain_copy(&c, &half).is_none());
        let transposed = same.tr();
        assert!(plain_copy(&c, &transposed).is_none());
        let squeeze = PlannedCopy {
            squeeze: true,
            ..planned("w", &dst)
        };
        assert!(plain_copy(&squeeze, &same).is_none());
    }
}
