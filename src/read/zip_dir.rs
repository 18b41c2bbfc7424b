//! A zip archive's central directory, read as `torch.load` (miniz) reads it: the last end
//! record, the zip64 records where the locator precedes it, every offset from byte 0, the
//! directory's headers in order, and a record's data found through its local header. Only
//! what a torch.save file needs is read; anything else is refused as a malformed archive, in
//! the zip crate's error type, which [`Error::Zip`](crate::Error::Zip) carries.
//!
//! # Design note: why the crate reads its own zip directories
//!
//! A DCP `.distcp` file holds one torch.save zip per tensor chunk, so opening the bench's
//! 1 GiB 2-rank checkpoint (4096 chunks) reads 4096 directories of seven records each.
//! Profiled with `perf record --call-graph dwarf` over 10 opens (`LazyStateDict::load_key(dir,
//! "model")`, samples sorted by phase from `perf script`), the zip crate took 29% of the
//! process's CPU time, 49 ms of CPU an open across the two threads, when an open took 67 to
//! 75 ms on that machine: its end-record search copied the last 64 KiB
//! of each item (the whole item is 256 KiB) and faulted those pages in, and it built a
//! `ZipFileData` with an owned name and parsed extra fields for every record, then an index
//! of names. This reader reads 22 bytes for the end record of a file that has no comment
//! (torch.save writes none), 76 for the zip64 records, and the directory itself, and keeps
//! each record as 40 bytes plus its name in one buffer. The measurement after the change is
//! in `src/read/dcp.rs`'s design note.
//!
//! Where readers differ, this one follows miniz, which `torch.load` uses:
//! - The archive starts at byte 0 (miniz takes the directory's offsets from the start of the
//!   file). The zip crate, left to detect the start, guessed it from the end record's
//!   position less the directory's size, which overlooks the zip64 records (76 bytes) that
//!   torch.save writes between the two, and read a valid file's directory 76 bytes late.
//! - A name is its bytes, compared as bytes: miniz never decodes names, and a storage's key
//!   from the pickle is UTF-8. The zip crate decoded names without the UTF-8 flag as CP437.
//! - The end record is the last one within the 64 KiB a comment can take.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io;

use zip::result::ZipError;

/// The bytes an archive is read from: a file, by positional reads (the memory map of a file
/// is kept for tensors: a read through it maps and makes resident the 64 KiB around it), or
/// bytes in memory.
#[derive(Clone, Copy)]
pub(crate) enum Bytes<'a> {
    /// The `len` bytes of `file` from `base` (a whole file, or a DCP item in its `.distcp`
    /// file), with those of them already read in `held`.
    File {
        file: &'a File,
        base: u64,
        len: u64,
        held: Held<'a>,
    },
    Memory(&'a [u8]),
}

/// What a reader has already read of a file's window: its first `head.len()` bytes and its
/// last `tail.len()` bytes. A read within one of them is a copy, not a system call.
#[derive(Clone, Copy, Default)]
pub(crate) struct Held<'a> {
    pub(crate) head: &'a [u8],
    pub(crate) tail: &'a [u8],
}

/// One record of the central directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Where its name lies in [`Directory::names`].
    name: (usize, usize),
    flags: u16,
    /// The compression method: 0 stored, 8 deflated.
    pub(crate) method: u16,
    pub(crate) crc: u32,
    pub(crate) compressed: u64,
    pub(crate) size: u64,
    /// Where its local header starts, from byte 0.
    header: u64,
}

/// A zip archive's central directory, in the directory's order.
pub(crate) struct Directory {
    names: Vec<u8>,
    entries: Vec<Entry>,
}

const END: &[u8; 4] = b"PK\x05\x06";
const END_LEN: u64 = 22;
const ZIP64_LOCATOR: &[u8; 4] = b"PK\x06\x07";
const ZIP64_LOCATOR_LEN: u64 = 20;
const ZIP64_END: &[u8; 4] = b"PK\x06\x06";
const ZIP64_END_LEN: usize = 56;
const HEADER: &[u8; 4] = b"PK\x01\x02";
const HEADER_LEN: usize = 46;
const LOCAL: &[u8; 4] = b"PK\x03\x04";
const LOCAL_LEN: usize = 30;
/// The longest comment an end record can declare.
const MAX_COMMENT: u64 = u16::MAX as u64;
/// How much of a file's directory one read takes.
const CHUNK: usize = 64 << 10;

fn invalid(reason: impl Into<Cow<'static, str>>) -> ZipError {
    ZipError::InvalidArchive(reason.into())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> Bytes<'a> {
    /// A whole file, nothing of it read yet.
    pub(crate) fn file(file: &'a File, len: u64) -> Self {
        Bytes::File {
            file,
            base: 0,
            len,
            held: Held::default(),
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Bytes::File { len, .. } => *len,
            Bytes::Memory(bytes) => bytes.len() as u64,
        }
    }

    /// Fills `buf` from `pos`: `UnexpectedEof` where the range runs past the end, or where
    /// the file ends first (it was truncated since it was opened).
    pub(crate) fn read_exact(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.end_of(pos, buf.len()).is_none() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match (self.held(pos, buf.len()), *self) {
            (Some(held), _) => {
                buf.copy_from_slice(held);
                Ok(())
            }
            (None, Bytes::File { file, base, .. }) => {
                super::source::read_exact_at(file, buf, base + pos)
            }
            (None, Bytes::Memory(_)) => unreachable!("memory holds every range within it"),
        }
    }

    /// The bytes `pos..pos + n` where they are already in memory (the archive in memory, or
    /// within a held end of a file): no copy, no read.
    pub(crate) fn held(&self, pos: u64, n: usize) -> Option<&'a [u8]> {
        let end = self.end_of(pos, n)?;
        match *self {
            Bytes::File { len, held, .. } => {
                let tail_at = len - held.tail.len() as u64;
                if end <= held.head.len() as u64 {
                    Some(&held.head[pos as usize..end as usize])
                } else if pos >= tail_at {
                    let from = (pos - tail_at) as usize;
                    Some(&held.tail[from..from + n])
                } else {
                    None
                }
            }
            Bytes::Memory(bytes) => Some(&bytes[pos as usize..end as usize]),
        }
    }

    /// Where `n` bytes from `pos` end, when they lie within these bytes.
    fn end_of(&self, pos: u64, n: usize) -> Option<u64> {
        pos.checked_add(n as u64).filter(|&end| end <= self.len())
    }

    /// `len` bytes from `pos`, as [`read_exact`](Self::read_exact) reads them.
    pub(crate) fn read_vec(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact(pos, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from `pos`; a range past the end is a truncated archive.
    fn read_into(&self, pos: u64, buf: &mut [u8]) -> Result<(), ZipError> {
        self.read_exact(pos, buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => invalid("a record runs past the end of the file"),
            _ => ZipError::Io(e),
        })
    }

    fn read<const N: usize>(&self, pos: u64) -> Result<[u8; N], ZipError> {
        let mut buf = [0u8; N];
        self.read_into(pos, &mut buf)?;
        Ok(buf)
    }
}

/// The central directory's place: where it starts, its length and its number of records.
struct Place {
    start: u64,
    len: u64,
    entries: u64,
}

/// Finds the end record (and the zip64 end record where a locator precedes it).
fn place(bytes: Bytes<'_>) -> Result<Place, ZipError> {
    let len = bytes.len();
    if len < END_LEN {
        return Err(invalid("too short for a zip archive"));
    }
    // torch.save writes no comment: the end record is the file's last 22 bytes.
    let last: [u8; END_LEN as usize] = bytes.read(len - END_LEN)?;
    let (at, end) = if &last[..4] == END && u16_at(&last, 20) == 0 {
        (len - END_LEN, last)
    } else {
        let from = len.saturating_sub(END_LEN + MAX_COMMENT);
        let mut tail = vec![0u8; (len - from) as usize];
        bytes.read_into(from, &mut tail)?;
        let found = (0..=tail.len() - END_LEN as usize)
            .rev()
            .find(|&i| &tail[i..i + 4] == END)
            .ok_or_else(|| invalid("no end of central directory record"))?;
        let end: [u8; END_LEN as usize] = tail[found..found + END_LEN as usize]
            .try_into()
            .expect("22 bytes");
        (from + found as u64, end)
    };
    if at >= ZIP64_LOCATOR_LEN {
        let locator: [u8; ZIP64_LOCATOR_LEN as usize] = bytes.read(at - ZIP64_LOCATOR_LEN)?;
        if &locator[..4] == ZIP64_LOCATOR {
            if u32_at(&locator, 4) != 0 || u32_at(&locator, 16) > 1 {
                return Err(ZipError::UnsupportedArchive("a multi-disk archive"));
            }
            let record_at = u64_at(&locator, 8);
            if record_at > at - ZIP64_LOCATOR_LEN {
                return Err(invalid("the zip64 end record lies after its locator"));
            }
            let record: [u8; ZIP64_END_LEN] = bytes.read(record_at)?;
            if &record[..4] != ZIP64_END {
                return Err(invalid("no zip64 end record where its locator points"));
            }
            if u32_at(&record, 16) != 0 || u32_at(&record, 20) != 0 {
                return Err(ZipError::UnsupportedArchive("a multi-disk archive"));
            }
            if u64_at(&record, 24) != u64_at(&record, 32) {
                return Err(ZipError::UnsupportedArchive("a multi-disk archive"));
            }
            return checked(
                Place {
                    start: u64_at(&record, 48),
                    len: u64_at(&record, 40),
                    entries: u64_at(&record, 32),
                },
                record_at,
            );
        }
    }
    let (disk, directory_disk) = (u16_at(&end, 4), u16_at(&end, 6));
    if disk != 0 || directory_disk != 0 || u16_at(&end, 8) != u16_at(&end, 10) {
        return Err(ZipError::UnsupportedArchive("a multi-disk archive"));
    }
    checked(
        Place {
            start: u64::from(u32_at(&end, 16)),
            len: u64::from(u32_at(&end, 12)),
            entries: u64::from(u16_at(&end, 10)),
        },
        at,
    )
}

/// The place, once the directory is known to end before `limit` (where the end records
/// start) and to have room for its records.
fn checked(place: Place, limit: u64) -> Result<Place, ZipError> {
    if place
        .start
        .checked_add(place.len)
        .is_none_or(|end| end > limit)
    {
        return Err(invalid("the central directory runs past its end record"));
    }
    if place.entries > place.len / HEADER_LEN as u64 {
        return Err(invalid(
            "the central directory is too short for the records it declares",
        ));
    }
    Ok(place)
}

/// The directory's bytes: a slice of memory, or a file read a chunk at a time.
enum Window<'a> {
    /// The directory's bytes, from `at`.
    Memory { bytes: &'a [u8], at: u64 },
    File {
        bytes: Bytes<'a>,
        buf: Vec<u8>,
        /// Where `buf` starts, from byte 0.
        at: u64,
    },
}

impl Window<'_> {
    /// `n` bytes at `pos`, which the caller keeps within the directory (`start..end`).
    fn get(&mut self, pos: u64, n: usize, end: u64) -> Result<&[u8], ZipError> {
        if pos.checked_add(n as u64).is_none_or(|e| e > end) {
            return Err(invalid(
                "a central directory record runs past the directory's end",
            ));
        }
        match self {
            Window::Memory { bytes, at } => {
                let from = (pos - *at) as usize;
                Ok(&bytes[from..from + n])
            }
            Window::File { bytes, buf, at } => {
                let held = pos >= *at && pos + n as u64 <= *at + buf.len() as u64;
                if !held {
                    let len = (n.max(CHUNK) as u64).min(end - pos) as usize;
                    buf.resize(len, 0);
                    bytes.read_into(pos, buf)?;
                    *at = pos;
                }
                let from = (pos - *at) as usize;
                Ok(&buf[from..from + n])
            }
        }
    }
}

impl Directory {
    /// Reads the central directory of the archive in `bytes`.
    pub(crate) fn read(bytes: Bytes<'_>) -> Result<Directory, ZipError> {
        let place = place(bytes)?;
        let end = place.start + place.len;
        // A directory already in memory (a DCP item's, in its held tail) is read in place.
        let mut window = match bytes.held(place.start, place.len as usize) {
            Some(held) => Window::Memory {
                bytes: held,
                at: place.start,
            },
            None => Window::File {
                bytes,
                buf: Vec::new(),
                at: 0,
            },
        };
        // At most one record per 46 bytes of the directory (checked above), which lies
        // within the file: the vector grows only with what the file holds.
        let mut entries = Vec::with_capacity(place.entries.min(1 << 12) as usize);
        // The names lie in what the directory has beyond its records' fixed parts (and so
        // may its extra fields and comments): room for at most 4 KiB of them at first.
        let names_room = place.len.saturating_sub(HEADER_LEN as u64 * place.entries);
        let mut names = Vec::with_capacity(names_room.min(4 << 10) as usize);
        let mut pos = place.start;
        for _ in 0..place.entries {
            let header: [u8; HEADER_LEN] = window
                .get(pos, HEADER_LEN, end)?
                .try_into()
                .expect("46 bytes");
            if &header[..4] != HEADER {
                return Err(invalid("a central directory record has a bad signature"));
            }
            let name_len = usize::from(u16_at(&header, 28));
            let extra_len = usize::from(u16_at(&header, 30));
            let comment_len = usize::from(u16_at(&header, 32));
            let name_at = pos + HEADER_LEN as u64;
            let start = names.len();
            names.extend_from_slice(window.get(name_at, name_len, end)?);
            let mut entry = Entry {
                name: (start, name_len),
                flags: u16_at(&header, 8),
                method: u16_at(&header, 10),
                crc: u32_at(&header, 16),
                compressed: u64::from(u32_at(&header, 20)),
                size: u64::from(u32_at(&header, 24)),
                header: u64::from(u32_at(&header, 42)),
            };
            let extra = window.get(name_at + name_len as u64, extra_len, end)?;
            zip64_extra(&mut entry, extra)?;
            entries.push(entry);
            pos = name_at + (name_len + extra_len + comment_len) as u64;
        }
        if pos > end {
            return Err(invalid(
                "a central directory record runs past the directory's end",
            ));
        }
        Ok(Directory { names, entries })
    }

    /// The records, each with its name, in the directory's order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.entries.iter().map(|e| (self.name(e), e))
    }

    pub(crate) fn name(&self, entry: &Entry) -> &[u8] {
        &self.names[entry.name.0..entry.name.0 + entry.name.1]
    }

    /// The first name in the directory's order that an earlier record already has.
    pub(crate) fn first_duplicate(&self) -> Option<&[u8]> {
        // A DCP item's zip has seven records, and 4096 items are opened at once: comparing
        // each name with those before it is cheaper than a hash set.
        if self.entries.len() <= 16 {
            let name = |i: usize| self.name(&self.entries[i]);
            return (1..self.entries.len())
                .find(|&i| (0..i).any(|j| name(j) == name(i)))
                .map(name);
        }
        let mut seen = HashSet::with_capacity(self.entries.len());
        self.entries()
            .map(|(name, _)| name)
            .find(|n| !seen.insert(*n))
    }
}

/// Applies a record's zip64 extra field: the 64-bit sizes and offset that the header marks
/// with all ones, in the order the format gives them. A mark without the field is a
/// malformed record, not a size of 4 GiB less one byte.
fn zip64_extra(entry: &mut Entry, mut extra: &[u8]) -> Result<(), ZipError> {
    while extra.len() >= 4 {
        let (id, len) = (u16_at(extra, 0), usize::from(u16_at(extra, 2)));
        let Some(field) = extra.get(4..4 + len) else {
            break;
        };
        if id == 1 {
            let mut field = field;
            let mut next = |what: &'static str| -> Result<u64, ZipError> {
                let Some((value, rest)) = field.split_first_chunk::<8>() else {
                    return Err(invalid(what));
                };
                field = rest;
                Ok(u64::from_le_bytes(*value))
            };
            let short = "a zip64 extra field is shorter than its record needs";
            if entry.size == u64::from(u32::MAX) {
                entry.size = next(short)?;
            }
            if entry.compressed == u64::from(u32::MAX) {
                entry.compressed = next(short)?;
            }
            if entry.header == u64::from(u32::MAX) {
                entry.header = next(short)?;
            }
            return Ok(());
        }
        extra = &extra[4 + len..];
    }
    let marked = u64::from(u32::MAX);
    if entry.size == marked || entry.compressed == marked || entry.header == marked {
        return Err(invalid(
            "a record marks a zip64 field but has no zip64 extra field",
        ));
    }
    Ok(())
}

impl Entry {
    /// Whether the record is encrypted (flag bit 0).
    pub(crate) fn encrypted(&self) -> bool {
        self.flags & 1 != 0
    }

    /// Where the record's data starts: past its local header, whose name and extra field
    /// may differ in length from the directory's.
    pub(crate) fn data_start(&self, bytes: Bytes<'_>) -> Result<u64, ZipError> {
        let local: [u8; LOCAL_LEN] = bytes.read(self.header)?;
        if &local[..4] != LOCAL {
            return Err(invalid("a local header has a bad signature"));
        }
        let skip = LOCAL_LEN as u64 + u64::from(u16_at(&local, 26)) + u64::from(u16_at(&local, 28));
        Ok(self.header + skip)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use zip::read::{ArchiveOffset, Config};
    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipArchive, ZipWriter};

    use super::*;

    /// An archive of torch.save's shape, written by the zip crate: stored and deflated
    /// records, one aligned by an extra field, zip64 records when `large`, and a comment.
    fn archive(large: bool, comment: &str) -> Vec<u8> {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        let stored = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .large_file(large);
        let records: [(&str, &[u8], SimpleFileOptions); 4] = [
            ("archive/data.pkl", b"\x80\x02}q\x00.", stored),
            ("archive/byteorder", b"little", stored),
            ("archive/data/0", &[7u8; 300], stored.with_alignment(64)),
            (
                "archive/data/1",
                &[1u8; 4000],
                stored.compression_method(CompressionMethod::Deflated),
            ),
        ];
        for (name, bytes, options) in records {
            zip.start_file(name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.set_comment(comment.to_string()).unwrap();
        zip.finish().unwrap().into_inner()
    }

    /// The same archive with zip64 end records before its end record, as torch.save
    /// writes them, and the end record's fields all ones.
    fn with_zip64_end(mut bytes: Vec<u8>, comment: &str) -> Vec<u8> {
        let at = bytes.len() - 22 - comment.len();
        let end = bytes.split_off(at);
        let mut record = b"PK\x06\x06".to_vec();
        record.extend(44u64.to_le_bytes());
        record.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let entries = u64::from(u16_at(&end, 10));
        record.extend(entries.to_le_bytes());
        record.extend(entries.to_le_bytes());
        record.extend(u64::from(u32_at(&end, 12)).to_le_bytes());
        record.extend(u64::from(u32_at(&end, 16)).to_le_bytes());
        bytes.extend(&record);
        bytes.extend(b"PK\x06\x07\0\0\0\0");
        bytes.extend((at as u64).to_le_bytes());
        bytes.extend(1u32.to_le_bytes());
        bytes.extend(&end[..8]);
        bytes.extend([0xff; 12]);
        bytes.extend(&end[20..]);
        bytes
    }

    /// A record as read: name, method, CRC-32, compressed and full size, data start.
    type Read = (Vec<u8>, u16, u32, u64, u64, u64);

    /// What the zip crate reads of each record: name, method, CRC-32, sizes, data start.
    fn by_zip_crate(bytes: &[u8]) -> Option<Vec<Read>> {
        let config = Config {
            archive_offset: ArchiveOffset::Known(0),
        };
        let mut zip = ZipArchive::with_config(config, Cursor::new(bytes)).ok()?;
        (0..zip.len())
            .map(|i| {
                let f = zip.by_index_raw(i).ok()?;
                let method = match f.compression() {
                    CompressionMethod::Stored => 0,
                    CompressionMethod::Deflated => 8,
                    _ => 99,
                };
                let name = f.name_raw().to_vec();
                let start = f.data_start()?;
                Some((
                    name,
                    method,
                    f.crc32(),
                    f.compressed_size(),
                    f.size(),
                    start,
                ))
            })
            .collect()
    }

    fn by_this(bytes: &[u8]) -> Result<Vec<Read>, ZipError> {
        let b = Bytes::Memory(bytes);
        let dir = Directory::read(b)?;
        if dir.first_duplicate().is_some() {
            // Refused by the caller; the zip crate keeps one of the two.
            return Err(invalid("a duplicate"));
        }
        dir.entries()
            .map(|(name, e)| {
                let start = e.data_start(b)?;
                // The zip crate names only the methods it was built for.
                let method = if matches!(e.method, 0 | 8) {
                    e.method
                } else {
                    99
                };
                Ok((name.to_vec(), method, e.crc, e.compressed, e.size, start))
            })
            .collect()
    }

    #[test]
    fn reads_what_the_zip_crate_reads() {
        for large in [false, true] {
            for comment in ["", "a comment, so the end record is searched for"] {
                let bytes = archive(large, comment);
                let bytes = if large {
                    with_zip64_end(bytes, comment)
                } else {
                    bytes
                };
                let ours = by_this(&bytes).unwrap();
                assert_eq!(ours.len(), 4);
                assert_eq!(Some(ours), by_zip_crate(&bytes), "large {large}");
            }
        }
    }

    #[test]
    fn reads_a_file_as_it_reads_memory() {
        let bytes = archive(true, "");
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        let from_file = Bytes::file(&file, bytes.len() as u64);
        let dir = Directory::read(from_file).unwrap();
        let memory = Directory::read(Bytes::Memory(&bytes)).unwrap();
        assert_eq!(dir.entries, memory.entries);
        assert_eq!(dir.names, memory.names);
        // The archive as a window of a larger file (a DCP item), some of its ends held:
        // every read, within what is held, across its edge or past it, is the file's.
        let mut outer = tempfile::tempfile().unwrap();
        outer.write_all(&[0xaa; 100]).unwrap();
        outer.write_all(&bytes).unwrap();
        outer.write_all(&[0xbb; 100]).unwrap();
        let len = bytes.len() as u64;
        for (head, tail) in [(0, 0), (30, 40), (200, 300), (bytes.len(), 0)] {
            let held = Held {
                head: &bytes[..head],
                tail: &bytes[bytes.len() - tail..],
            };
            let window = Bytes::File {
                file: &outer,
                base: 100,
                len,
                held,
            };
            let dir = Directory::read(window).unwrap();
            assert_eq!(dir.entries, memory.entries);
            for (pos, n) in [
                (0, 10),
                (25, 10),
                (190, 20),
                (len - 310, 20),
                (len - 35, 35),
            ] {
                let read = window.read_vec(pos, n).unwrap();
                assert_eq!(
                    read,
                    &bytes[pos as usize..pos as usize + n],
                    "{head} {tail}"
                );
            }
            let past = window.read_vec(len - 5, 10).unwrap_err();
            assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
        }
        // A directory that lies in the held tail is read from it, not from the file: over a
        // file of other bytes, it still reads, and `held` gives the archive's own bytes
        // only within what is held.
        let mut other = tempfile::tempfile().unwrap();
        other.write_all(&vec![0xcc; bytes.len() + 200]).unwrap();
        let dir_at = len - memory.entries.len() as u64 * HEADER_LEN as u64 - 200;
        let tail = (len - dir_at) as usize;
        let window = Bytes::File {
            file: &other,
            base: 100,
            len,
            held: Held {
                head: &bytes[..30],
                tail: &bytes[bytes.len() - tail..],
            },
        };
        let dir = Directory::read(window).unwrap();
        assert_eq!((&dir.entries, &dir.names), (&memory.entries, &memory.names));
        assert_eq!(window.held(2, 28), Some(&bytes[2..30]));
        assert_eq!(window.held(len - 10, 10), Some(&bytes[bytes.len() - 10..]));
        assert_eq!(window.held(25, 10), None);
        assert_eq!(window.held(len - 5, 10), None);
        // A file shorter than its length as it was opened: a truncated archive.
        let short = Bytes::file(&file, bytes.len() as u64 + 100);
        assert!(matches!(
            Directory::read(short),
            Err(ZipError::InvalidArchive(_))
        ));
    }

    /// Every single byte of the end records and the directory changed, one at a time, four
    /// ways: where both readers read the archive they agree on every record, and this reader
    /// reads no archive the zip crate refuses except through the two fields it does not
    /// check, as miniz does not: the end record's comment length (a comment may run short)
    /// and the zip64 end record's own length. Where it refuses what the zip crate reads, it
    /// is stricter as miniz is: a record running past the directory's declared size, a
    /// directory size that does not hold its records, a zip64 mark without its field.
    #[test]
    fn a_changed_byte_reads_as_the_zip_crate_reads_it_or_is_refused() {
        for large in [false, true] {
            let good = archive(large, "");
            let good = if large {
                with_zip64_end(good, "")
            } else {
                good
            };
            let len = good.len();
            let (dir_start, unchecked) = if large {
                let record = u64_at(&good[len - 42..], 8) as usize;
                let size_field = record + 4..record + 12;
                (u64_at(&good[record..], 48) as usize, size_field)
            } else {
                (u32_at(&good[len - 22..], 16) as usize, 0..0)
            };
            let comment_len = len - 2..len;
            let mut both = 0;
            for at in dir_start..len {
                for value in [0u8, 0xff, good[at] ^ 1, good[at].wrapping_add(64)] {
                    let mut bytes = good.clone();
                    bytes[at] = value;
                    match (by_this(&bytes), by_zip_crate(&bytes)) {
                        (Ok(ours), Some(theirs)) => {
                            both += 1;
                            assert_eq!(ours, theirs, "byte {at} set to {value}");
                        }
                        (Ok(_), None) => assert!(
                            comment_len.contains(&at) || unchecked.contains(&at),
                            "byte {at} set to {value}: read here, refused by the zip crate"
                        ),
                        _ => {}
                    }
                }
            }
            assert!(both > 100, "{both}");
        }
    }

    /// Each way a directory is refused, from one archive changed at one place.
    #[test]
    fn each_malformed_directory_is_refused() {
        let good = with_zip64_end(archive(false, ""), "");
        let len = good.len();
        let record = u64_at(&good[len - 42..], 8) as usize;
        let dir = u64_at(&good[record..], 48) as usize;
        let dir_len = u64_at(&good[record..], 40) as usize;
        let set = |at: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            b
        };
        let invalid = |bytes: &[u8], why: &str| match Directory::read(Bytes::Memory(bytes))
            .and_then(|d| {
                d.entries()
                    .try_for_each(|(_, e)| e.data_start(Bytes::Memory(bytes)).map(drop))
            }) {
            Err(ZipError::InvalidArchive(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{why}: {other:?}"),
        };
        invalid(&good[..10], "too short");
        invalid(&good[..len - 1], "no end of central directory");
        invalid(&set(record, b"PK\x06\x05"), "no zip64 end record");
        invalid(
            &set(len - 42 + 8, &(len as u64).to_le_bytes()),
            "after its locator",
        );
        invalid(
            &set(record + 40, &(len as u64).to_le_bytes()),
            "runs past its end record",
        );
        let hundred = [100u64.to_le_bytes(), 100u64.to_le_bytes()].concat();
        invalid(&set(record + 24, &hundred), "too short for the records");
        invalid(&set(dir, b"PK\x01\x03"), "bad signature");
        // The first record's comment length runs it past the directory's end.
        invalid(
            &set(dir + 32, &u16::MAX.to_le_bytes()),
            "past the directory's end",
        );
        // Its compressed size marked zip64, without the field.
        invalid(
            &set(dir + 20, &u32::MAX.to_le_bytes()),
            "no zip64 extra field",
        );
        // Its local header moved to where no local header is.
        invalid(
            &set(dir + 42, &1u32.to_le_bytes()),
            "local header has a bad signature",
        );
        invalid(
            &set(dir + 42, &(len as u32 - 10).to_le_bytes()),
            "past the end of the file",
        );
        assert!(dir_len > 0);
        // On another disk: the locator's, the zip64 record's, or the count on this disk.
        for (at, field) in [(len - 42 + 4, 4), (record + 16, 4), (record + 24, 8)] {
            let bytes = set(at, &1u64.to_le_bytes()[..field]);
            match Directory::read(Bytes::Memory(&bytes)) {
                Err(ZipError::UnsupportedArchive(_)) => {}
                other => panic!("{:?}", other.map(|d| d.entries.len())),
            }
        }
    }

    /// Names are bytes: two names that are not UTF-8 and differ are two records (decoded
    /// lossily they would be one name twice), and the same bytes twice are a duplicate.
    #[test]
    fn names_are_compared_as_bytes() {
        let good = archive(false, "");
        let dir = u32_at(&good[good.len() - 22..], 16) as usize;
        let find = |name: &[u8]| {
            dir + good[dir..]
                .windows(name.len())
                .position(|w| w == name)
                .unwrap()
        };
        let (third, fourth) = (find(b"archive/data/0"), find(b"archive/data/1"));
        let named = |a: u8, b: u8| {
            let mut bytes = good.clone();
            bytes[third + 13] = a;
            bytes[fourth + 13] = b;
            Directory::read(Bytes::Memory(&bytes)).unwrap()
        };
        let two = named(0xfe, 0xff);
        assert_eq!(two.first_duplicate(), None);
        let names: Vec<&[u8]> = two.entries().map(|(n, _)| n).collect();
        assert_eq!(names[2], b"archive/data/\xfe");
        assert_eq!(
            named(0xff, 0xff).first_duplicate(),
            Some(&b"archive/data/\xff"[..])
        );
    }

    /// Above 16 records the duplicate is found by a hash set: the same answer.
    #[test]
    fn a_duplicate_among_many_records_is_the_first_in_order() {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..20 {
            zip.start_file(format!("archive/data/{i:02}"), SimpleFileOptions::default())
                .unwrap();
            zip.write_all(b"x").unwrap();
        }
        let good = zip.finish().unwrap().into_inner();
        assert_eq!(
            Directory::read(Bytes::Memory(&good))
                .unwrap()
                .first_duplicate(),
            None
        );
        let dir = u32_at(&good[good.len() - 22..], 16) as usize;
        let mut bytes = good.clone();
        for (from, to) in [
            (b"archive/data/18", b"archive/data/03"),
            (b"archive/data/12", b"archive/data/05"),
        ] {
            let at = dir + bytes[dir..].windows(15).position(|w| w == from).unwrap();
            bytes[at..at + 15].copy_from_slice(to);
        }
        let d = Directory::read(Bytes::Memory(&bytes)).unwrap();
        assert_eq!(d.first_duplicate(), Some(&b"archive/data/05"[..]));
    }
}
