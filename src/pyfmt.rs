//! How Python prints the things this crate reports: `repr` of strings and lists,
//! `torch.Size`, dtypes and devices. Messages that PyTorch users compare against their own
//! must match PyTorch's text exactly.

use std::fmt::{self, Write};

use tch::{Device, Kind};

use crate::dtype;

/// Python's `repr(s)` for a `str`: single quotes unless the string holds a single quote and
/// no double quote; backslash escapes for the quote, backslash, `\t`, `\n`, `\r` and other
/// non-printable characters.
pub(crate) fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_printable(c) => out.push(c),
            c => {
                let n = c as u32;
                let _ = if n <= 0xff {
                    write!(out, "\\x{n:02x}")
                } else if n <= 0xffff {
                    write!(out, "\\u{n:04x}")
                } else {
                    write!(out, "\\U{n:08x}")
                };
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `str.isprintable` for the characters state-dict keys hold: control characters,
/// separators other than the ASCII space, and a few format characters are not printable.
fn is_printable(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{a0}' | '\u{ad}' | '\u{2028}' | '\u{2029}' | '\u{feff}'
        )
        || ('\u{2000}'..='\u{200f}').contains(&c)
        || ('\u{202a}'..='\u{202f}').contains(&c)
        || ('\u{2060}'..='\u{206f}').contains(&c)
        || c == '\u{3000}'
        || c == '\u{1680}'
        || c == '\u{205f}')
}

/// Python's `repr` of a list of strings: `['a', 'b']`.
pub(crate) fn repr_str_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::from("[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&repr_str(s.as_ref()));
    }
    out.push(']');
    out
}

/// A shape as PyTorch prints it: `torch.Size([100, 2048])`, `torch.Size([])`.
pub(crate) struct TorchSize<'a>(pub &'a [i64]);

impl fmt::Display for TorchSize<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("torch.Size(")?;
        Shape(self.0).fmt(f)?;
        f.write_str(")")
    }
}

/// A shape as a list: `[100, 2048]`.
pub(crate) struct Shape<'a>(pub &'a [i64]);

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The name PyTorch gives a dtype, without `torch.`: `float32`, `int64`, `bfloat16`, as
/// `str(torch.float32)` prints it less its `torch.` prefix. This crate's messages and the
/// `tch-state-dict` tool print dtypes with it; the names follow PyTorch's, and change only
/// if PyTorch's do.
///
/// ```
/// assert_eq!(tch_state_dict::dtype_name(tch::Kind::BFloat16), "bfloat16");
/// ```
pub fn dtype_name(kind: Kind) -> &'static str {
    dtype::of_kind(kind).name
}

/// A device as PyTorch prints it (`str(torch.device("cuda:0"))`): `cpu`, `cuda:0`, `mps`.
///
/// ```
/// assert_eq!(tch_state_dict::device_name(tch::Device::Cuda(1)), "cuda:1");
/// ```
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".to_string(),
        Device::Vulkan => "vulkan".to_string(),
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `97.8 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python() {
        // Expected values are Python's repr() of the same strings.
        assert_eq!(repr_str("fc.weight"), "'fc.weight'");
        assert_eq!(repr_str("it's"), "\"it's\"");
        assert_eq!(repr_str("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(repr_str("tab\there"), "'tab\\there'");
        assert_eq!(repr_str("back\\slash"), "'back\\\\slash'");
        assert_eq!(repr_str("\u{1}\u{7f}\u{85}"), "'\\x01\\x7f\\x85'");
        assert_eq!(repr_str("poids.é"), "'poids.é'");
        assert_eq!(repr_str("\u{200b}"), "'\\u200b'");
        assert_eq!(repr_str_list::<&str>(&[]), "[]");
        assert_eq!(repr_str_list(&["a", "b"]), "['a', 'b']");
    }

    #[test]
    fn sizes_print_like_torch() {
        assert_eq!(
            TorchSize(&[100, 2048]).to_string(),
            "torch.Size([100, 2048])"
        );
        assert_eq!(TorchSize(&[]).to_string(), "torch.Size([])");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
