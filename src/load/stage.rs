//! Staged loads: the route into a model whose tensors live on another device (CUDA). The
//! file's bytes are read into a few host buffers, reused for the whole load, and each filled
//! buffer is handed to a copier thread that moves its pieces to their devices, while the next
//! buffer is read.
//!
//! # Design note
//!
//! A GPU load has two floors: reading the file (page cache to host memory, a memcpy's pace,
//! about 10 GB/s a thread here) and the host-to-device copy (about 55 GB/s from pinned
//! memory on an H100 or H200, half that or less from pageable memory, which the driver
//! stages itself). The route before this one read 1 MiB into pageable memory and called a
//! synchronous `copy_`, so the two floors added up, one megabyte at a time. Here:
//!
//! * **Pinned, reused, double-buffered.** [`Stager::depth`] host buffers of
//!   [`Stager::slot_bytes`] each (pinned for the devices the load writes to; 2 × up to 64
//!   MiB), allocated once per load, before it writes anything ([`Buffers`]): a load that
//!   cannot have them fails with the model as it was. The reading thread fills one (its
//!   pieces read across the read threads) while the copier thread empties the other. What
//!   can still fail once the load has written: a read (a file cut short underneath it), and
//!   the device memory each piece's bytes are copied into before their conversion (tch has
//!   no non-blocking copy into an existing tensor, so the copy makes one, from the device's
//!   caching allocator).
//! * **One synchronization per buffer.** The copier issues each piece's host-to-device copy
//!   with `non_blocking`, then the dtype conversion on the device (`copy_` on the GPU, after
//!   the raw bytes are there: the conversion costs the device microseconds, the host
//!   nothing), and synchronizes the devices the buffer fed once, before the buffer goes back
//!   to be refilled. That synchronization is also what makes reuse safe: no copy still reads a
//!   buffer that is being written. It is the whole device's (tch exposes neither CUDA
//!   events nor a stream's synchronization), so a load also waits for work other threads
//!   have queued on the same GPU.
//! * **One pass over the file**, in file order, each piece to its own tensor's device: a
//!   model split over `cuda:0` and `cuda:1` is loaded by one pipeline (its tensors on the
//!   CPU by the CPU's routes, before it). Where tensors share memory (tied weights), every
//!   copy runs on its own in the plan's order, a staged one through the same buffers.
//! * **Each piece at a multiple of [`PLACE`] in its buffer**, so that its bytes can be
//!   viewed as its dtype in place whatever the pieces before it.
//! * **The copier copies under `no_grad`**, as the calling thread does: grad mode is a
//!   thread's own, and a parameter that requires grad refuses an in-place `copy_` outside it.
//! * **Everything but the copy runs on the CPU.** In this crate's tests a destination on the
//!   CPU takes the same path (`route::STAGE_ON_CPU`) with unpinned buffers (the copier's
//!   `copy_` is then a host copy), so the buffer handling, the order, the splitting of large
//!   tensors across buffers, the packing of mixed dtypes, big-endian files, parameters that
//!   require grad and the error paths (a file cut short in the middle, a failing copy) are
//!   tested without a GPU (`tests` below, and a whole load in `commit`'s tests). What the
//!   CPU cannot show is a copy still running when its buffer is refilled: a host copy is
//!   synchronous, so the synchronization before a buffer goes back is checked on a GPU only
//!   (`scripts/device-check`).
//!
//! Expected on one H200 from the page cache (16 threads), not yet measured: reading runs at
//! 30–60 GB/s across 16 threads, the copy at about 55 GB/s, and the two overlap, so a 4 GiB
//! bf16 checkpoint should load in 80–150 ms (27–50 GB/s) into a bf16 model, and the same into
//! an fp32 model (the conversion runs on the GPU, at hundreds of GB/s). ResNet-50 (100 MB)
//! should take 3–6 ms, against 33–44 ms for PyTorch's `load_file(device="cuda")` and
//! `torch.load(mmap=True)` + `load_state_dict` measured on the same machine in this project's
//! first week. `scripts/device-check` measures all of it. Two costs are not in those
//! figures and could not be measured without a GPU: each load makes its buffers anew, and
//! tch can only pin by copying a pageable tensor (`_pin_memory`), so a load pays a pageable
//! allocation and a copy of twice [`Stager::slot_bytes`] (25 MB for ResNet-50, 128 MiB at
//! 4 GiB) before its first read; and every piece's bytes land in a device tensor of their
//! own before the `copy_` into the model (tch has no non-blocking copy into an existing
//! tensor), one more device-to-device copy of the load's bytes. If the device check shows
//! either to matter, the buffers can be kept across loads, as libtorch's caching host
//! allocator keeps their pinned memory anyway.

use std::path::Path;
use std::sync::mpsc;

use tch::{Device, Kind, Tensor};

use crate::dtype::{reverse_units, swap_unit};
use crate::error::Error;
use crate::read::{bytes_mut, read_all_with, Read, ReadFrom};

/// A contiguous run of a file's bytes bound for a slice of one of the model's tensors.
pub(crate) struct Piece<'t> {
    /// The key, for errors.
    pub key: &'t str,
    pub path: &'t Path,
    pub from: ReadFrom<'t>,
    /// Where the bytes are in the file.
    pub offset: u64,
    /// The dtype of the bytes in the file.
    pub kind: Kind,
    pub big_endian: bool,
    /// The model's tensor (a view of it): a contiguous one is split across buffers as
    /// needed; a strided one must fit in one buffer.
    pub dst: Tensor,
}

impl Piece<'_> {
    /// The bytes the piece reads.
    pub(crate) fn len(&self) -> usize {
        self.dst.numel() * self.kind.elt_size_in_bytes()
    }

    /// The same piece, its destination a shallow clone.
    pub(crate) fn clone_piece(&self) -> Self {
        Piece {
            dst: self.dst.shallow_clone(),
            ..*self
        }
    }
}

/// The shape of a staged load's buffers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stager {
    /// The bytes of one buffer.
    pub slot_bytes: usize,
    /// How many buffers take turns (2: one read while the other is copied).
    pub depth: usize,
}

impl Stager {
    /// Two buffers of an eighth of the load each, between 1 and 64 MiB: a few buffers per
    /// load at any size, and at most 128 MiB pinned.
    pub(crate) fn for_bytes(total: usize) -> Stager {
        Stager {
            slot_bytes: total.div_ceil(8).clamp(1 << 20, 64 << 20),
            depth: 2,
        }
    }
}

/// Where a piece may start in a buffer: a multiple of this. Its bytes are viewed as its
/// dtype in place, which needs an offset that is a multiple of the element's size (an int64
/// packed after three fp32 elements could not be), and a cache line each keeps the copies
/// aligned as the file had them.
const PLACE: usize = 64;

/// A piece placed in a buffer: its bytes are at `at` in the buffer, a multiple of [`PLACE`].
struct Placed<'t> {
    at: usize,
    piece: Piece<'t>,
}

/// The host buffers of a load's staged pieces, allocated before the load's first write
/// (pinned where the pieces' device pins), and reused by every [`run_staged`] of the load.
pub(crate) struct Buffers {
    slots: Vec<Tensor>,
    slot_bytes: usize,
}

#[cfg(test)]
thread_local! {
    /// In this crate's unit tests: whether allocating buffers fails, as it would with no
    /// memory left.
    pub(crate) static REFUSE_BUFFERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Buffers {
    /// `stager`'s buffers for `pieces`: no larger than all their bytes, and large enough for
    /// the largest piece that cannot be split (a strided one, which `route::choose` lets
    /// through up to `STAGED_STRIDED_BYTES`). None for no pieces.
    ///
    /// # Errors
    ///
    /// [`Error::Copy`], naming the first piece's key, when a buffer cannot be allocated.
    pub(crate) fn for_pieces(pieces: &[&Piece<'_>], stager: Stager) -> Result<Buffers, Error> {
        let Some(first) = pieces.first() else {
            return Ok(Buffers {
                slots: Vec::new(),
                slot_bytes: 0,
            });
        };
        let alloc_error = |source| Error::Copy {
            key: first.key.to_string(),
            source,
        };
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        let largest = pieces
            .iter()
            .map(|p| match p.dst.is_contiguous() {
                true => p.len().min(stager.slot_bytes),
                false => p.len(),
            })
            .max()
            .unwrap_or(0);
        let slot_bytes = stager.slot_bytes.min(total).max(largest).max(1);
        let pin = pieces
            .iter()
            .map(|p| p.dst.device())
            .find(|d| *d != Device::Cpu);
        let mut slots = Vec::with_capacity(stager.depth.max(1));
        for _ in 0..stager.depth.max(1) {
            #[cfg(test)]
            if REFUSE_BUFFERS.with(std::cell::Cell::get) {
                return Err(alloc_error(tch::TchError::Torch("refused".into())));
            }
            let slot = Tensor::f_empty([slot_bytes as i64], (Kind::Uint8, Device::Cpu))
                .map_err(alloc_error)?;
            // Pinned where the device's backend pins (CUDA); a backend that cannot (MPS)
            // copies from pageable memory, slower but the same. `_pin_memory`, not
            // `pin_memory`: tch passes the device, which libtorch 2.11's `pin_memory` answers
            // with a deprecation warning on stderr at every call, two a load.
            let slot = match pin {
                Some(device) => slot.f_internal_pin_memory(device).unwrap_or(slot),
                None => slot,
            };
            slots.push(slot);
        }
        Ok(Buffers { slots, slot_bytes })
    }
}

/// Loads every piece, in order, through `buffers` (made for these pieces, or more):
/// reads on the calling thread (each buffer's reads split across `threads`), copies on one
/// copier thread. `done(n)` is called after each piece with the bytes written into the
/// model.
///
/// # Errors
///
/// The first error met: [`Error::Io`] for a read, [`Error::Copy`] for a copy. The pipeline
/// drains before it returns: no copy still reads a buffer when it returns.
pub(crate) fn run_staged(
    pieces: Vec<Piece<'_>>,
    buffers: &Buffers,
    threads: usize,
    done: &(dyn Fn(usize) + Sync),
) -> Result<(), Error> {
    let Some(key) = pieces.first().map(|p| p.key.to_string()) else {
        return Ok(());
    };
    let (slots, slot_bytes) = (&buffers.slots, buffers.slot_bytes);
    let pieces = split(pieces, slot_bytes).map_err(|source| Error::Copy { key, source })?;
    // `Buffers::for_pieces` made room for every piece that cannot be split.
    assert!(
        !slots.is_empty() && pieces.iter().all(|p| p.len() <= slot_bytes),
        "staged pieces larger than their buffers"
    );
    // The copier's own handles on the same buffers (a tensor can be sent, not shared).
    let copier_slots: Vec<Tensor> = slots.iter().map(Tensor::shallow_clone).collect();
    // Filled buffers go to the copier; emptied ones come back, with the copier's verdict.
    let (to_copier, filled) = mpsc::channel::<(usize, Vec<Placed<'_>>)>();
    let (to_reader, emptied) = mpsc::channel::<(usize, Result<(), Error>)>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Grad mode is a thread's own: the caller's `no_grad` does not reach this thread,
            // and an in-place `copy_` into a parameter that requires grad fails outside it.
            let _no_grad = tch::no_grad_guard();
            for (slot, placed) in filled {
                let result = copy_slot(&copier_slots[slot], &placed, done);
                if to_reader.send((slot, result)).is_err() {
                    break;
                }
            }
        });
        let mut free: Vec<usize> = (0..slots.len()).rev().collect();
        let mut in_flight = 0;
        let mut first_error: Option<Error> = None;
        let mut pieces = pieces.into_iter().peekable();
        while pieces.peek().is_some() && first_error.is_none() {
            // A free buffer, or the next one the copier gives back.
            let slot = match free.pop() {
                Some(slot) => slot,
                None => {
                    let (slot, result) = emptied.recv().expect("the copier answers every buffer");
                    in_flight -= 1;
                    if let Err(e) = result {
                        first_error = Some(e);
                        break;
                    }
                    slot
                }
            };
            let mut placed = Vec::new();
            let mut used = 0usize;
            while let Some(p) =
                pieces.next_if(|p| used.next_multiple_of(PLACE) + p.len() <= slot_bytes)
            {
                let at = used.next_multiple_of(PLACE);
                used = at + p.len();
                placed.push(Placed { at, piece: p });
            }
            if let Err(e) = fill(&slots[slot], &placed, threads) {
                first_error = Some(e);
                break;
            }
            to_copier
                .send((slot, placed))
                .expect("the copier runs until the channel closes");
            in_flight += 1;
        }
        drop(to_copier);
        // Drain: every buffer sent comes back before the buffers can be freed.
        for _ in 0..in_flight {
            let (_, result) = emptied.recv().expect("the copier answers every buffer");
            if let (Err(e), None) = (result, &first_error) {
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// Contiguous pieces larger than `slot_bytes` cut into pieces that fit.
fn split(pieces: Vec<Piece<'_>>, slot_bytes: usize) -> Result<Vec<Piece<'_>>, tch::TchError> {
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces {
        let elem = p.kind.elt_size_in_bytes();
        if p.len() <= slot_bytes || !p.dst.is_contiguous() {
            out.push(p);
            continue;
        }
        let flat = p.dst.f_view([-1])?;
        let per = (slot_bytes / elem).max(1) as i64;
        let numel = flat.numel() as i64;
        let mut first = 0;
        while first < numel {
            let count = per.min(numel - first);
            out.push(Piece {
                key: p.key,
                path: p.path,
                from: p.from,
                offset: p.offset + (first as u64) * elem as u64,
                kind: p.kind,
                big_endian: p.big_endian,
                dst: flat.f_narrow(0, first, count)?,
            });
            first += count;
        }
    }
    Ok(out)
}

/// Reads the placed pieces into `slot` (across `threads`) and puts big-endian bytes in the
/// machine's order.
fn fill(slot: &Tensor, placed: &[Placed<'_>], threads: usize) -> Result<(), Error> {
    let reads: Vec<Read<'_>> = placed
        .iter()
        .map(|p| Read {
            dst: slot,
            dst_at: p.at,
            offset: p.piece.offset,
            len: p.piece.len(),
            from: p.piece.from,
        })
        .collect();
    read_all_with(&reads, threads, &|_| {}).map_err(|source| Error::Io {
        path: placed[0].piece.path.to_path_buf(),
        source,
    })?;
    for p in placed.iter().filter(|p| p.piece.big_endian) {
        // SAFETY: `slot` is a contiguous CPU tensor of at least `at + len` bytes (the pieces
        // were placed within it), and the reading thread owns it until it is sent to the
        // copier.
        let bytes = unsafe { bytes_mut((slot.data_ptr() as *mut u8).add(p.at), p.piece.len()) };
        reverse_units(bytes, swap_unit(p.piece.kind));
    }
    Ok(())
}

/// The copier's work on one filled buffer: each piece copied to its device with
/// `non_blocking`, converted there to the model's dtype, then one synchronization per device
/// the buffer fed, so that the buffer can be refilled.
fn copy_slot(
    slot: &Tensor,
    placed: &[Placed<'_>],
    done: &(dyn Fn(usize) + Sync),
) -> Result<(), Error> {
    // In the unit tests the copier lags, so that a buffer handed back too early would be
    // refilled under it and the tests would see the wrong values.
    #[cfg(test)]
    std::thread::sleep(std::time::Duration::from_micros(300));
    let mut devices: Vec<i64> = Vec::new();
    let mut result = Ok(());
    for p in placed {
        let piece = &p.piece;
        let device = piece.dst.device();
        // Noted before its copy is issued: a copy that fails after the bytes were sent still
        // has the device synchronized before the buffer goes back.
        if let Device::Cuda(index) = device {
            if !devices.contains(&(index as i64)) {
                devices.push(index as i64);
            }
        }
        let copied = slot
            .f_narrow(0, p.at as i64, piece.len() as i64)
            .and_then(|bytes| bytes.f_view_dtype(piece.kind))
            .and_then(|src| src.f_view(piece.dst.size().as_slice()))
            .and_then(|src| {
                // Raw bytes to the device first (a plain copy from pinned memory, which
                // `non_blocking` leaves running), then the conversion on the device. Only
                // CUDA's copies are left running: they are the ones synchronized below
                // (another backend's, MPS's, may read the buffer after the call returns).
                let src = match device {
                    Device::Cpu => src,
                    Device::Cuda(_) => src.f_to_device_(device, piece.kind, true, false)?,
                    _ => src.f_to_device_(device, piece.kind, false, false)?,
                };
                piece.dst.shallow_clone().f_copy_(&src)
            });
        if let Err(source) = copied {
            result = Err(Error::Copy {
                key: piece.key.to_string(),
                source,
            });
            break;
        }
        done(piece.dst.numel() * piece.dst.kind().elt_size_in_bytes());
    }
    for index in devices {
        tch::Cuda::synchronize(index);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn file_with(bytes: &[u8]) -> (tempfile::TempPath, std::fs::File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        let path = f.into_temp_path();
        let file = std::fs::File::open(&path).unwrap();
        (path, file)
    }

    /// `run_staged` through buffers made for `pieces`.
    fn run(
        pieces: Vec<Piece<'_>>,
        stager: Stager,
        threads: usize,
        done: &(dyn Fn(usize) + Sync),
    ) -> Result<(), Error> {
        let buffers = Buffers::for_pieces(&pieces.iter().collect::<Vec<_>>(), stager)?;
        run_staged(pieces, &buffers, threads, done)
    }

    fn values(n: usize) -> Tensor {
        Tensor::arange(n as i64, (Kind::Float, Device::Cpu)) * 0.5 - 3.0
    }

    fn le_bytes(t: &Tensor) -> Vec<u8> {
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut out = vec![0u8; n];
        t.contiguous()
            .view_dtype(Kind::Uint8)
            .copy_data_u8(&mut out, n);
        out
    }

    /// A piece of `file` at `offset`, in `kind` (little-endian), for `dst`, keyed `key`.
    fn piece<'t>(
        key: &'t str,
        path: &'t Path,
        file: &'t std::fs::File,
        offset: u64,
        kind: Kind,
        dst: &Tensor,
    ) -> Piece<'t> {
        Piece {
            key,
            path,
            from: ReadFrom::File(file),
            offset,
            kind,
            big_endian: false,
            dst: dst.shallow_clone(),
        }
    }

    /// Tensors of several sizes, in bf16 in a file one after the other, loaded into fp32
    /// tensors through buffers far smaller than the largest: split, reused, converted.
    #[test]
    fn pieces_split_across_reused_buffers_arrive_converted_in_place() {
        let sizes = [1usize, 7, 100, 33, 1000, 5, 257];
        let srcs: Vec<Tensor> = sizes
            .iter()
            .map(|&n| values(n).to_kind(Kind::BFloat16))
            .collect();
        let bytes: Vec<u8> = srcs.iter().flat_map(le_bytes).collect();
        let (path, file) = file_with(&bytes);
        let dsts: Vec<Tensor> = sizes
            .iter()
            .map(|&n| Tensor::zeros([n as i64], (Kind::Float, Device::Cpu)))
            .collect();
        let mut offset = 0u64;
        let mut pieces = Vec::new();
        for (src, dst) in srcs.iter().zip(&dsts) {
            pieces.push(Piece {
                key: "w",
                path: &path,
                from: ReadFrom::File(&file),
                offset,
                kind: Kind::BFloat16,
                big_endian: false,
                dst: dst.shallow_clone(),
            });
            offset += (src.numel() * 2) as u64;
        }
        for depth in [1, 2, 3] {
            for d in &dsts {
                let _ = d.shallow_clone().zero_();
            }
            let written = AtomicUsize::new(0);
            let stager = Stager {
                slot_bytes: 64,
                depth,
            };
            let pieces = pieces.iter().map(Piece::clone_piece).collect();
            run(pieces, stager, 2, &|n| {
                written.fetch_add(n, Ordering::Relaxed);
            })
            .unwrap();
            for (src, dst) in srcs.iter().zip(&dsts) {
                assert!(dst.equal(&src.to_kind(Kind::Float)), "depth {depth}");
            }
            assert_eq!(written.into_inner(), sizes.iter().sum::<usize>() * 4);
        }
    }

    #[test]
    fn big_endian_bytes_are_swapped_before_the_copy() {
        let src = values(300);
        let be: Vec<u8> = le_bytes(&src)
            .chunks_exact(4)
            .flat_map(|c| [c[3], c[2], c[1], c[0]])
            .collect();
        let (path, file) = file_with(&be);
        let dst = Tensor::zeros([300], (Kind::Double, Device::Cpu));
        let piece = Piece {
            key: "w",
            path: &path,
            from: ReadFrom::File(&file),
            offset: 0,
            kind: Kind::Float,
            big_endian: true,
            dst: dst.shallow_clone(),
        };
        let stager = Stager {
            slot_bytes: 128,
            depth: 3,
        };
        run(vec![piece], stager, 1, &|_| {}).unwrap();
        assert!(dst.equal(&src.to_kind(Kind::Double)));
    }

    /// A strided destination (a column block) takes its piece whole, in its own shape.
    #[test]
    fn a_strided_destination_takes_its_bytes_in_its_shape() {
        let src = values(12).view([4, 3]);
        let (path, file) = file_with(&le_bytes(&src));
        let model = Tensor::zeros([4, 5], (Kind::Float, Device::Cpu));
        let block = model.narrow(1, 1, 3);
        let piece = piece("w", &path, &file, 0, Kind::Float, &block);
        run(vec![piece], Stager::for_bytes(48), 1, &|_| {}).unwrap();
        assert!(model.narrow(1, 1, 3).equal(&src));
        assert_eq!(
            model
                .narrow(1, 0, 1)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
    }

    /// A file cut short in the middle of the load: the read fails with an I/O error, the
    /// pipeline drains and returns it, and the pieces before it were written.
    #[test]
    fn a_file_cut_short_midway_is_an_io_error_after_the_pipeline_drains() {
        let src = values(64);
        let bytes = le_bytes(&src);
        let (path, file) = file_with(&bytes[..200]);
        let dsts: Vec<Tensor> = (0..8)
            .map(|_| Tensor::zeros([8], (Kind::Float, Device::Cpu)))
            .collect();
        let pieces = dsts
            .iter()
            .enumerate()
            .map(|(i, dst)| piece("w", &path, &file, i as u64 * 32, Kind::Float, dst))
            .collect();
        let stager = Stager {
            slot_bytes: 32,
            depth: 2,
        };
        let err = run(pieces, stager, 1, &|_| {}).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(dsts[0].equal(&src.narrow(0, 0, 8)));
        assert!(dsts[5].equal(&src.narrow(0, 40, 8)));
        assert_eq!(dsts[7].abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    /// The model's parameters require grad, and the load runs under `no_grad` on the calling
    /// thread (as `commit` runs it): the copier, a thread of its own, copies under `no_grad`
    /// too, into whole tensors and into the slices of a tensor split across buffers.
    #[test]
    fn parameters_that_require_grad_are_written_by_the_copier() {
        let src = values(40);
        let (path, file) = file_with(&le_bytes(&src));
        let whole = Tensor::zeros([8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let split = Tensor::zeros([32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let _no_grad = tch::no_grad_guard();
        let pieces = vec![
            piece("whole", &path, &file, 0, Kind::Float, &whole),
            piece("split", &path, &file, 32, Kind::Float, &split),
        ];
        let stager = Stager {
            slot_bytes: 48,
            depth: 2,
        };
        run(pieces, stager, 1, &|_| {}).unwrap();
        assert!(whole.equal(&src.narrow(0, 0, 8)));
        assert!(split.equal(&src.narrow(0, 8, 32)));
    }

    /// Pieces of every element size, each of an odd number of elements, share buffers: each
    /// is placed at a multiple of its element size, so that its bytes can be viewed as its
    /// dtype (an int64 after 3 bytes of uint8 or 3 fp32 elements could not be).
    #[test]
    fn pieces_of_mixed_element_sizes_share_a_buffer() {
        let srcs = [
            Tensor::arange(3, (Kind::Uint8, Device::Cpu)),
            Tensor::arange(3, (Kind::Int64, Device::Cpu)) - 7,
            values(3).to_kind(Kind::BFloat16),
            values(5),
            Tensor::arange(1, (Kind::Int64, Device::Cpu)) + 11,
            values(3).to_kind(Kind::Double),
            Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
            Tensor::arange(5, (Kind::Int16, Device::Cpu)),
        ];
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for t in &srcs {
            offsets.push(bytes.len() as u64);
            bytes.extend(le_bytes(t));
        }
        let (path, file) = file_with(&bytes);
        let dsts: Vec<Tensor> = srcs.iter().map(Tensor::zeros_like).collect();
        for slot_bytes in [24, 64, 1 << 10] {
            let pieces = (srcs.iter().zip(&dsts).zip(&offsets))
                .map(|((t, d), &at)| piece("w", &path, &file, at, t.kind(), d))
                .collect();
            let stager = Stager {
                slot_bytes,
                depth: 2,
            };
            run(pieces, stager, 2, &|_| {}).unwrap();
            for (t, d) in srcs.iter().zip(&dsts) {
                assert!(d.equal(t), "{:?} in buffers of {slot_bytes}", t.kind());
            }
        }
    }

    /// A copy that libtorch refuses (bytes viewed as a quantized dtype) is the copier's error,
    /// with its key, returned after the buffers in flight come back.
    #[test]
    fn a_failing_copy_stops_the_load_with_its_key() {
        let src = values(16);
        let (path, file) = file_with(&le_bytes(&src));
        let good = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let bad = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let pieces = vec![
            piece("good", &path, &file, 0, Kind::Float, &good),
            piece("bad", &path, &file, 16, Kind::QInt8, &bad),
        ];
        let err = run(pieces, Stager::for_bytes(64), 1, &|_| {}).unwrap_err();
        assert!(
            matches!(&err, Error::Copy { key, .. } if key == "bad"),
            "{err:?}"
        );
        assert!(good.equal(&src.narrow(0, 0, 4)));
    }
}
