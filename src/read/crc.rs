//! CRC-32 of zip records: what a torch zip file records for each storage, and the checks.
//!
//! # Design note
//!
//! `torch.load` checks no CRC (PyTorch 2.11: a flipped byte in `data.pkl` or in a storage
//! loads without a word; `tests/crc.rs` pins it). This reader checks every record it reads
//! whole into memory, where the cost is small against the read: `data.pkl`, `byteorder`,
//! deflated storages (inflating costs far more than the CRC), and stored storages of up to
//! [`ALWAYS_CHECKED_BYTES`]. Large stored storages are checked when
//! [`ReadOptions::verify_crc`](super::ReadOptions::verify_crc) asks, because the check is
//! not free where the read is at the speed of memory. Measured on a 1 GiB checkpoint of 256
//! storages of 4 MiB, file in the page cache, 2 threads, release build, medians of 15 runs
//! over two runs of a timing program:
//!
//! | | unchecked | checked |
//! |---|---|---|
//! | `StateDict::load_with` (read into memory) | 87–95 ms | 105–118 ms |
//! | `Checkpoint::load_into` (read into the model) | 67–71 ms | 122–125 ms |
//!
//! Reading into memory hashes each storage after it is read, in pieces across the read
//! threads (crc32fast runs at about 15 GB/s per thread here): 10–30% more. A load into a
//! model reads each tensor straight into its parameter, so checking before the first write
//! is a second pass over the file: 75% more. With the machine's 2 cores shared with other
//! jobs (load average 6) the same runs gave 190 → 290–320 ms and 195 → 435–445 ms: 50–70%
//! and 120% more. Checking the small storages always costs nothing measurable (a checkpoint
//! of 10,000 small tensors: 75–84 ms either way).
//!
//! A recorded CRC of zero counts as not recorded: some writers leave every CRC zero
//! (`tests/fixtures/pytorch/zero_crc.pth`), and real data has a CRC of zero once in 2^32.

use std::collections::HashMap;
use std::path::Path;

use super::index::StorageLoc;
use super::options::ReadOptions;
use super::pread::ReadFrom;
use super::threads::{on_threads, runs, PARALLEL_BYTES};
use crate::error::Error;

/// Stored storages up to this size are checked whenever they are read whole, whatever
/// [`ReadOptions::verify_crc`] says; larger ones when it says so.
pub(crate) const ALWAYS_CHECKED_BYTES: usize = 1 << 20;

/// The piece of a storage one thread hashes at a time.
const PIECE: usize = 4 << 20;

/// The chunk a pass over the file reads at a time: small enough to stay in the cache
/// between the read and the hash.
const FILE_CHUNK: usize = 256 << 10;

/// The CRC-32 a zip archive records for each storage, where it records one.
#[derive(Debug, Default)]
pub(crate) struct Crcs {
    /// A storage's record is named by this prefix and its key (`archive/data/`).
    pub prefix: String,
    /// Each storage's CRC-32, by key; a CRC of zero is not recorded.
    pub by_key: HashMap<String, u32>,
}

impl Crcs {
    /// Checks storages just read whole into memory, each `(key, bytes)`: those with a
    /// recorded CRC-32 that are small or that `verify_crc` asks for, hashed across the read
    /// threads. The first mismatch in `reads`' order is the one reported.
    pub(crate) fn check_read(
        &self,
        path: &Path,
        reads: &[(&str, &[u8])],
        options: &ReadOptions,
    ) -> Result<(), Error> {
        let todo: Vec<(&str, &[u8], u32)> = reads
            .iter()
            .filter(|(_, b)| b.len() <= ALWAYS_CHECKED_BYTES || options.verify_crc)
            .filter_map(|&(k, b)| self.by_key.get(k).map(|&c| (k, b, c)))
            .collect();
        let total: usize = todo.iter().map(|t| t.1.len()).sum();
        let threads = options.read_threads();
        if threads <= 1 || total < PARALLEL_BYTES {
            return todo
                .iter()
                .try_for_each(|&(k, b, c)| self.compare(path, k, c, crc32fast::hash(b)));
        }
        // Each storage cut into pieces, hashed across threads, and combined in order.
        let pieces: Vec<(usize, &[u8])> = todo
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.1.chunks(PIECE).map(move |p| (i, p)))
            .collect();
        let per_thread = pieces.len().div_ceil(threads);
        let runs: Vec<Vec<(usize, &[u8])>> = pieces.chunks(per_thread).map(<[_]>::to_vec).collect();
        let hashed: Vec<(usize, crc32fast::Hasher)> = on_threads(runs, |run| {
            run.into_iter()
                .map(|(i, p)| {
                    let mut h = crc32fast::Hasher::new();
                    h.update(p);
                    (i, h)
                })
                .collect::<Vec<_>>()
        })
        .into_iter()
        .flat_map(|r| r.expect("hashing does not panic"))
        .collect();
        let mut combined: Vec<crc32fast::Hasher> = vec![crc32fast::Hasher::new(); todo.len()];
        for (i, h) in &hashed {
            combined[*i].combine(h);
        }
        todo.iter()
            .zip(combined)
            .try_for_each(|(&(k, _, c), h)| self.compare(path, k, c, h.finalize()))
    }

    /// Checks every stored storage with a recorded CRC-32 by reading it from `from` in
    /// chunks, storages split across `threads`: the pass that a load into a model makes
    /// before its first write when `verify_crc` asks.
    pub(crate) fn check_stored(
        &self,
        path: &Path,
        storages: &HashMap<String, StorageLoc>,
        from: ReadFrom<'_>,
        threads: usize,
    ) -> Result<(), Error> {
        let mut todo: Vec<(&str, u64, u64, u32)> = Vec::new();
        for (key, &crc) in &self.by_key {
            if let Some(&StorageLoc::Range { start, len }) = storages.get(key) {
                todo.push((key, start, len, crc));
            }
        }
        todo.sort_by_key(|t| t.1);
        let total: u64 = todo.iter().map(|t| t.2).sum();
        let share = total.div_ceil(threads.max(1) as u64).max(1);
        // Runs of storages in file order, of about `share` bytes, one per thread.
        let runs = runs(todo, share, |t| t.2);
        let check_run = |run: Vec<(&str, u64, u64, u32)>| -> Result<(), Error> {
            let mut buf = vec![0u8; FILE_CHUNK];
            for (key, start, len, expected) in run {
                let mut h = crc32fast::Hasher::new();
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(FILE_CHUNK as u64) as usize;
                    let chunk = &mut buf[..n];
                    let offset = start + done;
                    from.read_exact_at(chunk, offset)
                        .map_err(|source| Error::Io {
                            path: path.to_path_buf(),
                            source,
                        })?;
                    h.update(chunk);
                    done += n as u64;
                }
                self.compare(path, key, expected, h.finalize())?;
            }
            Ok(())
        };
        // In file order: the first corrupt storage in the file is the one named.
        on_threads(runs, check_run)
            .into_iter()
            .try_for_each(|r| r.expect("checking does not panic"))
    }

    fn compare(&self, path: &Path, key: &str, expected: u32, found: u32) -> Result<(), Error> {
        if found == expected {
            return Ok(());
        }
        Err(Error::CrcMismatch {
            path: path.to_path_buf(),
            record: format!("{}{key}", self.prefix),
            expected,
            found,
        })
    }

    /// Checks the bytes of storage `key` against its CRC-32, if the archive records one.
    pub(crate) fn check(&self, path: &Path, key: &str, bytes: &[u8]) -> Result<(), Error> {
        match self.by_key.get(key) {
            Some(&expected) => self.compare(path, key, expected, crc32fast::hash(bytes)),
            None => Ok(()),
        }
    }
}

/// Fails with [`Error::CrcMismatch`] when `expected` is recorded (not zero) and is not the
/// CRC-32 of `bytes`, the whole record `record` (a name made only for the error).
pub(crate) fn check_crc(
    path: &Path,
    record: &dyn std::fmt::Display,
    expected: u32,
    bytes: &[u8],
) -> Result<(), Error> {
    let found = crc32fast::hash(bytes);
    if expected == 0 || found == expected {
        return Ok(());
    }
    Err(Error::CrcMismatch {
        path: path.to_path_buf(),
        record: record.to_string(),
        expected,
        found,
    })
}
