//! The memory budget of one file ([`ReadLimits::max_memory`]): what parsing it may allocate,
//! then what building its values may.
//!
//! # Design note
//!
//! Every allocation the reader makes for a file is charged here, before it is made where
//! its size comes from the file's own declarations or from copies, and as it is made where
//! it is a few bytes per byte of input (an object per opcode). The charges are estimates of
//! resident memory, written as an upper bound:
//!
//! - a heap allocation of `n` bytes costs [`heap`]`(n)`: glibc's chunk, `n` plus 8 rounded
//!   up to 16, at least 32;
//! - an element of one of the reader's large vectors (the arena's objects, the pool of tuple
//!   items, the stack, the memo) costs its size: a large vector lives in its own mapping,
//!   which grows by `mremap` without copying, and the capacity it has not reached yet is
//!   never touched, so never resident;
//! - an element of a small vector that grows (a list the pickle appends to) costs its share
//!   of the vector's allocated capacity.
//!
//! Parsing charges what it keeps (the arena) apart from what it frees when it is done (the
//! pickle's bytes, the stack, the marks and the memo): these are released, and the values
//! of [`Materializer`](super::Materializer) may use the rest. Copies that a memo reference
//! makes cheap to ask for (`torch.Size(memo)`, `set(memo)`, an object's arguments) are
//! checked against the budget before they are made, and walks of memoized objects that
//! copy nothing are charged as if they copied the ids they walk, so that the work a file
//! can cause is bounded along with its memory.
//!
//! Measured (`tests/budget.rs`, `measure_files`, release build) on files of a million
//! one-element tensors, the most charged while opening comes to 1.01 times the growth of
//! peak RSS for a `torch.save` state dict whose tensors view one storage, 1.14 for one of a
//! million storages, and 1.28 for a safetensors file: the fixed cost is the margin.

use super::options::ReadLimits;

/// What every file is charged first: the reader's own working memory, which grows peak RSS
/// without being allocated for the file (the pages of the code that reads it, libtorch's
/// on its first tensor, the allocator's bookkeeping, small buffers). Measured at 1.6 to
/// 4.5 MiB on the hostile corpus.
pub(crate) const FIXED_COST: u64 = 8 << 20;

/// The bytes a file may still make the reader allocate.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    max: u64,
    used: u64,
}

/// The budget would be exceeded; `max` is the budget.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exhausted {
    pub max: u64,
}

impl Budget {
    /// The budget of a file of `file_len` bytes, charged its [`FIXED_COST`] (all of the
    /// budget, when it is smaller).
    pub(crate) fn for_file(limits: &ReadLimits, file_len: u64) -> Self {
        let max = limits.max_memory(file_len);
        Budget {
            max,
            used: FIXED_COST.min(max),
        }
    }

    /// Charges `bytes`, or fails when they do not fit (charging nothing).
    pub(crate) fn charge(&mut self, bytes: u64) -> Result<(), Exhausted> {
        self.check(bytes)?;
        self.used += bytes;
        Ok(())
    }

    /// Whether `bytes` more would fit, without charging them.
    pub(crate) fn check(&self, bytes: u64) -> Result<(), Exhausted> {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.max => Ok(()),
            _ => Err(Exhausted { max: self.max }),
        }
    }

    /// Gives back `bytes` charged earlier and freed since.
    pub(crate) fn release(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }

    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }
}

/// What a heap allocation of `n` bytes costs: glibc's chunk, `n` plus its 8-byte header
/// rounded up to 16, at least 32; nothing for `n = 0`, which allocates nothing.
pub(crate) const fn heap(n: usize) -> u64 {
    if n == 0 {
        return 0;
    }
    // Saturating: a size a file declares may be near 2^64 (the budget refuses it).
    let chunk = (n as u64).saturating_add(8 + 15) & !15;
    if chunk < 32 {
        32
    } else {
        chunk
    }
}

/// What `n` elements of `size` bytes cost in a small vector's allocation.
pub(crate) const fn heap_of(n: usize, size: usize) -> u64 {
    heap(n.saturating_mul(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_chunks_round_like_glibc() {
        assert_eq!(heap(0), 0);
        assert_eq!(heap(1), 32);
        assert_eq!(heap(24), 32);
        assert_eq!(heap(25), 48);
        assert_eq!(heap(1000), 1008);
        assert!(heap(usize::MAX) > 1 << 62);
    }

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_charges_nothing_then() {
        let mut limits = ReadLimits {
            max_memory_base: FIXED_COST + 100,
            max_memory_per_file_byte: 2,
            ..ReadLimits::default()
        };
        let mut b = Budget::for_file(&limits, 10);
        assert_eq!((b.max(), b.used()), (FIXED_COST + 120, FIXED_COST));
        b.charge(100).unwrap();
        assert_eq!(b.charge(21).unwrap_err().max, FIXED_COST + 120);
        assert_eq!(b.used(), FIXED_COST + 100);
        b.charge(20).unwrap();
        b.release(50);
        assert_eq!(b.used(), FIXED_COST + 70);
        assert!(b.check(u64::MAX).is_err());
        // A budget smaller than the fixed cost has no room for anything.
        limits.max_memory_base = 0;
        let b = Budget::for_file(&limits, 10);
        assert_eq!((b.max(), b.used()), (20, 20));
        assert!(b.check(1).is_err());
    }
}
