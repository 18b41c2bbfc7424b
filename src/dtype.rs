//! One table of dtypes: PyTorch's name and aliases, tch's [`Kind`], safetensors' [`Dtype`],
//! the typed storage class that `torch.save`'s pickles name, and the element size. Every
//! conversion between them in this crate is a lookup in [`DTYPES`].

use safetensors::tensor::Dtype;
use tch::Kind;

/// One dtype as each format names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DtypeInfo {
    /// PyTorch's name, without `torch.`: `float32`.
    pub name: &'static str,
    /// Other names PyTorch gives it (`torch.float` is `torch.float32`).
    pub aliases: &'static [&'static str],
    /// tch's kind.
    pub kind: Kind,
    /// The safetensors dtype; `None` where this crate maps none.
    pub safetensors: Option<Dtype>,
    /// torch's typed storage class (`FloatStorage`); `None` for dtypes that `torch.save`
    /// writes through an untyped storage and `_rebuild_tensor_v3`.
    pub storage_class: Option<&'static str>,
    /// Whether pickles may hold it: a `torch.<name>` global or its storage class is read and
    /// written. Quantized dtypes and complex32 are not; a pickle naming one is refused as an
    /// unsupported dtype.
    pub pickled: bool,
    /// Bytes per element.
    pub elt_size: usize,
}

const fn row(
    name: &'static str,
    aliases: &'static [&'static str],
    kind: Kind,
    safetensors: Option<Dtype>,
    storage_class: Option<&'static str>,
    pickled: bool,
    elt_size: usize,
) -> DtypeInfo {
    DtypeInfo {
        name,
        aliases,
        kind,
        safetensors,
        storage_class,
        pickled,
        elt_size,
    }
}

/// Every tch [`Kind`], once, in tch's order.
#[rustfmt::skip]
pub(crate) const DTYPES: [DtypeInfo; 20] = [
    row("uint8", &[], Kind::Uint8, Some(Dtype::U8), Some("ByteStorage"), true, 1),
    row("int8", &[], Kind::Int8, Some(Dtype::I8), Some("CharStorage"), true, 1),
    row("int16", &["short"], Kind::Int16, Some(Dtype::I16), Some("ShortStorage"), true, 2),
    row("int32", &["int"], Kind::Int, Some(Dtype::I32), Some("IntStorage"), true, 4),
    row("int64", &["long"], Kind::Int64, Some(Dtype::I64), Some("LongStorage"), true, 8),
    row("float16", &["half"], Kind::Half, Some(Dtype::F16), Some("HalfStorage"), true, 2),
    row("float32", &["float"], Kind::Float, Some(Dtype::F32), Some("FloatStorage"), true, 4),
    row("float64", &["double"], Kind::Double, Some(Dtype::F64), Some("DoubleStorage"), true, 8),
    row("complex32", &["chalf"], Kind::ComplexHalf, None, Some("ComplexHalfStorage"), false, 4),
    row("complex64", &["cfloat"], Kind::ComplexFloat, None, Some("ComplexFloatStorage"), true, 8),
    row("complex128", &["cdouble"], Kind::ComplexDouble, None, Some("ComplexDoubleStorage"), true, 16),
    row("bool", &[], Kind::Bool, Some(Dtype::BOOL), Some("BoolStorage"), true, 1),
    row("qint8", &[], Kind::QInt8, None, Some("QInt8Storage"), false, 1),
    row("quint8", &[], Kind::QUInt8, None, Some("QUInt8Storage"), false, 1),
    row("qint32", &[], Kind::QInt32, None, Some("QInt32Storage"), false, 4),
    row("bfloat16", &[], Kind::BFloat16, Some(Dtype::BF16), Some("BFloat16Storage"), true, 2),
    row("float8_e5m2", &[], Kind::Float8e5m2, Some(Dtype::F8_E5M2), None, true, 1),
    row("float8_e4m3fn", &[], Kind::Float8e4m3fn, Some(Dtype::F8_E4M3), None, true, 1),
    row("float8_e5m2fnuz", &[], Kind::Float8e5m2fnuz, None, None, true, 1),
    row("float8_e4m3fnuz", &[], Kind::Float8e4m3fnuz, None, None, true, 1),
];

/// Whether `kind` is a floating-point dtype (what `ReadOptions::kind` casts).
pub(crate) fn is_floating(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Half
            | Kind::Float
            | Kind::Double
            | Kind::BFloat16
            | Kind::Float8e5m2
            | Kind::Float8e4m3fn
            | Kind::Float8e5m2fnuz
            | Kind::Float8e4m3fnuz
    )
}

/// The unit whose bytes a big-endian file reverses: the element, or each half of a complex
/// element (its real and imaginary parts), as PyTorch swaps them.
pub(crate) fn swap_unit(kind: Kind) -> usize {
    match kind {
        Kind::ComplexHalf | Kind::ComplexFloat | Kind::ComplexDouble => {
            kind.elt_size_in_bytes() / 2
        }
        _ => kind.elt_size_in_bytes(),
    }
}

/// PyTorch dtypes that tch has no [`Kind`] for. A pickle naming one (`torch.uint16`) is
/// refused as an unsupported dtype, not as a disallowed global.
pub(crate) const TORCH_ONLY_NAMES: [&str; 9] = [
    "uint16",
    "uint32",
    "uint64",
    "quint4x2",
    "quint2x4",
    "bits8",
    "bits16",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
];

/// torch storage classes of dtypes that tch has no [`Kind`] for, refused the same way.
pub(crate) const TORCH_ONLY_STORAGE_CLASSES: [&str; 2] = ["QUInt4x2Storage", "QUInt2x4Storage"];

/// The row of a kind.
pub(crate) fn of_kind(kind: Kind) -> &'static DtypeInfo {
    DTYPES
        .iter()
        .find(|d| d.kind == kind)
        .expect("DTYPES has a row for every Kind (checked by a test)")
}

/// The row of a PyTorch dtype name (`float32`) or alias (`float`).
pub(crate) fn by_name(name: &str) -> Option<&'static DtypeInfo> {
    DTYPES
        .iter()
        .find(|d| d.name == name || d.aliases.contains(&name))
}

/// The row of a typed storage class (`FloatStorage`).
pub(crate) fn by_storage_class(class: &str) -> Option<&'static DtypeInfo> {
    DTYPES.iter().find(|d| d.storage_class == Some(class))
}

/// The row of a safetensors dtype.
pub(crate) fn by_safetensors(dtype: Dtype) -> Option<&'static DtypeInfo> {
    DTYPES.iter().find(|d| d.safetensors == Some(dtype))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// tch's order of its kinds. Fails to compile when tch adds one, so that the table gets
    /// its row.
    fn position(kind: Kind) -> usize {
        match kind {
            Kind::Uint8 => 0,
            Kind::Int8 => 1,
            Kind::Int16 => 2,
            Kind::Int => 3,
            Kind::Int64 => 4,
            Kind::Half => 5,
            Kind::Float => 6,
            Kind::Double => 7,
            Kind::ComplexHalf => 8,
            Kind::ComplexFloat => 9,
            Kind::ComplexDouble => 10,
            Kind::Bool => 11,
            Kind::QInt8 => 12,
            Kind::QUInt8 => 13,
            Kind::QInt32 => 14,
            Kind::BFloat16 => 15,
            Kind::Float8e5m2 => 16,
            Kind::Float8e4m3fn => 17,
            Kind::Float8e5m2fnuz => 18,
            Kind::Float8e4m3fnuz => 19,
        }
    }

    #[test]
    fn the_table_is_consistent() {
        // Each Kind once: row i holds the i-th kind, and there are as many rows as kinds.
        for (i, d) in DTYPES.iter().enumerate() {
            assert_eq!(position(d.kind), i, "{}", d.name);
        }
        let mut names = HashSet::new();
        let mut classes = HashSet::new();
        let mut safetensors = HashSet::new();
        for d in &DTYPES {
            assert_eq!(d.elt_size, d.kind.elt_size_in_bytes(), "{}", d.name);
            // name -> Kind -> name, and each alias to the same kind.
            assert_eq!(by_name(d.name).map(|r| r.kind), Some(d.kind));
            assert_eq!(of_kind(d.kind).name, d.name);
            for alias in d.aliases {
                assert_eq!(by_name(alias).map(|r| r.kind), Some(d.kind), "{alias}");
            }
            for name in std::iter::once(&d.name).chain(d.aliases) {
                assert!(names.insert(*name), "{name} twice");
                assert!(!TORCH_ONLY_NAMES.contains(name), "{name}");
            }
            // safetensors -> Kind -> safetensors.
            if let Some(st) = d.safetensors {
                assert_eq!(by_safetensors(st).map(|r| r.kind), Some(d.kind));
                assert_eq!(of_kind(d.kind).safetensors, Some(st));
                assert!(safetensors.insert(format!("{st:?}")), "{st:?} twice");
            }
            // storage class -> Kind -> storage class.
            if let Some(class) = d.storage_class {
                assert!(class.ends_with("Storage"), "{class}");
                assert_eq!(by_storage_class(class).map(|r| r.kind), Some(d.kind));
                assert!(classes.insert(class), "{class} twice");
                assert!(!TORCH_ONLY_STORAGE_CLASSES.contains(&class), "{class}");
            }
        }
        assert_eq!(by_name("uint16").map(|d| d.kind), None);
        assert_eq!(by_name("float").map(|d| d.kind), Some(Kind::Float));
        assert_eq!(
            by_storage_class("LongStorage").map(|d| d.kind),
            Some(Kind::Int64)
        );
        assert_eq!(
            by_safetensors(Dtype::F8_E4M3).map(|d| d.kind),
            Some(Kind::Float8e4m3fn)
        );
    }
}
