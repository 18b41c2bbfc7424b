//! Fresh buffers for the bytes of storages read into memory.
//!
//! # Design note
//!
//! A load that holds a checkpoint in memory (`StateDict::load`, `Value::load`, `assign`)
//! writes every byte into memory that nobody has touched yet, and on Linux the first touch
//! of each 4 KiB page faults and zeroes it. Measured (issue 16, 2-core VM): allocating and
//! filling 1 GiB took 429 ms with 4 KiB pages, 103.5 ms when libtorch's allocator asked for
//! huge pages (`THP_MEM_ALLOC_ENABLE=1`), against 66–75 ms for copying into memory touched
//! already. This machine's kernel, like most distributions', has transparent huge pages in
//! `madvise` mode: memory gets 2 MiB pages only where it asks for them.
//!
//! So a fresh buffer asks: `madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned part of its memory,
//! before anything touches it. The buffer is still an ordinary libtorch tensor from
//! libtorch's allocator, owned and freed by libtorch, and resizing or freeing it is as safe
//! as for any tensor; the advice changes only how the kernel backs the pages. Where THP is
//! `never`, and off Linux, the advice is skipped (or ignored by the kernel) and the buffer is
//! what it was.
//!
//! Measured here (`StateDict::load` of a 256 MiB `.pth` of 16 tensors, release build, the
//! machine shared with a build): 65,540 minor page faults and 482 ms without the advice,
//! 1,558 faults and 259 ms with it (the second of three loads in one process; the third
//! reuses memory glibc kept: 4,096 faults and 136 ms without, 1 fault and 84 ms with).
//! One allocation per file, with tensors as views into it, would give small storages huge
//! pages too, but would keep a whole file's memory alive for any one tensor kept: not done.

use tch::{Device, Kind, Tensor};

/// The size of a transparent huge page on x86-64 and arm64 (with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// A 1-D uint8 CPU tensor of `len` bytes, not yet touched, whose memory the kernel is asked
/// to back with huge pages where it can.
pub(crate) fn fresh_buffer(len: usize) -> Result<Tensor, tch::TchError> {
    let t = Tensor::f_empty([len as i64], (Kind::Uint8, Device::Cpu))?;
    if len >= HUGE_PAGE {
        advise_huge_pages(t.data_ptr() as usize, len);
    }
    Ok(t)
}

/// `madvise(MADV_HUGEPAGE)` on the whole 2 MiB pages inside `start..start + len`.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: usize, len: usize) {
    let first = start.div_ceil(HUGE_PAGE) * HUGE_PAGE;
    let end = (start + len) / HUGE_PAGE * HUGE_PAGE;
    if end <= first {
        return;
    }
    // SAFETY: `first..end` lies inside the allocation of a tensor this crate just made and
    // owns, and MADV_HUGEPAGE is advice: it changes how the kernel backs the pages, never
    // their contents or the mapping's validity. A failure (THP off, an old kernel) leaves the
    // memory as it was, so the result is ignored.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: usize, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_buffer_is_an_ordinary_tensor() {
        for len in [0, 1, HUGE_PAGE - 1, 3 * HUGE_PAGE + 5] {
            let mut t = fresh_buffer(len).unwrap();
            assert_eq!(t.size(), [len as i64]);
            let _ = t.fill_(7);
            assert_eq!(t.sum(Kind::Int64).int64_value(&[]), 7 * len as i64);
            // Resized and freed as any tensor.
            let _ = t.resize_([3]);
            drop(t);
        }
    }
}
