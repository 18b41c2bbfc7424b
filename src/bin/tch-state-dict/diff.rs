//! `diff`: how two state dicts differ, key by key.

use std::io::Write;
use std::path::Path;

use indicatif::HumanBytes;
use tch::{Kind, TchError, Tensor};
use tch_state_dict::{dtype_name, LazyStateDict, LazyTensor};

use crate::{open_state_dict, Answer, Failure};

/// How one common key compares.
enum Compared {
    /// Same shape and dtype, the same values (NaN where the other has NaN).
    Equal,
    /// Same shape and dtype; the largest `|a - b|`.
    Values(f64),
    /// Same shape, another dtype; the largest `|a - b|` in float64 (complex128 for complex),
    /// or why libtorch could not compute it.
    Dtype(Result<f64, String>),
    /// Another shape: values are not compared.
    Shape,
    /// Same shape, values libtorch could not compare (its message).
    Unavailable(String),
}

/// Prints the keys only in A, only in B, and the common keys whose shape, dtype or values
/// differ, with the largest absolute difference of each; yes when nothing differs. Tensors
/// are read two at a time, one from each file.
pub fn run(
    path_a: &Path,
    key_a: Option<&str>,
    path_b: &Path,
    key_b: Option<&str>,
    out: &mut impl Write,
) -> Result<Answer, Failure> {
    let a = open_state_dict(path_a, key_a)?;
    let b = open_state_dict(path_b, key_b)?;
    let name_a = label(path_a, key_a);
    let name_b = label(path_b, key_b);
    writeln!(out, "a: {name_a}: {}", summary(&a))?;
    writeln!(out, "b: {name_b}: {}", summary(&b))?;

    let only_a: Vec<(&str, &LazyTensor<'_>)> =
        a.iter().filter(|(k, _)| !b.contains_key(k)).collect();
    let only_b: Vec<(&str, &LazyTensor<'_>)> =
        b.iter().filter(|(k, _)| !a.contains_key(k)).collect();
    let mut compared = Vec::new();
    for (key, ta) in a.iter() {
        let Some(tb) = b.get(key) else { continue };
        compared.push((key, ta, tb, compare(ta, tb)?));
    }

    let mut differs = false;
    if !only_a.is_empty() {
        differs = true;
        writeln!(out, "only in a ({}):", only_a.len())?;
        table(
            out,
            only_a.iter().map(|(k, t)| [k.to_string(), describe(t)]),
        )?;
    }
    if !only_b.is_empty() {
        differs = true;
        writeln!(out, "only in b ({}):", only_b.len())?;
        table(
            out,
            only_b.iter().map(|(k, t)| [k.to_string(), describe(t)]),
        )?;
    }
    let shapes: Vec<_> = compared
        .iter()
        .filter(|(.., c)| matches!(c, Compared::Shape))
        .collect();
    if !shapes.is_empty() {
        differs = true;
        writeln!(out, "shape differs ({}):", shapes.len())?;
        table(
            out,
            shapes.iter().map(|(k, ta, tb, _)| {
                [
                    k.to_string(),
                    format!("{} in a, {} in b", describe(ta), describe(tb)),
                ]
            }),
        )?;
    }
    let dtypes: Vec<_> = compared
        .iter()
        .filter_map(|(k, ta, tb, c)| match c {
            Compared::Dtype(d) => Some((k, ta, tb, d)),
            _ => None,
        })
        .collect();
    if !dtypes.is_empty() {
        differs = true;
        writeln!(out, "dtype differs ({}):", dtypes.len())?;
        table(
            out,
            dtypes.iter().map(|(k, ta, tb, d)| {
                [
                    k.to_string(),
                    format!(
                        "{} in a, {} in b, {}",
                        dtype_of(ta),
                        dtype_of(tb),
                        match d {
                            Ok(d) => format!("max |a - b| = {}", number(*d)),
                            Err(why) => format!("values not compared: {why}"),
                        }
                    ),
                ]
            }),
        )?;
    }
    let values: Vec<(&str, String)> = compared
        .iter()
        .filter_map(|(k, _, _, c)| match c {
            Compared::Values(d) => Some((*k, format!("max |a - b| = {}", number(*d)))),
            Compared::Unavailable(why) => Some((*k, format!("values not compared: {why}"))),
            _ => None,
        })
        .collect();
    let equal = compared
        .iter()
        .filter(|(.., c)| matches!(c, Compared::Equal))
        .count();
    if !values.is_empty() {
        differs = true;
        writeln!(out, "values differ ({}):", values.len())?;
        table(out, values.iter().map(|(k, v)| [k.to_string(), v.clone()]))?;
    }
    writeln!(
        out,
        "{equal} of {} common tensors equal{}",
        compared.len(),
        if same_order(&a, &b) || differs {
            ""
        } else {
            " (keys in another order)"
        }
    )?;
    Ok(if differs { Answer::No } else { Answer::Yes })
}

/// `path` or `path["key"]`.
fn label(path: &Path, key: Option<&str>) -> String {
    match key {
        Some(key) => format!("{}[{key:?}]", path.display()),
        None => path.display().to_string(),
    }
}

fn summary(sd: &LazyStateDict<'_>) -> String {
    format!("{} tensors, {}", sd.len(), HumanBytes(sd.nbytes()))
}

/// `[100, 2048] float32`.
fn describe(t: &LazyTensor<'_>) -> String {
    format!("{:?} {}", t.size(), dtype_of(t))
}

/// The dtype a read gives, or the stored one where it cannot be read (`uint64`).
fn dtype_of(t: &LazyTensor<'_>) -> &'static str {
    t.kind().map_or(t.dtype_name(), dtype_name)
}

fn same_order(a: &LazyStateDict<'_>, b: &LazyStateDict<'_>) -> bool {
    a.keys().eq(b.keys())
}

/// A difference as people read one: integers in full, others with four significant digits.
fn number(d: f64) -> String {
    if d.fract() == 0.0 && d.abs() < 1e15 {
        format!("{d:.0}")
    } else {
        format!("{d:.3e}")
    }
}

/// Rows of two columns, the first padded to its widest cell, indented by two spaces.
fn table(out: &mut impl Write, rows: impl Iterator<Item = [String; 2]>) -> std::io::Result<()> {
    let rows: Vec<[String; 2]> = rows.collect();
    let width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    for [key, what] in &rows {
        writeln!(out, "  {key:<width$}  {what}")?;
    }
    Ok(())
}

fn compare(ta: &LazyTensor<'_>, tb: &LazyTensor<'_>) -> Result<Compared, Failure> {
    if ta.size() != tb.size() {
        return Ok(Compared::Shape);
    }
    if ta.kind().is_none() || tb.kind().is_none() {
        if ta.dtype_name() != tb.dtype_name() {
            return Ok(Compared::Dtype(Err(
                "this crate cannot read the dtype".into()
            )));
        }
        return Ok(Compared::Unavailable(format!(
            "this crate cannot read {}",
            ta.dtype_name()
        )));
    }
    let (a, b) = (ta.read()?, tb.read()?);
    let same_kind = a.kind() == b.kind();
    Ok(match max_abs_diff(&a, &b) {
        Ok(d) if same_kind && d == 0.0 => Compared::Equal,
        Ok(d) if same_kind => Compared::Values(d),
        Ok(d) => Compared::Dtype(Ok(d)),
        Err(e) if same_kind => Compared::Unavailable(first_line(&e)),
        Err(e) => Compared::Dtype(Err(first_line(&e))),
    })
}

/// libtorch's message without the C++ backtrace that follows it.
fn first_line(e: &TchError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// The largest `|a - b|` over the elements of two tensors of one shape, computed in float64
/// (complex128 when either is complex); positions where both are NaN, or both the same
/// infinity, count as equal. NaN when one side has NaN where the other has not.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64, TchError> {
    if a.numel() == 0 || (a.kind() == b.kind() && a.f_equal(b)?) {
        return Ok(0.0);
    }
    let complex = |k: Kind| {
        matches!(
            k,
            Kind::ComplexHalf | Kind::ComplexFloat | Kind::ComplexDouble
        )
    };
    let wide = if complex(a.kind()) || complex(b.kind()) {
        Kind::ComplexDouble
    } else {
        Kind::Double
    };
    let (a, b) = (a.f_to_kind(wide)?, b.f_to_kind(wide)?);
    let same = a
        .f_eq_tensor(&b)?
        .f_logical_or(&a.f_isnan()?.f_logical_and(&b.f_isnan()?)?)?;
    let diff = a.f_sub(&b)?.f_abs()?.f_masked_fill(&same, 0.0)?;
    diff.f_max()?.f_double_value(&[])
}
