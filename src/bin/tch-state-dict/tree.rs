//! A checkpoint as a tree: what `tch-state-dict inspect` prints. The `inspect` example
//! includes this file too.

use std::fmt::{self, Write};
use std::path::Path;

use tch::Tensor;
use tch_state_dict::{dtype_name, Checkpoint, Error, ReadOptions, Value};

/// The tree of the checkpoint at `path`, or of the value under its top-level `key`: a header
/// line (format, number of tensors), safetensors' `__metadata__`, then each dict, list and
/// tensor one per line.
///
/// The file is opened through a private memory map, so printing reads only what the
/// tree shows.
///
/// # Errors
///
/// As [`Checkpoint::open`] and [`Checkpoint::value`]; [`Error::KeyNotFound`] when the top
/// level has no `key`.
pub fn inspect(path: &Path, key: Option<&str>) -> Result<String, Error> {
    let ckpt = Checkpoint::open_with(path, &ReadOptions::new().mmap(true))?;
    // A tensor this crate cannot hold (uint64) is listed, not refused.
    let value = ckpt.value_with_unreadable()?;
    let shown = match key {
        None => &value,
        Some(key) => value.get(key).ok_or_else(|| Error::KeyNotFound {
            path: path.to_path_buf(),
            key: key.to_string(),
            available: ckpt.keys(),
        })?,
    };
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_tree(&mut out, path, &ckpt, key, shown);
    Ok(out)
}

fn write_tree(
    out: &mut impl Write,
    path: &Path,
    ckpt: &Checkpoint<'_>,
    key: Option<&str>,
    shown: &Value,
) -> fmt::Result {
    writeln!(
        out,
        "{} ({:?}, {} tensors)",
        path.display(),
        ckpt.format(),
        ckpt.num_tensors()
    )?;
    if let Some(meta) = ckpt.safetensors_metadata() {
        writeln!(out, "__metadata__: {meta:?}")?;
    }
    if let Some(key) = key {
        write!(out, "[{key:?}]  ")?;
    }
    write_value(out, shown, 0)
}

fn nbytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

fn tensor_line(t: &Tensor) -> String {
    format!(
        "tensor torch.Size({:?}) {} ({} bytes{})",
        t.size(),
        dtype_name(t.kind()),
        nbytes(t),
        if t.requires_grad() {
            ", requires_grad"
        } else {
            ""
        }
    )
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => format!("{s:?}"),
        Value::Int(i) => i.to_string(),
        other => format!("<{}>", other.type_name()),
    }
}

/// Writes `v` at `indent` levels (two spaces each); the caller has written the line's start.
fn write_value(out: &mut impl Write, v: &Value, indent: usize) -> fmt::Result {
    let pad = "  ".repeat(indent);
    match v {
        Value::Dict(d) => {
            let tensors = d
                .items
                .iter()
                .filter(|(_, v)| v.as_tensor().is_some())
                .count();
            let total: usize = d
                .items
                .iter()
                .filter_map(|(_, v)| v.as_tensor())
                .map(nbytes)
                .sum();
            writeln!(
                out,
                "{} of {} items{}{}",
                v.type_name(),
                d.items.len(),
                if tensors > 0 {
                    format!(", {tensors} tensors, {total} bytes")
                } else {
                    String::new()
                },
                d.metadata
                    .as_ref()
                    .map(|m| format!(", _metadata for {} modules", m.len()))
                    .unwrap_or_default()
            )?;
            let width = d
                .items
                .iter()
                .map(|(k, _)| key_text(k).len())
                .max()
                .unwrap_or(0);
            for (k, item) in &d.items {
                write!(out, "{pad}  {:<width$}  ", key_text(k))?;
                write_value(out, item, indent + 1)?;
            }
        }
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            writeln!(out, "{} of {} items", v.type_name(), items.len())?;
            for (i, item) in items.iter().enumerate() {
                write!(out, "{pad}  [{i}]  ")?;
                write_value(out, item, indent + 1)?;
            }
        }
        Value::Tensor(t) => {
            writeln!(out, "{}", tensor_line(t))?;
        }
        Value::Unreadable { dtype, shape } => {
            writeln!(
                out,
                "tensor torch.Size({shape:?}) {dtype} (a dtype this crate cannot read)"
            )?;
        }
        Value::Str(s) => {
            writeln!(out, "{s:?}")?;
        }
        Value::Int(i) => {
            writeln!(out, "{i}")?;
        }
        Value::Float(_) => {
            writeln!(out, "{v}")?;
        }
        Value::Bool(b) => {
            writeln!(out, "{}", if *b { "True" } else { "False" })?;
        }
        Value::None => {
            writeln!(out, "None")?;
        }
        Value::Bytes(b) => {
            writeln!(out, "bytes of length {}", b.len())?;
        }
        Value::BigInt(_) => {
            writeln!(out, "{v}")?;
        }
        Value::Device(d) => {
            writeln!(out, "torch.device({d:?})")?;
        }
        Value::Dtype(k) => {
            writeln!(out, "torch.{}", dtype_name(*k))?;
        }
        Value::Object(o) => {
            // Small objects without tensors on one line, as Python's repr; others as a tree.
            let repr = o.to_string();
            if repr.len() <= 100 && !holds_tensors(v) {
                writeln!(out, "{repr}")?;
                return Ok(());
            }
            writeln!(out, "object {}", o.qualified_name())?;
            for (i, a) in o.args().iter().enumerate() {
                write!(out, "{pad}  [{i}]  ")?;
                write_value(out, a, indent + 1)?;
            }
            for (k, item) in o.dict_items() {
                write!(out, "{pad}  [{}]  ", key_text(k))?;
                write_value(out, item, indent + 1)?;
            }
            for (i, item) in o.list_items().iter().enumerate() {
                write!(out, "{pad}  [{i}]  ")?;
                write_value(out, item, indent + 1)?;
            }
            let attrs: Vec<_> = o.attrs().collect();
            if attrs.is_empty() {
                if let Some(state) = o.state() {
                    write!(out, "{pad}  state  ")?;
                    write_value(out, state, indent + 1)?;
                }
            }
            for (name, item) in attrs {
                write!(out, "{pad}  .{name}  ")?;
                write_value(out, item, indent + 1)?;
            }
        }
        other => {
            writeln!(out, "{other}")?;
        }
    }
    Ok(())
}

/// Whether a value holds a tensor anywhere inside it.
fn holds_tensors(v: &Value) -> bool {
    match v {
        Value::Tensor(_) | Value::Unreadable { .. } => true,
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            items.iter().any(holds_tensors)
        }
        Value::Dict(d) => d.items.iter().any(|(_, v)| holds_tensors(v)),
        Value::Object(o) => {
            o.args().iter().any(holds_tensors)
                || o.list_items().iter().any(holds_tensors)
                || o.dict_items().iter().any(|(_, v)| holds_tensors(v))
                || o.state().is_some_and(holds_tensors)
        }
        _ => false,
    }
}
