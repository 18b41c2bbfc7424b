//! `Display` for [`Value`] and [`Object`]: Python's `repr`, with two exceptions that keep a
//! printed checkpoint short. A tensor prints its shape and dtype, never its values
//! (`tensor(size=[2, 3], dtype=torch.float32)`), and a global prints its qualified name.

use std::fmt::{self, Write};

use super::{Dict, Object, Value};
use crate::pyfmt;

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(b) => f.write_str(&bigint_decimal(b)),
            Value::Float(x) => f.write_str(&float_repr(*x)),
            Value::Str(s) => f.write_str(&pyfmt::repr_str(s)),
            Value::Bytes(b) => f.write_str(&bytes_repr(b)),
            Value::List(v) => seq(f, "[", v, "]"),
            Value::Tuple(v) if v.len() == 1 => write!(f, "({},)", v[0]),
            Value::Tuple(v) => seq(f, "(", v, ")"),
            Value::Set(v) if v.is_empty() => f.write_str("set()"),
            Value::Set(v) => seq(f, "{", v, "}"),
            Value::Dict(d) if d.ordered && d.items.is_empty() => f.write_str("OrderedDict()"),
            Value::Dict(d) if d.ordered => {
                f.write_str("OrderedDict(")?;
                dict(f, d)?;
                f.write_str(")")
            }
            Value::Dict(d) => dict(f, d),
            Value::Tensor(t) => write!(
                f,
                "tensor(size={}, dtype=torch.{})",
                pyfmt::Shape(&t.size()),
                t.f_kind().map(pyfmt::dtype_name).unwrap_or("undefined")
            ),
            Value::Device(d) => match d.split_once(':') {
                Some((kind, index)) => write!(f, "device(type='{kind}', index={index})"),
                None => write!(f, "device(type='{d}')"),
            },
            Value::Dtype(k) => write!(f, "torch.{}", pyfmt::dtype_name(*k)),
            Value::Object(o) => o.fmt(f),
            Value::Global { module, name } => write!(f, "{module}.{name}"),
            Value::Unreadable { dtype, shape } => write!(
                f,
                "tensor(size={}, dtype=torch.{dtype}, unreadable)",
                pyfmt::Shape(shape)
            ),
            Value::Recursive { type_name, .. } => f.write_str(match *type_name {
                "list" => "[...]",
                "dict" => "{...}",
                _ => "...",
            }),
        }
    }
}

/// `module.Name(args..., key=value..., attribute=value...)`: the positional arguments, the
/// keyword arguments, then the attributes of the state; a `dict` or `list` subclass's items
/// first, as its constructor would take them. A state that is not a dict of attributes
/// prints as `state=...`.
impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}(", self.module, self.name)?;
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if !std::mem::take(&mut first) {
                f.write_str(", ")?;
            }
            Ok::<(), fmt::Error>(())
        };
        if !self.dict_items.is_empty() {
            sep(f)?;
            items(f, &self.dict_items)?;
        }
        if !self.list_items.is_empty() {
            sep(f)?;
            seq(f, "[", &self.list_items, "]")?;
        }
        for a in &self.args {
            sep(f)?;
            write!(f, "{a}")?;
        }
        for (k, v) in &self.kwargs {
            sep(f)?;
            match k.as_str() {
                Some(name) => write!(f, "{name}={v}")?,
                None => write!(f, "{k}={v}")?,
            }
        }
        let attrs: Vec<(&str, &Value)> = self.attrs().collect();
        match self.state.as_deref() {
            Some(state) if attrs.is_empty() && !is_empty_attrs(state) => {
                sep(f)?;
                write!(f, "state={state}")?;
            }
            _ => {
                for (k, v) in attrs {
                    sep(f)?;
                    write!(f, "{k}={v}")?;
                }
            }
        }
        f.write_str(")")
    }
}

/// Whether a state is an empty `__dict__` (or `(None, {})`), which prints as nothing.
fn is_empty_attrs(state: &Value) -> bool {
    match state {
        Value::None => true,
        Value::Dict(d) => d.items.is_empty(),
        Value::Tuple(v) if v.len() == 2 => v
            .iter()
            .all(|x| matches!(x, Value::None) || x.as_dict().is_some_and(|d| d.items.is_empty())),
        _ => false,
    }
}

fn seq(f: &mut fmt::Formatter<'_>, open: &str, items: &[Value], close: &str) -> fmt::Result {
    f.write_str(open)?;
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{v}")?;
    }
    f.write_str(close)
}

fn dict(f: &mut fmt::Formatter<'_>, d: &Dict) -> fmt::Result {
    items(f, &d.items)
}

fn items(f: &mut fmt::Formatter<'_>, items: &[(Value, Value)]) -> fmt::Result {
    f.write_str("{")?;
    for (i, (k, v)) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{k}: {v}")?;
    }
    f.write_str("}")
}

/// Python's `repr(float)`: the shortest digits that read back the same, in positional
/// notation when the decimal exponent is from -4 to 15, in scientific notation otherwise
/// (`1e-05`, `1e+16`), and always with a `.0` or a fraction when positional.
pub(crate) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    // Rust's shortest round-trip digits: "d.ddde<exp>".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len() as i32;
    let decpt = exp + 1;
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    let mut out = String::from(sign);
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else if decpt <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-decpt) as usize));
        out.push_str(&digits);
    } else if decpt >= n {
        out.push_str(&digits);
        out.push_str(&"0".repeat((decpt - n) as usize));
        out.push_str(".0");
    } else {
        out.push_str(&digits[..decpt as usize]);
        out.push('.');
        out.push_str(&digits[decpt as usize..]);
    }
    out
}

/// Python's `repr(bytes)`: `b'...'`, printable ASCII as is, `\t`, `\n`, `\r`, `\\` and the
/// quote escaped, other bytes as `\xNN`.
fn bytes_repr(b: &[u8]) -> String {
    let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut out = format!("b{quote}");
    for &c in b {
        match c {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            c if char::from(c) == quote => {
                out.push('\\');
                out.push(quote);
            }
            0x20..=0x7e => out.push(char::from(c)),
            c => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
    out.push(quote);
    out
}

/// A little-endian two's complement integer in decimal.
fn bigint_decimal(bytes: &[u8]) -> String {
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    // The magnitude, little-endian.
    let mut mag: Vec<u8> = if negative {
        let mut carry = true;
        bytes
            .iter()
            .map(|&b| {
                let (v, c) = (!b).overflowing_add(u8::from(carry));
                carry = c;
                v
            })
            .collect()
    } else {
        bytes.to_vec()
    };
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut().rev() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        // Each expected string is Python's repr() of the same float.
        for (x, want) in [
            (0.05, "0.05"),
            (1.0, "1.0"),
            (-0.0, "-0.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (1.5e300, "1.5e+300"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123.456, "123.456"),
            (f64::INFINITY, "inf"),
            (2.5e-7, "2.5e-07"),
        ] {
            assert_eq!(float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn other_values_print_as_python_repr() {
        assert_eq!(bytes_repr(b"\x00\xffab'"), "b\"\\x00\\xffab'\"");
        assert_eq!(
            bigint_decimal(&[0, 0, 0, 0, 0, 0, 0, 0, 0x40]),
            "1180591620717411303424"
        );
        assert_eq!(bigint_decimal(&[0xff; 9]), "-1");
        let v = Value::Tuple(vec![Value::Int(1)]);
        assert_eq!(v.to_string(), "(1,)");
        let d = Value::dict([("a", Value::from(vec![Value::None, Value::from(true)]))]);
        assert_eq!(d.to_string(), "{'a': [None, True]}");
        let o = Object {
            module: "argparse".into(),
            name: "Namespace".into(),
            args: Vec::new(),
            kwargs: Vec::new(),
            state: Some(Box::new(Value::dict([
                ("model", Value::from("resnet50")),
                ("lr", Value::from(0.05)),
            ]))),
            list_items: Vec::new(),
            dict_items: Vec::new(),
            new: true,
        };
        assert_eq!(
            o.to_string(),
            "argparse.Namespace(model='resnet50', lr=0.05)"
        );
        assert_eq!(
            Value::Device("cuda:0".into()).to_string(),
            "device(type='cuda', index=0)"
        );
    }
}
