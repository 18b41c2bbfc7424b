//! Telling a checkpoint's format from its first bytes, never from its name.

use std::path::Path;

use crate::error::Error;

/// The formats this crate reads, detected from a file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// `torch.save`'s zip format (PyTorch 1.6 and later).
    TorchZip,
    /// A TorchScript archive: `torch.jit.save`, or tch's `VarStore::save` (`.ot`) and
    /// `Tensor::save_multi`. Its `data.pkl` is read as any pickle; its code is never run.
    /// Told apart from [`TorchZip`](Format::TorchZip) by its records, once it is parsed.
    TorchScript,
    /// `torch.save`'s legacy format (PyTorch 0.4 to 1.5, or
    /// `_use_new_zipfile_serialization=False`).
    TorchLegacy,
    /// safetensors.
    Safetensors,
    /// A sharded checkpoint's `*.index.json` with its `weight_map`.
    ShardedIndex,
    /// A `torch.distributed.checkpoint` (DCP) directory: `.metadata` and its `.distcp`
    /// files, as FSDP2, DTensor and torchtitan write them. Told from the path (a directory
    /// holding `.metadata`, or that file), not from bytes.
    Distributed,
}

/// torch's legacy magic number 0x1950a86a20f9469cfc6c, as the 10 little-endian bytes of a
/// pickle `LONG1`.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Whether `bytes` begin with the first pickle of a legacy `torch.save` file: the magic
/// number, read opcode by opcode. `PROTO n` (2 to 5), then from protocol 4 an optional
/// `FRAME` with its 8-byte length, then `LONG1` of 10 bytes holding the magic number. A byte
/// prefix would only match protocol 2: `torch.save(obj, f, pickle_protocol=4,
/// _use_new_zipfile_serialization=False)` puts a `FRAME` before the number.
fn is_legacy(bytes: &[u8]) -> bool {
    use crate::read::pickle::opcodes::{FRAME, LONG1, PROTO};
    let [PROTO, protocol @ 2..=5, rest @ ..] = bytes else {
        return false;
    };
    let rest = match rest {
        [FRAME, _, _, _, _, _, _, _, _, after @ ..] if *protocol >= 4 => after,
        _ => rest,
    };
    matches!(rest, [LONG1, 10, magic @ ..] if magic.starts_with(&LEGACY_MAGIC))
}

/// Tells a checkpoint's format from its first bytes.
pub(crate) fn detect(path: &Path, bytes: &[u8]) -> Result<Format, Error> {
    // The path is copied only into an error (a DCP checkpoint detects each of its items).
    let path = || path.to_path_buf();
    if bytes.is_empty() {
        return Err(Error::EmptyFile { path: path() });
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return Ok(Format::TorchZip);
    }
    if bytes.starts_with(b"version https://git-lfs.github.com/spec") {
        return Err(Error::LfsPointer { path: path() });
    }
    if is_legacy(bytes) {
        return Ok(Format::TorchLegacy);
    }
    // safetensors: a little-endian u64 header length, then the JSON header. A real length
    // has zero high bytes, which JSON text (a sharded index) never has.
    if bytes.len() >= 10 && bytes[8] == b'{' && bytes[6] == 0 && bytes[7] == 0 {
        return Ok(Format::Safetensors);
    }
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"{") {
        return Ok(Format::ShardedIndex);
    }
    let found = if bytes[0] == 0x80 && bytes.len() > 1 && bytes[1] <= 5 {
        "a pickle without torch.save's magic number (pickle.dump?)".to_string()
    } else if text.len() >= 5
        && (text[..5].eq_ignore_ascii_case(b"<!doc") || text[..5].eq_ignore_ascii_case(b"<html"))
    {
        "an HTML page (a download that failed?)".to_string()
    } else if bytes.starts_with(b"\x93NUMPY") {
        "a NumPy .npy file".to_string()
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        "a gzip file".to_string()
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        "a tar archive (torch.save before PyTorch 0.4 is not supported)".to_string()
    } else {
        // Never any of the bytes themselves: the path may name any file (`/etc/passwd`), and
        // errors end up in logs.
        describe_unknown(bytes)
    };
    Err(Error::UnknownFormat {
        path: path(),
        found,
    })
}

/// What a file in no known format looks like, without quoting it: text or binary, and its
/// size.
fn describe_unknown(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(512)];
    // A multi-byte character cut at the end of the head is still text.
    let text = match std::str::from_utf8(head) {
        Ok(s) => Some(s),
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    let is_text = text.is_some_and(|s| {
        s.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
    });
    let kind = if is_text { "text" } else { "binary data" };
    format!("{kind} of {} bytes", bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC_LONG1: [u8; 12] = [
        0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
    ];

    fn pickle(protocol: u8, frame: bool) -> Vec<u8> {
        let mut p = vec![0x80, protocol];
        if frame {
            p.push(0x95);
            p.extend_from_slice(&13u64.to_le_bytes());
        }
        p.extend_from_slice(&MAGIC_LONG1);
        p.push(b'.');
        p
    }

    fn format_of(bytes: &[u8]) -> Result<Format, Error> {
        detect(Path::new("x.pth"), bytes)
    }

    #[test]
    fn legacy_files_of_every_protocol_from_2_to_5_are_detected() {
        for protocol in 2..=5 {
            assert_eq!(
                format_of(&pickle(protocol, false)).unwrap(),
                Format::TorchLegacy
            );
        }
        // torch.save's pickles of protocol 4 and 5 begin with a FRAME.
        for protocol in 4..=5 {
            assert_eq!(
                format_of(&pickle(protocol, true)).unwrap(),
                Format::TorchLegacy
            );
        }
    }

    #[test]
    fn other_pickles_are_not_legacy_files() {
        // FRAME exists from protocol 4 only.
        let early_frame = pickle(3, true);
        // Another number, a protocol that does not exist, a pickle cut short.
        let mut other_number = pickle(2, false);
        other_number[4] ^= 1;
        let cut = &pickle(4, true)[..15];
        for bytes in [&early_frame[..], &other_number, cut, b"\x80\x04K\x01."] {
            assert!(
                matches!(format_of(bytes), Err(Error::UnknownFormat { ref found, .. }) if found.contains("pickle")),
                "{bytes:x?}"
            );
        }
        // No pickle protocol 6 exists: not a pickle at all.
        assert!(matches!(
            format_of(&pickle(6, false)),
            Err(Error::UnknownFormat { ref found, .. }) if found.starts_with("binary data")
        ));
    }
}
