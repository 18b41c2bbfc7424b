//! Which file entries can be read straight into the model's tensor.
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
//! would raise SIGBUS.
//!
//! Measured again on this project's later machine (Linux 6.18), since a scratch loop over a
//! 1 GiB page-cached shard on 2 threads had `pread` into a resident buffer at 94–110 ms, a
//! `memcpy` of the same bytes in memory at 50–70 ms, and mapping the file, copying out of
//! the map and unmapping it at 51–58 ms. A load that copied out of the map instead (behind
//! `ReadOptions::mmap`, in 5ae4b3f, then reverted) did not hold that up in the floors
//! bench: at 1 GiB (`--quick`, two runs) 0.89× and 1.05× the memcpy floor against 1.09×
//! and 1.20× by `pread`, but at 4 GiB, in the full run, 1.49× against 1.33×, and the
//! converting load into fp32 1.27× its floor against 0.96×. Converting straight out of the
//! map, with no copy into a buffer, left the ResNet rows where they were (resnet50: 1.23–1.73
//! against 1.36–2.07 by `pread` in the same run, resnet152 1.20–1.63 against 1.17–1.52). A
//! map's cost depends on how the page cache holds the file (large folios or 4 KiB pages),
//! which the reader does not control, and it trades an error for SIGBUS; so loads read with
//! `pread`.
//!
//! What a map would buy at LLM scale, measured once more (a scratch loop over each 1 GiB
//! shard of the bench's 4 GiB checkpoint, halves on 2 threads, medians of 5): `pread` into
//! touched memory 1.05–1.25× a `memcpy` of the same 32 MiB pieces, whose `rep movsb` reads
//! each destination line before writing it; the whole load takes the sum of its shards'
//! `pread`s (450.8 ms against 452). Mapping a shard with `MAP_POPULATE`, copying out of the
//! map with non-temporal stores and unmapping took 0.74–0.92× that `memcpy` (0.85–0.86
//! without `MAP_POPULATE`); `pread` into a 128 KiB block then streamed into place, 1.19–1.34×.
//! So only a map copied with non-temporal stores goes below the floor, by skipping both the
//! kernel's copy and the destination's reads. The price is the one above: `torch.save`
//! truncates a file it overwrites, so a load racing a trainer's save of `last.ckpt` would die
//! of SIGBUS where `pread` gives an error, and the mapped pages count against the loading
//! process. Loads keep `pread`.
//!
//! That guard was then built and measured, not kept: a SIGBUS handler, installed once and
//! chaining to the one before it, that maps a page of zeros over a faulting page of the
//! current thread's window and turns the fault into `UnexpectedEof` (a unit test cut a file
//! under its map: an error with it, the test process killed by SIGBUS without it), with every
//! direct read of 4 MiB or more copied out of a populated map in windows of 4, 8 or 16 MiB
//! with non-temporal stores. The 4 GiB load into a bf16 model, four rounds interleaved with
//! the `pread` build (a scratch loop, medians of 5 loads each): 373–424 ms through the map
//! (383–414 in 16 MiB windows), 403–449 ms by `pread`, 2–9% and within the machine's swing,
//! far from the scratch loop's 20–25% over bare shards. Not enough to put a process-wide
//! signal handler in a library. Where a tensor's bytes lie in the file as the model's tensor lays
//! them out (stored, little-endian, contiguous, same dtype, CPU), they are read into the
//! parameter directly ([`Dst::takes_as_is`](super::route::Dst::takes_as_is)); another dtype
//! or byte order goes through the converting reads of [`convert`](super::convert), another
//! device through [`stage`](super::stage); anything else (strides, compression) through a
//! materialized tensor and `copy_` ([`route`](super::route) has the table).

use crate::dtype::is_floating;
use crate::read::{is_contiguous, OpenFile, StorageLoc, TensorRef};

/// The file tensor `index` of `file` with the storage it views, when the load may read it
/// without materializing it: stored (not deflated), contiguous, and with no cast asked for
/// by the options it was opened with (a cast changes the values a load sees).
pub(crate) fn readable_in_place<'f>(
    file: &'f OpenFile<'_>,
    index: usize,
) -> Option<(&'f TensorRef, u64)> {
    let t = &file.parsed.arena.tensors[index];
    let StorageLoc::Range { start, .. } = file.parsed.storages.get(&t.storage.key)? else {
        return None;
    };
    let cast = file
        .options
        .kind
        .is_some_and(|k| t.dtype.kind().is_some_and(|d| is_floating(d) && d != k));
    if cast || !is_contiguous(t.size(), t.stride()) {
        return None;
    }
    let elem = t.dtype.elt_size() as u64;
    // Checked when the checkpoint was opened: the whole extent lies inside the storage.
    let base = t.storage.view.map_or(0, |(offset, _)| offset) as u64;
    Some((t, start + (base + t.offset as u64) * elem))
}
