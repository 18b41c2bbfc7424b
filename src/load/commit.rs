//! Commit: write every checked value into the model, all or nothing for everything that can
//! be found before the first write.
//!
//! Each planned copy takes one of four routes, chosen from where its values are:
//!
//! * a tensor in memory: `copy_`;
//! * bytes in a file laid out as the model's tensor is (same dtype, little-endian,
//!   contiguous, CPU): `pread` straight into the tensor ([`direct`](super::direct));
//! * bytes in a file in another dtype, byte order or for another device: chunked converting
//!   reads ([`convert`](super::convert));
//! * anything else (deflated storages, strided views, a cast the read options ask for): the
//!   tensor is materialized, then `copy_`.
//!
//! Before anything is written, the tensors of the last route are materialized (a corrupt
//! deflated storage fails here) and every file is checked to be as long as when it was
//! parsed ([`Error::FileChanged`]). What remains is an I/O error or a change to the file
//! during the copy itself, which can leave the model partly written.
//!
//! Tensors of the model that share memory (tied weights) are written one after the other in
//! the plan's order, so that the last write wins as with `copy_`; otherwise the reads run
//! across threads.

use tch::Tensor;

use super::convert::{self, Convert};
use super::direct::{is_direct, readable_in_place};
use super::plan::PlannedCopy;
use super::source::{Entry, SourceDict};
use crate::error::Error;
use crate::read::{read_all, From, Materializer, OpenFile, Read, Source};

enum Route<'s> {
    Copy(&'s Tensor),
    Materialized(Tensor),
    /// To be materialized: tensor `index` of `file`.
    Pending(&'s OpenFile<'s>, usize),
    Direct(&'s OpenFile<'s>, u64, usize),
    Convert(Convert<'s>),
}

fn from<'s>(file: &'s OpenFile<'s>) -> From<'s> {
    match &file.parsed.source {
        Source::Mapped(_, f) => From::File(f),
        other => From::Bytes(other.bytes()),
    }
}

/// Writes every planned copy from `sd` into the model, without autograd.
pub(crate) fn commit<D: SourceDict + ?Sized>(
    copies: &[PlannedCopy<'_>],
    sd: &D,
) -> Result<(), Error> {
    let _no_grad = tch::no_grad_guard();
    let mut routes: Vec<Route<'_>> = Vec::with_capacity(copies.len());
    let mut files: Vec<&OpenFile<'_>> = Vec::new();
    for c in copies {
        let route = match sd.entry(c.src) {
            Entry::Memory(t) => Route::Copy(t),
            Entry::File(file, index) => {
                if !files.iter().any(|f| std::ptr::eq(*f, file)) {
                    files.push(file);
                }
                let big_endian = file.parsed.big_endian;
                match readable_in_place(file, index) {
                    Some((t, offset)) if is_direct(t, big_endian, c.dst) => {
                        let len = c.dst.numel() * t.dtype.elt_size_in_bytes();
                        Route::Direct(file, offset, len)
                    }
                    Some((t, offset)) => {
                        match Convert::new(
                            c.key,
                            c.dst,
                            t.dtype,
                            big_endian,
                            offset,
                            from(file),
                            &file.path,
                        ) {
                            Some(convert) => Route::Convert(convert),
                            None => Route::Pending(file, index),
                        }
                    }
                    None => Route::Pending(file, index),
                }
            }
        };
        routes.push(route);
    }

    // Everything that can fail before a write fails here.
    for file in &files {
        file.check_unchanged()?;
    }
    materialize_pending(&mut routes)?;

    let threads = files.first().map_or(1, |f| f.options.read_threads());
    if shares_memory(copies) {
        for (c, route) in copies.iter().zip(&routes) {
            write(c, route, 1)?;
        }
        return Ok(());
    }
    let mut converts = Vec::new();
    let mut direct: Vec<(&OpenFile<'_>, Vec<Read<'_>>)> = Vec::new();
    for (c, route) in copies.iter().zip(routes) {
        match route {
            Route::Convert(convert) => converts.push(convert),
            Route::Direct(file, offset, len) => {
                let read = Read {
                    dst: c.dst,
                    offset,
                    len,
                    from: from(file),
                };
                match direct.iter_mut().find(|(f, _)| std::ptr::eq(*f, file)) {
                    Some((_, reads)) => reads.push(read),
                    None => direct.push((file, vec![read])),
                }
            }
            other => write(c, &other, threads)?,
        }
    }
    // Direct reads, file by file, each across threads; then the converting reads.
    for (file, reads) in &direct {
        read_all(reads, threads).map_err(|source| Error::Io {
            path: file.path.clone(),
            source,
        })?;
    }
    convert::run_all(&converts, threads)
}

/// Materializes the tensors of the `Pending` routes, file by file, each file's storages read
/// once.
fn materialize_pending(routes: &mut [Route<'_>]) -> Result<(), Error> {
    let mut groups: Vec<(&OpenFile<'_>, Vec<usize>, Vec<usize>)> = Vec::new();
    for (position, route) in routes.iter().enumerate() {
        if let Route::Pending(file, index) = route {
            match groups.iter_mut().find(|(f, _, _)| std::ptr::eq(*f, *file)) {
                Some((_, indices, positions)) => {
                    indices.push(*index);
                    positions.push(position);
                }
                None => groups.push((file, vec![*index], vec![position])),
            }
        }
    }
    let mut read = Vec::new();
    for (file, indices, positions) in groups {
        let tensors = Materializer::new(file).tensors(&indices)?;
        read.extend(positions.into_iter().zip(tensors));
    }
    for (position, tensor) in read {
        routes[position] = Route::Materialized(tensor);
    }
    Ok(())
}

/// Writes one planned copy by its route.
fn write(c: &PlannedCopy<'_>, route: &Route<'_>, threads: usize) -> Result<(), Error> {
    let copy_error = |source| Error::Copy {
        key: c.key.to_string(),
        source,
    };
    match route {
        Route::Copy(src) => copy_into(c.dst, src, c.squeeze).map_err(copy_error),
        Route::Materialized(src) => copy_into(c.dst, src, c.squeeze).map_err(copy_error),
        Route::Direct(file, offset, len) => {
            let read = Read {
                dst: c.dst,
                offset: *offset,
                len: *len,
                from: from(file),
            };
            read_all(&[read], threads).map_err(|source| Error::Io {
                path: file.path.clone(),
                source,
            })
        }
        Route::Convert(convert) => convert::run_all(std::slice::from_ref(convert), threads),
        Route::Pending(..) => unreachable!("materialized before any write"),
    }
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
