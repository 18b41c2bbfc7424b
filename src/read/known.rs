//! Objects of a few well-known classes, read as the plain values they stand for.
//!
//! Training scripts put numpy scalars (`metric = np.float64(0.79)`), numpy arrays, paths and
//! datetimes in their checkpoints. Their classes stay outside the allowlist: nothing of numpy,
//! pathlib or datetime is imported or called. Instead, once the pickle has been read as data,
//! the arguments and state each pickled object recorded are decoded here, by the layout
//! those libraries document for their pickles:
//!
//! | class | pickled as | read as |
//! |---|---|---|
//! | `numpy.float64` and every numpy scalar | `numpy.core.multiarray.scalar(dtype, bytes)` (`numpy._core` in numpy 2) | `Int`, `Float` or `Bool` |
//! | `numpy.ndarray` | `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`, then `BUILD (1, shape, dtype, is_fortran, bytes)` | a tensor of the same dtype and shape |
//! | `pathlib.PosixPath`, `WindowsPath`, `Pure*Path` | `PosixPath(*parts)` | `Str`, the joined path |
//! | `datetime.datetime`, `date`, `time` | the class applied to its packed bytes (and a `datetime.timezone`) | `Str`, as `isoformat()` |
//! | `b''` | `builtins.bytes()` (protocol 2 writes an empty `bytes` so) | `Bytes` |
//!
//! Anything that does not have exactly that layout (an object array, a dtype without a
//! tch kind, a `pytz` time zone) stays an [`Object`], which is never wrong: it is what the
//! file holds.

use tch::{Kind, Tensor};

use crate::dtype::reverse_units;
use crate::value::{Object, Value};

/// The plain value `object` stands for, or the object itself.
/// Whether [`decode`] may read objects of class `module.name` as plain values: such an
/// object is data of a known kind, not an opaque object.
pub(crate) fn is_known(module: &str, name: &str) -> bool {
    matches!(
        (module, name),
        (
            "numpy.core.multiarray" | "numpy._core.multiarray",
            "scalar" | "_reconstruct"
        ) | ("pathlib" | "pathlib._local", _)
            | ("datetime", "datetime" | "date" | "time")
            | ("builtins" | "__builtin__", "bytes" | "bytearray")
    )
}

pub(crate) fn decode(object: Object) -> Value {
    let decoded = match (object.module.as_str(), object.name.as_str()) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => numpy_scalar(&object),
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
            numpy_array(&object)
        }
        ("pathlib" | "pathlib._local", name) => path(name, &object),
        ("datetime", "datetime" | "date" | "time") => datetime(&object),
        ("builtins" | "__builtin__", "bytes")
            if object.args.is_empty() && object.state.is_none() =>
        {
            Some(Value::Bytes(Vec::new()))
        }
        ("builtins" | "__builtin__", "bytearray") if object.state.is_none() => bytearray(&object),
        _ => None,
    };
    decoded.unwrap_or(Value::Object(object))
}

/// A numpy dtype: its kind letter and item size (`f8`), and whether it is big-endian.
struct NumpyDtype {
    code: char,
    size: usize,
    big_endian: bool,
}

/// `numpy.dtype('f8', False, True)` with the `BUILD` state `(3, '<', ...)`.
fn numpy_dtype(v: &Value) -> Option<NumpyDtype> {
    let o = v.as_object()?;
    if o.module != "numpy" || o.name != "dtype" {
        return None;
    }
    let spec = o.args.first()?.as_str()?;
    let mut chars = spec.chars();
    let code = chars.next()?;
    let size: usize = chars.as_str().parse().ok()?;
    let endian = match o.state.as_deref() {
        Some(Value::Tuple(state)) => state.get(1).and_then(Value::as_str).unwrap_or("<"),
        _ => "<",
    };
    Some(NumpyDtype {
        code,
        size,
        big_endian: endian == ">",
    })
}

/// A numpy scalar: `scalar(dtype, bytes)`.
fn numpy_scalar(o: &Object) -> Option<Value> {
    let [dtype, Value::Bytes(raw)] = o.args.as_slice() else {
        return None;
    };
    let dtype = numpy_dtype(dtype)?;
    if raw.len() != dtype.size || dtype.size > 8 {
        return None;
    }
    let mut le = raw.clone();
    if dtype.big_endian {
        le.reverse();
    }
    let unsigned = le
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let bits = 8 * dtype.size as u32;
    Some(match (dtype.code, dtype.size) {
        ('b', 1) => Value::Bool(unsigned != 0),
        ('i', 1 | 2 | 4 | 8) => {
            // Sign-extend from `bits`.
            let shift = 64 - bits;
            Value::Int(((unsigned << shift) as i64) >> shift)
        }
        ('u', 1 | 2 | 4 | 8) => match i64::try_from(unsigned) {
            Ok(i) => Value::Int(i),
            // Beyond i64: pickle's little-endian two's complement, with a sign byte.
            Err(_) => Value::BigInt(le.into_iter().chain([0]).collect()),
        },
        ('f', 2) => Value::Float(f16_to_f64(unsigned as u16)),
        ('f', 4) => Value::Float(f64::from(f32::from_bits(unsigned as u32))),
        ('f', 8) => Value::Float(f64::from_bits(unsigned)),
        _ => return None,
    })
}

/// An IEEE half to f64.
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// A numpy array: `_reconstruct(ndarray, (0,), b'b')` with the state
/// `(version, shape, dtype, is_fortran, raw bytes)`.
fn numpy_array(o: &Object) -> Option<Value> {
    match o.args.first()? {
        Value::Global { module, name } if module == "numpy" && name == "ndarray" => {}
        _ => return None,
    }
    let Some(Value::Tuple(state)) = o.state.as_deref() else {
        return None;
    };
    let [_, Value::Tuple(shape), dtype, Value::Bool(fortran), Value::Bytes(raw)] = state.as_slice()
    else {
        return None;
    };
    let shape: Vec<i64> = shape
        .iter()
        .map(|d| d.as_int().filter(|&d| d >= 0))
        .collect::<Option<_>>()?;
    let dtype = numpy_dtype(dtype)?;
    let (kind, unit) = match (dtype.code, dtype.size) {
        ('b', 1) => (Kind::Bool, 1),
        ('i', 1) => (Kind::Int8, 1),
        ('i', 2) => (Kind::Int16, 2),
        ('i', 4) => (Kind::Int, 4),
        ('i', 8) => (Kind::Int64, 8),
        ('u', 1) => (Kind::Uint8, 1),
        ('f', 2) => (Kind::Half, 2),
        ('f', 4) => (Kind::Float, 4),
        ('f', 8) => (Kind::Double, 8),
        ('c', 8) => (Kind::ComplexFloat, 4),
        ('c', 16) => (Kind::ComplexDouble, 8),
        _ => return None,
    };
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))?;
    if numel.checked_mul(dtype.size as u64)? != raw.len() as u64 {
        return None;
    }
    let mut bytes = raw.clone();
    if dtype.big_endian {
        reverse_units(&mut bytes, unit);
    }
    // A Fortran-ordered array is the C-ordered array of the reversed shape, transposed.
    let stored: Vec<i64> = if *fortran {
        shape.iter().rev().copied().collect()
    } else {
        shape.clone()
    };
    let mut t = Tensor::f_from_data_size(&bytes, &stored, kind).ok()?;
    if *fortran && shape.len() > 1 {
        let dims: Vec<i64> = (0..shape.len() as i64).rev().collect();
        t = t.f_permute(dims.as_slice()).ok()?;
    }
    Some(Value::Tensor(t))
}

/// A `pathlib` path, from its parts, as `str(path)`.
/// `bytearray(...)` as pickle protocols 2 to 4 write it: `bytearray()`, `bytearray(b'..')`
/// (protocol 3 and later), or `bytearray('..', 'latin-1')` (protocol 2, the bytes as the
/// code points of a str). A `bytes` value, as [`Value::Bytes`] holds both.
fn bytearray(o: &Object) -> Option<Value> {
    if !o.kwargs.is_empty() || !o.list_items.is_empty() || !o.dict_items.is_empty() {
        return None;
    }
    let bytes = match o.args.as_slice() {
        [] => Vec::new(),
        [Value::Bytes(b)] => b.clone(),
        [Value::Str(s), Value::Str(encoding)] => match encoding.to_ascii_lowercase().as_str() {
            "latin-1" | "latin1" | "iso-8859-1" => s
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect::<Option<Vec<u8>>>()?,
            "utf-8" | "utf8" => s.as_bytes().to_vec(),
            _ => return None,
        },
        _ => return None,
    };
    Some(Value::Bytes(bytes))
}

fn path(class: &str, o: &Object) -> Option<Value> {
    let windows = match class {
        "PosixPath" | "PurePosixPath" | "Path" | "PurePath" => false,
        "WindowsPath" | "PureWindowsPath" => true,
        _ => return None,
    };
    if o.state
        .as_deref()
        .is_some_and(|s| !matches!(s, Value::None))
    {
        return None;
    }
    let parts: Vec<&str> = o.args.iter().map(Value::as_str).collect::<Option<_>>()?;
    let sep = if windows { '\\' } else { '/' };
    let mut out = String::new();
    for part in parts {
        let absolute = part.starts_with(sep)
            || (windows && (part.starts_with('/') || part.chars().nth(1) == Some(':')));
        if absolute {
            out.clear();
        } else if !out.is_empty() && !out.ends_with(sep) {
            out.push(sep);
        }
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('.');
    }
    Some(Value::Str(out))
}

/// `datetime.datetime`, `date` or `time`, from the packed bytes of its pickle (and a
/// `datetime.timezone`), as `isoformat()`.
fn datetime(o: &Object) -> Option<Value> {
    let (Value::Bytes(b), tz) = (o.args.first()?, o.args.get(1)) else {
        return None;
    };
    if o.args.len() > 2 || o.state.is_some() {
        return None;
    }
    let offset = match tz {
        None | Some(Value::None) => String::new(),
        Some(tz) => utc_offset(tz)?,
    };
    let time = |b: &[u8]| -> Option<String> {
        let (h, m, s) = (b[0] & 0x7f, b[1], b[2]);
        let us = (u32::from(b[3]) << 16) | (u32::from(b[4]) << 8) | u32::from(b[5]);
        if h > 23 || m > 59 || s > 59 || us > 999_999 {
            return None;
        }
        let mut out = format!("{h:02}:{m:02}:{s:02}");
        if us != 0 {
            out.push_str(&format!(".{us:06}"));
        }
        Some(out)
    };
    let date = |b: &[u8]| -> Option<String> {
        let (year, month, day) = (u16::from(b[0]) << 8 | u16::from(b[1]), b[2] & 0x7f, b[3]);
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year == 0 {
            return None;
        }
        Some(format!("{year:04}-{month:02}-{day:02}"))
    };
    let text = match (o.name.as_str(), b.len()) {
        ("datetime", 10) => format!("{}T{}{offset}", date(&b[..4])?, time(&b[4..])?),
        ("date", 4) if tz.is_none() => date(b)?,
        ("time", 6) => format!("{}{offset}", time(b)?),
        _ => return None,
    };
    Some(Value::Str(text))
}

/// A `datetime.timezone(timedelta(...))` as `isoformat()` writes its offset: `+01:00`.
fn utc_offset(tz: &Value) -> Option<String> {
    let tz = tz.as_object()?;
    if tz.module != "datetime" || tz.name != "timezone" {
        return None;
    }
    let delta = tz.args.first()?.as_object()?;
    if delta.module != "datetime" || delta.name != "timedelta" {
        return None;
    }
    let part = |i: usize| delta.args.get(i).map_or(Some(0), Value::as_int);
    let (days, seconds, micros) = (part(0)?, part(1)?, part(2)?);
    let total = days
        .checked_mul(86_400_000_000)?
        .checked_add(seconds.checked_mul(1_000_000)?)?
        .checked_add(micros)?;
    let sign = if total < 0 { '-' } else { '+' };
    let total = total.unsigned_abs();
    let (us, secs) = (total % 1_000_000, total / 1_000_000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = format!("{sign}{h:02}:{m:02}");
    if s != 0 || us != 0 {
        out.push_str(&format!(":{s:02}"));
    }
    if us != 0 {
        out.push_str(&format!(".{us:06}"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(module: &str, name: &str, args: Vec<Value>, state: Option<Value>) -> Object {
        Object {
            module: module.into(),
            name: name.into(),
            args,
            kwargs: Vec::new(),
            state: state.map(Box::new),
            list_items: Vec::new(),
            dict_items: Vec::new(),
            new: false,
        }
    }

    fn dtype(spec: &str, endian: &str) -> Value {
        Value::Object(object(
            "numpy",
            "dtype",
            vec![spec.into(), Value::Bool(false), Value::Bool(true)],
            Some(Value::Tuple(vec![Value::Int(3), endian.into()])),
        ))
    }

    #[test]
    fn bytearrays_are_bytes() {
        let decoded = |module: &str, args: Vec<Value>| match decode(object(
            module,
            "bytearray",
            args,
            None,
        )) {
            Value::Bytes(b) => Some(b),
            _ => None,
        };
        assert_eq!(decoded("builtins", vec![]), Some(vec![]));
        assert_eq!(
            decoded("builtins", vec![Value::Bytes(vec![0, 255])]),
            Some(vec![0, 255])
        );
        // Protocol 2: the bytes as the code points of a str, in latin-1.
        let latin1 = vec![Value::Str("M\u{ff}\u{0}".into()), "latin-1".into()];
        assert_eq!(decoded("__builtin__", latin1), Some(vec![b'M', 255, 0]));
        // Anything else stays an object.
        assert_eq!(decoded("builtins", vec![Value::Int(3)]), None);
        let other = vec![Value::Str("x".into()), "cp1252".into()];
        assert_eq!(decoded("builtins", other), None);
    }

    #[test]
    fn numpy_scalars_are_plain_values() {
        let scalar = |spec: &str, endian: &str, raw: &[u8]| {
            decode(object(
                "numpy._core.multiarray",
                "scalar",
                vec![dtype(spec, endian), Value::Bytes(raw.to_vec())],
                None,
            ))
        };
        assert!(matches!(scalar("f8", "<", &0.5f64.to_le_bytes()), Value::Float(x) if x == 0.5));
        assert!(matches!(scalar("f8", ">", &0.5f64.to_be_bytes()), Value::Float(x) if x == 0.5));
        assert!(matches!(
            scalar("i2", "<", &(-3i16).to_le_bytes()),
            Value::Int(-3)
        ));
        assert!(matches!(scalar("b1", "|", &[1]), Value::Bool(true)));
        assert!(matches!(scalar("f2", "<", &[0x00, 0x3c]), Value::Float(x) if x == 1.0));
        assert!(matches!(
            scalar("u8", "<", &u64::MAX.to_le_bytes()),
            Value::BigInt(_)
        ));
        // A length that does not match the dtype stays an object.
        assert!(matches!(scalar("f8", "<", &[0; 4]), Value::Object(_)));
    }

    #[test]
    fn paths_and_datetimes_are_strings() {
        let p = |name: &str, parts: &[&str]| {
            decode(object(
                "pathlib",
                name,
                parts.iter().map(|&s| Value::from(s)).collect(),
                None,
            ))
        };
        assert_eq!(
            p("PosixPath", &["/", "home", "x"]).as_str(),
            Some("/home/x")
        );
        assert_eq!(p("PosixPath", &["runs", "a"]).as_str(), Some("runs/a"));
        assert_eq!(p("PosixPath", &[]).as_str(), Some("."));
        assert_eq!(
            p("WindowsPath", &["C:\\", "Users", "x"]).as_str(),
            Some("C:\\Users\\x")
        );
        let bytes = vec![0x07, 0xea, 0x0b, 0x1c, 0x0a, 0x3b, 0x00, 0x01, 0xe2, 0x40];
        let delta = Value::Object(object(
            "datetime",
            "timedelta",
            vec![Value::Int(0), Value::Int(3600), Value::Int(0)],
            None,
        ));
        let tz = Value::Object(object("datetime", "timezone", vec![delta], None));
        let dt = decode(object(
            "datetime",
            "datetime",
            vec![Value::Bytes(bytes), tz],
            None,
        ));
        assert_eq!(dt.as_str(), Some("2026-11-28T10:59:00.123456+01:00"));
    }
}
