//! What every target reads its input with.

use tch_state_dict::{ReadLimits, ReadOptions};

/// The fixed part of the memory budget the targets read with: 16 MiB rather than the
/// default 256 MiB, so that an input that exhausts its budget (the hostile corpus's memory
/// attacks, and their mutants) fails in milliseconds rather than half a second, and the run
/// stays fast. The budget's code is the same; fuzz/run.sh sets -rss_limit_mb from it.
pub const MEMORY_BASE: u64 = 16 << 20;

/// The default limits with a memory budget of [`MEMORY_BASE`] and 8 bytes per byte of the
/// input.
pub fn options() -> ReadOptions {
    let mut limits = ReadLimits::default();
    limits.max_memory_base = MEMORY_BASE;
    ReadOptions::new().limits(limits)
}
