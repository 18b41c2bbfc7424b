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

/// How many kinds tch has: the float8 kinds came with tch 0.19 (`cfg(tch_float8)`, which
/// `build.rs` sets from the libtorch that torch-sys found).
const KINDS: usize = if cfg!(tch_float8) { 20 } else { 16 };

/// Every tch [`Kind`], once, in tch's order.
#[rustfmt::skip]
pub(crate) const DTYPES: [DtypeInfo; KINDS] = [
    row("uint8", &[], Kind::Uint8, Some(Dtype::U8), Some("ByteStorage"), true, 1),
    row("int8", &[], Kind::Int8, Some(Dtype::I8), Some("CharStorage"), true, 1),
    row("int16", &["short"], Kind::Int16, Some(Dtype::I16), Some("ShortStorage"), true, 2),
    row("int32", &["int"], Kind::Int, Some(Dtype::I32), Some("IntStorage"), true, 4),
    row("int64", &["long"], Kind::Int64, Some(Dtype::I64), Some("LongStorage"), true, 8),
    row("float16", &["half"], Kind::Half, Some(Dtype::F16), Some("HalfStorage"), true, 2),
    row("float32", &["float"], Kind::Float, Some(Dtype::F32), Some("FloatStorage"), true, 4),
    row("float64", &["double"], Kind::Double, Some(Dtype::F64), Some("DoubleStorage"), true, 8),
    row("complex32", &["chalf"], Kind::ComplexHalf, None, Some("ComplexHalfStorage"), false, 4),
    row("complex64", &["cfloat"], Kind::ComplexFloat, Some(Dtype::C64), Some("ComplexFloatStorage"), true, 8),
    row("complex128", &["cdouble"], Kind::ComplexDouble, None, Some("ComplexDoubleStorage"), true, 16),
    row("bool", &[], Kind::Bool, Some(Dtype::BOOL), Some("BoolStorage"), true, 1),
    row("qint8", &[], Kind::QInt8, None, Some("QInt8Storage"), false, 1),
    row("quint8", &[], Kind::QUInt8, None, Some("QUInt8Storage"), false, 1),
    row("qint32", &[], Kind::QInt32, None, Some("QInt32Storage"), false, 4),
    row("bfloat16", &[], Kind::BFloat16, Some(Dtype::BF16), Some("BFloat16Storage"), true, 2),
    #[cfg(tch_float8)]
    row("float8_e5m2", &[], Kind::Float8e5m2, Some(Dtype::F8_E5M2), None, true, 1),
    #[cfg(tch_float8)]
    row("float8_e4m3fn", &[], Kind::Float8e4m3fn, Some(Dtype::F8_E4M3), None, true, 1),
    #[cfg(tch_float8)]
    row("float8_e5m2fnuz", &[], Kind::Float8e5m2fnuz, None, None, true, 1),
    #[cfg(tch_float8)]
    row("float8_e4m3fnuz", &[], Kind::Float8e4m3fnuz, None, None, true, 1),
];

/// Whether `kind` is a floating-point dtype (what `ReadOptions::kind` casts).
pub(crate) fn is_floating(kind: Kind) -> bool {
    match kind {
        Kind::Half | Kind::Float | Kind::Double | Kind::BFloat16 => true,
        #[cfg(tch_float8)]
        Kind::Float8e5m2 | Kind::Float8e4m3fn | Kind::Float8e5m2fnuz | Kind::Float8e4m3fnuz => true,
        _ => false,
    }
}

/// Reverses the byte order of each `unit`-byte piece of `bytes`: big-endian data made
/// native, `unit` from [`swap_unit`].
pub(crate) fn reverse_units(bytes: &mut [u8], unit: usize) {
    if unit > 1 {
        for piece in bytes.chunks_exact_mut(unit) {
            piece.reverse();
        }
    }
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

/// A PyTorch dtype that this crate cannot hold as a tch tensor: tch has no [`Kind`] for it
/// (`uint16`, `float8_e8m0fnu`), or libtorch's ops for it are not what a state dict needs
/// (quantized dtypes, `complex32`). A file may still hold one: the entry is listed with this
/// name and refused only when it is read (`Error::UnsupportedDtype`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OtherDtype {
    /// PyTorch's name, without `torch.` (safetensors' name for safetensors-only dtypes).
    pub name: &'static str,
    /// Other names PyTorch gives it.
    pub aliases: &'static [&'static str],
    /// Bits per element (4 and 6 for safetensors' MX formats, 8 or more otherwise).
    pub bits: usize,
    /// torch's typed storage class, where it has one.
    pub storage_class: Option<&'static str>,
    /// The safetensors dtype, where it has one.
    pub safetensors: Option<Dtype>,
}

const fn other(
    name: &'static str,
    aliases: &'static [&'static str],
    bits: usize,
    storage_class: Option<&'static str>,
    safetensors: Option<Dtype>,
) -> OtherDtype {
    OtherDtype {
        name,
        aliases,
        bits,
        storage_class,
        safetensors,
    }
}

/// Every dtype a file may name that is not a row of [`DTYPES`] that pickles may hold: with
/// a tch before 0.19, the float8 dtypes too.
#[rustfmt::skip]
pub(crate) const OTHER_DTYPES: [OtherDtype; 33 + 4 * !cfg!(tch_float8) as usize] = [
    #[cfg(not(tch_float8))]
    other("float8_e5m2", &[], 8, None, Some(Dtype::F8_E5M2)),
    #[cfg(not(tch_float8))]
    other("float8_e4m3fn", &[], 8, None, Some(Dtype::F8_E4M3)),
    #[cfg(not(tch_float8))]
    other("float8_e5m2fnuz", &[], 8, None, None),
    #[cfg(not(tch_float8))]
    other("float8_e4m3fnuz", &[], 8, None, None),
    other("uint16", &[], 16, None, Some(Dtype::U16)),
    other("uint32", &[], 32, None, Some(Dtype::U32)),
    other("uint64", &[], 64, None, Some(Dtype::U64)),
    other("complex32", &["chalf"], 32, Some("ComplexHalfStorage"), None),
    other("qint8", &[], 8, Some("QInt8Storage"), None),
    other("quint8", &[], 8, Some("QUInt8Storage"), None),
    other("qint32", &[], 32, Some("QInt32Storage"), None),
    other("quint4x2", &[], 8, Some("QUInt4x2Storage"), None),
    other("quint2x4", &[], 8, Some("QUInt2x4Storage"), None),
    other("bits1x8", &[], 8, None, None),
    other("bits2x4", &[], 8, None, None),
    other("bits4x2", &[], 8, None, None),
    other("bits8", &[], 8, None, None),
    other("bits16", &[], 16, None, None),
    other("float8_e8m0fnu", &[], 8, None, Some(Dtype::F8_E8M0)),
    other("float4_e2m1fn_x2", &[], 8, None, None),
    other("uint1", &[], 8, None, None),
    other("uint2", &[], 8, None, None),
    other("uint3", &[], 8, None, None),
    other("uint4", &[], 8, None, None),
    other("uint5", &[], 8, None, None),
    other("uint6", &[], 8, None, None),
    other("uint7", &[], 8, None, None),
    other("int1", &[], 8, None, None),
    other("int2", &[], 8, None, None),
    other("int3", &[], 8, None, None),
    other("int4", &[], 8, None, None),
    other("int5", &[], 8, None, None),
    other("int6", &[], 8, None, None),
    other("int7", &[], 8, None, None),
    // safetensors' MX formats: one element is 4 or 6 bits; torch has no dtype for them.
    other("F4", &[], 4, None, Some(Dtype::F4)),
    other("F6_E2M3", &[], 6, None, Some(Dtype::F6_E2M3)),
    other("F6_E3M2", &[], 6, None, Some(Dtype::F6_E3M2)),
];

/// A dtype as a file names it: one that tch holds, or one that this crate lists and refuses
/// to read ([`OtherDtype`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileDtype {
    /// A dtype that pickles may hold, as its tch kind.
    Kind(Kind),
    /// A dtype this crate cannot hold.
    Other(&'static OtherDtype),
}

impl FileDtype {
    /// The tch kind, for a dtype this crate reads.
    pub(crate) fn kind(self) -> Option<Kind> {
        match self {
            FileDtype::Kind(k) => Some(k),
            FileDtype::Other(_) => None,
        }
    }

    /// PyTorch's name, without `torch.`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FileDtype::Kind(k) => of_kind(k).name,
            FileDtype::Other(o) => o.name,
        }
    }

    /// Bits per element.
    pub(crate) fn bits(self) -> usize {
        match self {
            FileDtype::Kind(k) => 8 * of_kind(k).elt_size,
            FileDtype::Other(o) => o.bits,
        }
    }

    /// Bytes per element, rounded up (1 for the sub-byte formats).
    pub(crate) fn elt_size(self) -> usize {
        self.bits().div_ceil(8)
    }

    /// The unit whose bytes a big-endian file reverses (see [`swap_unit`]).
    pub(crate) fn swap_unit(self) -> usize {
        match self {
            FileDtype::Kind(k) => swap_unit(k),
            FileDtype::Other(o) if o.name == "complex32" => 2,
            FileDtype::Other(_) => self.elt_size(),
        }
    }
}

impl From<Kind> for FileDtype {
    fn from(kind: Kind) -> Self {
        FileDtype::Kind(kind)
    }
}

/// The dtype of a PyTorch name (`float32`) or alias (`float`, `chalf`), readable or not.
pub(crate) fn file_dtype_by_name(name: &str) -> Option<FileDtype> {
    let pickled = by_name(name).filter(|d| d.pickled).map(|d| d.kind.into());
    pickled.or_else(|| {
        OTHER_DTYPES
            .iter()
            .find(|o| o.name == name || o.aliases.contains(&name))
            .map(FileDtype::Other)
    })
}

/// The dtype of a typed storage class (`FloatStorage`, `QInt8Storage`), readable or not.
pub(crate) fn file_dtype_by_storage_class(class: &str) -> Option<FileDtype> {
    let pickled = by_storage_class(class)
        .filter(|d| d.pickled)
        .map(|d| d.kind.into());
    pickled.or_else(|| {
        OTHER_DTYPES
            .iter()
            .find(|o| o.storage_class == Some(class))
            .map(FileDtype::Other)
    })
}

/// The dtype of a safetensors dtype, readable or not.
pub(crate) fn file_dtype_by_safetensors(dtype: Dtype) -> Option<FileDtype> {
    let known = by_safetensors(dtype).map(|d| d.kind.into());
    known.or_else(|| {
        OTHER_DTYPES
            .iter()
            .find(|o| o.safetensors == Some(dtype))
            .map(FileDtype::Other)
    })
}

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
            #[cfg(tch_float8)]
            Kind::Float8e5m2 => 16,
            #[cfg(tch_float8)]
            Kind::Float8e4m3fn => 17,
            #[cfg(tch_float8)]
            Kind::Float8e5m2fnuz => 18,
            #[cfg(tch_float8)]
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
                let other = OTHER_DTYPES
                    .iter()
                    .any(|o| o.name == *name || o.aliases.contains(name));
                assert_eq!(
                    other, !d.pickled,
                    "{name}: in OTHER_DTYPES exactly when not pickled"
                );
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
                let other = OTHER_DTYPES.iter().any(|o| o.storage_class == Some(class));
                assert_eq!(other, !d.pickled, "{class}");
            }
        }
        assert_eq!(by_name("uint16").map(|d| d.kind), None);
        // Every dtype a file may name resolves once, readable or not.
        let mut other_names = HashSet::new();
        for o in &OTHER_DTYPES {
            for name in std::iter::once(&o.name).chain(o.aliases) {
                assert!(other_names.insert(*name), "{name} twice");
                assert_eq!(
                    file_dtype_by_name(name),
                    Some(FileDtype::Other(o)),
                    "{name}"
                );
            }
            if let Some(class) = o.storage_class {
                assert_eq!(
                    file_dtype_by_storage_class(class),
                    Some(FileDtype::Other(o))
                );
            }
            if let Some(st) = o.safetensors {
                assert_eq!(file_dtype_by_safetensors(st), Some(FileDtype::Other(o)));
            }
        }
        assert_eq!(
            file_dtype_by_name("float"),
            Some(FileDtype::Kind(Kind::Float))
        );
        // Every safetensors dtype is a row: a file of any of them opens.
        use Dtype::*;
        for st in [
            BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16,
            I32, U32, F32, C64, F64, I64, U64,
        ] {
            let d = file_dtype_by_safetensors(st).unwrap_or_else(|| panic!("{st:?}"));
            assert_eq!(d.bits(), st.bitsize(), "{st:?}");
        }
        assert_eq!(file_dtype_by_name("qint8").and_then(FileDtype::kind), None);
        assert_eq!(
            file_dtype_by_safetensors(Dtype::C64),
            Some(FileDtype::Kind(Kind::ComplexFloat))
        );
        assert_eq!(by_name("float").map(|d| d.kind), Some(Kind::Float));
        assert_eq!(
            by_storage_class("LongStorage").map(|d| d.kind),
            Some(Kind::Int64)
        );
        #[cfg(tch_float8)]
        assert_eq!(
            by_safetensors(Dtype::F8_E4M3).map(|d| d.kind),
            Some(Kind::Float8e4m3fn)
        );
        #[cfg(not(tch_float8))]
        assert_eq!(
            file_dtype_by_safetensors(Dtype::F8_E4M3).map(FileDtype::name),
            Some("float8_e4m3fn")
        );
    }
}
