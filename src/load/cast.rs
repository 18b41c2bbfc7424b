//! Element conversions between bf16, fp16 and fp32 on the CPU, bit for bit as libtorch's
//! `copy_` converts: the converting route's own kernels (`convert.rs`).
//!
//! # Design note
//!
//! A converting load used to hand each 1 MiB chunk to libtorch's `copy_`. Per-phase counters
//! on the bench's 1 GiB bf16 checkpoint into an fp32 model (2 threads) showed each thread
//! spending 55 ms in `pread` and 134 ms in `copy_`, back to back: the `copy_`s alone took as
//! long as libtorch's whole in-memory conversion of the checkpoint (141 ms), since each is
//! parallel inside libtorch and the two reading threads shared its one pool, and the 1 MiB
//! buffer spilled out of L2 before it was converted. Smaller chunks made it worse (1.51× the
//! floor at 64 KiB, against 1.36× at 1 MiB): dispatch costs microseconds a call.
//!
//! These kernels run on the reading thread itself, on a block that stays in L2 between the
//! `pread` and the conversion, with no dispatch. They are plain loops over fixed-size
//! elements with branch-free selects, which the compiler vectorizes.
//!
//! libtorch's conversions are the contract, including the cases where rounding is chosen:
//! * bf16 → fp32 is exact (the bits shifted up), NaN payloads kept;
//! * fp16 → fp32 is exact, and a signaling NaN comes back quiet with its payload, as the
//!   F16C instructions and fbgemm that libtorch uses for whole vectors give (libtorch's scalar
//!   path, used for the last few elements of a tensor, gives `0x7fffffff` instead: libtorch
//!   disagrees with itself there, and these kernels follow its vector path everywhere);
//! * fp32 → bf16 rounds to nearest, ties to even, and every NaN becomes `0xffff`;
//! * fp32 → fp16 rounds to nearest, ties to even, overflows to infinity, keeps subnormals,
//!   and a NaN keeps its sign and the top of its payload, made quiet.
//!
//! bf16 ↔ fp16 has no kernel here: libtorch converts it element by element with yet other NaN
//! rules (a NaN becomes `0x7fc0`, sign dropped), and no checkpoint in the wild needs it fast;
//! it stays with libtorch's `copy_`.
//!
//! The tests compare every bf16 and fp16 bit pattern, and two million fp32 patterns chosen to
//! cover every exponent and every rounding boundary, with libtorch's own conversion; an
//! ignored test compares all 2^32 fp32 patterns.

use tch::Kind;

/// A float format the kernels handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Float {
    Bf16,
    F16,
    F32,
}

impl Float {
    pub(crate) fn of(kind: Kind) -> Option<Float> {
        match kind {
            Kind::BFloat16 => Some(Float::Bf16),
            Kind::Half => Some(Float::F16),
            Kind::Float => Some(Float::F32),
            _ => None,
        }
    }

    fn size(self) -> usize {
        match self {
            Float::Bf16 | Float::F16 => 2,
            Float::F32 => 4,
        }
    }
}

/// A conversion the kernels do: from one float format, in a byte order, to another, in the
/// machine's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cast {
    pub from: Float,
    pub to: Float,
    pub big_endian: bool,
}

impl Cast {
    /// The kernel for `from` bytes (in a file of `big_endian` order) into a tensor of `to`,
    /// when there is one: from bf16 or fp16 to fp32, or from fp32 to bf16 or fp16.
    pub(crate) fn new(from: Kind, to: Kind, big_endian: bool) -> Option<Cast> {
        let (from, to) = (Float::of(from)?, Float::of(to)?);
        (from != to && (from == Float::F32 || to == Float::F32)).then_some(Cast {
            from,
            to,
            big_endian,
        })
    }

    /// The bytes of one source element.
    pub(crate) fn src_size(self) -> usize {
        self.from.size()
    }

    /// The bytes of one converted element.
    pub(crate) fn dst_size(self) -> usize {
        self.to.size()
    }

    /// Converts every element of `src` into `dst`, which holds as many elements: the same
    /// loops compiled for AVX-512 or AVX2 where the machine has them (chosen at run time; the
    /// crate is built for the baseline x86-64, whose SSE2 lacks the selects these loops
    /// vectorize with: fp16 → fp32 ran 3× slower without). AVX-512's 16 lanes took resnet152's
    /// fp32 → bf16 load from 34.7–37.4 to 32.1–36.1 ms (four interleaved rounds of 31 loads,
    /// a scratch loop), bf16 → fp32 within the noise. The tests run every build of the loops
    /// the machine has against libtorch.
    pub(crate) fn run(self, src: &[u8], dst: &mut [u8]) {
        debug_assert_eq!(src.len() / self.src_size(), dst.len() / self.dst_size());
        #[cfg(target_arch = "x86_64")]
        if self.from == Float::F16
            && !self.big_endian
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the machine has F16C (and so AVX), checked just above.
            return unsafe { f16_to_f32_f16c(src, dst) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the machine has AVX-512 BW (and so F), checked just above.
            return unsafe { self.run_avx512(src, dst) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the machine has AVX2, checked just above.
            return unsafe { self.run_avx2(src, dst) };
        }
        self.run_portable(src, dst)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn run_avx512(self, src: &[u8], dst: &mut [u8]) {
        self.run_portable(src, dst)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(self, src: &[u8], dst: &mut [u8]) {
        self.run_portable(src, dst)
    }

    #[inline(always)]
    fn run_portable(self, src: &[u8], dst: &mut [u8]) {
        // One monomorphic loop per pair, so that each vectorizes on its own.
        match (self.from, self.big_endian) {
            (Float::F32, false) => self.to_from_f32(src, dst, u32::from_le_bytes),
            (Float::F32, true) => self.to_from_f32(src, dst, u32::from_be_bytes),
            (Float::Bf16, false) => map(src, dst, |b| {
                bf16_to_f32(u16::from_le_bytes(b)).to_ne_bytes()
            }),
            (Float::Bf16, true) => map(src, dst, |b| {
                bf16_to_f32(u16::from_be_bytes(b)).to_ne_bytes()
            }),
            (Float::F16, false) => map(src, dst, |b| {
                f16_to_f32(u16::from_le_bytes(b)).to_ne_bytes()
            }),
            (Float::F16, true) => map(src, dst, |b| {
                f16_to_f32(u16::from_be_bytes(b)).to_ne_bytes()
            }),
        }
    }

    /// [`run`](Self::run), with the converted elements written to `dst` with non-temporal
    /// stores where the machine has them: converted a small tile at a time into L1, then
    /// streamed out, so that `dst`'s lines are not read from memory before they are written.
    pub(crate) fn run_streaming(self, src: &[u8], dst: &mut [u8]) {
        const TILE: usize = 4096;
        let mut tile = [0u128; TILE / 16];
        let per_tile = TILE / self.dst_size();
        for (s, d) in src
            .chunks(per_tile * self.src_size())
            .zip(dst.chunks_mut(per_tile * self.dst_size()))
        {
            // SAFETY: `tile` is TILE bytes of plain integers, any bytes are valid.
            let t = unsafe { std::slice::from_raw_parts_mut(tile.as_mut_ptr() as *mut u8, TILE) };
            let t = &mut t[..d.len()];
            self.run(s, t);
            stream_copy(t, d);
        }
        fence();
    }

    #[inline(always)]
    fn to_from_f32(self, src: &[u8], dst: &mut [u8], read: impl Fn([u8; 4]) -> u32) {
        match self.to {
            Float::Bf16 => map(src, dst, |b: [u8; 4]| f32_to_bf16(read(b)).to_ne_bytes()),
            _ => map(src, dst, |b: [u8; 4]| f32_to_f16(read(b)).to_ne_bytes()),
        }
    }
}

/// fp16 → fp32 with the F16C instruction that libtorch's vector path uses, 8 elements at a
/// time (the portable loop took twice as long as bf16's).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[u8], dst: &mut [u8]) {
    use std::arch::x86_64::{__m128i, __m256, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let whole = src.len() / 16;
    for (s, d) in src.chunks_exact(16).zip(dst.chunks_exact_mut(32)) {
        // SAFETY: 16 readable bytes and 32 writable ones, unaligned loads and stores; the
        // caller checked F16C.
        unsafe {
            let h = _mm_loadu_si128(s.as_ptr() as *const __m128i);
            let f: __m256 = _mm256_cvtph_ps(h);
            _mm256_storeu_ps(d.as_mut_ptr() as *mut f32, f);
        }
    }
    let (src, dst) = (&src[whole * 16..], &mut dst[whole * 32..]);
    map(src, dst, |b| {
        f16_to_f32(u16::from_le_bytes(b)).to_ne_bytes()
    });
}

/// `dst.copy_from_slice(src)` with non-temporal stores for the 16-byte-aligned middle.
fn stream_copy(src: &[u8], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let head = dst.as_ptr().align_offset(16).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let body = (dst.len() - head) / 16 * 16;
        let (s, d) = (&src[head..head + body], &mut dst[head..head + body]);
        for (s, d) in s.chunks_exact(16).zip(d.chunks_exact_mut(16)) {
            // SAFETY: SSE2 is in every x86_64; `s` is 16 readable bytes (an unaligned load),
            // `d` 16 writable bytes at a 16-byte-aligned address (`head` aligned it).
            unsafe {
                let v = _mm_loadu_si128(s.as_ptr() as *const __m128i);
                _mm_stream_si128(d.as_mut_ptr() as *mut __m128i, v);
            }
        }
        let tail = head + body;
        dst[tail..].copy_from_slice(&src[tail..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Orders the non-temporal stores before what follows.
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is in every x86_64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// `dst[i] = f(src[i])` over fixed-size elements.
#[inline(always)]
fn map<const A: usize, const B: usize>(src: &[u8], dst: &mut [u8], f: impl Fn([u8; A]) -> [u8; B]) {
    for (d, s) in dst.chunks_exact_mut(B).zip(src.chunks_exact(A)) {
        let s: [u8; A] = s.try_into().expect("chunks of A");
        d.copy_from_slice(&f(s));
    }
}

/// bf16 bits to fp32 bits: exact.
#[inline(always)]
pub(crate) fn bf16_to_f32(h: u16) -> u32 {
    (h as u32) << 16
}

/// fp16 bits to fp32 bits: exact; a NaN is made quiet and keeps its payload.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> u32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let normal = ((exp + 112) << 23) | (man << 13);
    // A subnormal (or zero) is `man` × 2^-24: an integer below 2^10 times a power of two,
    // exact, and a normal fp32 (or zero), so flushing denormals changes nothing.
    let subnormal = ((man as i32) as f32 * (1.0 / 16_777_216.0)).to_bits();
    let quiet = if man != 0 { 0x0040_0000 } else { 0 };
    let special = 0x7f80_0000 | (man << 13) | quiet;
    let bits = if exp == 0 {
        subnormal
    } else if exp == 31 {
        special
    } else {
        normal
    };
    sign | bits
}

/// fp32 bits to bf16 bits: round to nearest, ties to even; every NaN becomes `0xffff`.
#[inline(always)]
pub(crate) fn f32_to_bf16(u: u32) -> u16 {
    let rounded = (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16;
    if u & 0x7fff_ffff > 0x7f80_0000 {
        0xffff
    } else {
        rounded
    }
}

/// fp32 bits to fp16 bits: round to nearest, ties to even, overflow to infinity; a NaN keeps
/// its sign and the top ten bits of its payload, made quiet.
#[inline(always)]
pub(crate) fn f32_to_f16(u: u32) -> u16 {
    let sign = ((u >> 16) & 0x8000) as u16;
    let a = u & 0x7fff_ffff;
    let nan = 0x7e00 | ((a >> 13) & 0x3ff) as u16;
    // A normal fp16: the exponent rebased from 127 to 15, then 13 bits rounded off (a carry
    // moves into the exponent, as it should).
    let t = a.wrapping_sub(112 << 23);
    let normal = (t.wrapping_add(0x0fff + ((t >> 13) & 1)) >> 13) as u16;
    // Below 2^-14: adding 0.5, whose last bit is worth 2^-24, rounds the value to a multiple
    // of 2^-24 as the FPU rounds (to nearest, ties to even); the bits past 0.5's are that
    // multiple, the subnormal's mantissa (1024 when it rounds up to the smallest normal).
    let subnormal = (f32::from_bits(a) + 0.5)
        .to_bits()
        .wrapping_sub(0x3f00_0000) as u16;
    let bits = if a > 0x7f80_0000 {
        nan
    } else if a >= 0x477f_f000 {
        // 65520 and above round to infinity (65504 is the largest fp16).
        0x7c00
    } else if a >= 0x3880_0000 {
        normal
    } else {
        subnormal
    };
    sign | bits
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;

    /// libtorch's conversion of `patterns` (bits of `from`) to `to`, as bits.
    fn torch_bits(patterns: &[u8], from: Kind, to: Kind) -> Vec<u8> {
        let src = Tensor::from_slice(patterns).view_dtype(from);
        let dst = src.to_kind(to);
        let bytes = Tensor::empty(
            [dst.numel() as i64 * to.elt_size_in_bytes() as i64],
            (Kind::Uint8, Device::Cpu),
        );
        let mut out = vec![0u8; bytes.numel()];
        dst.contiguous()
            .view_dtype(Kind::Uint8)
            .copy_data_u8(&mut out, bytes.numel());
        out
    }

    fn ours(patterns: &[u8], from: Kind, to: Kind, big_endian: bool) -> Vec<u8> {
        let cast = Cast::new(from, to, big_endian).unwrap();
        let n = patterns.len() / cast.src_size();
        let mut out = vec![0u8; n * cast.dst_size()];
        cast.run(patterns, &mut out);
        out
    }

    fn first_difference<'a>(
        a: &'a [u8],
        b: &'a [u8],
        size: usize,
    ) -> Option<(usize, &'a [u8], &'a [u8])> {
        a.chunks(size)
            .zip(b.chunks(size))
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .map(|(i, (x, y))| (i, x, y))
    }

    fn all_16_bit_patterns() -> Vec<u8> {
        (0..=u16::MAX).flat_map(u16::to_ne_bytes).collect()
    }

    /// Every exponent and sign (the high 16 bits, all of them) with low halves on each side
    /// of bf16's and fp16's rounding boundaries, and a few more.
    fn fp32_patterns() -> Vec<u8> {
        let lows: [u32; 32] = [
            0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2fff, 0x3000, 0x3001, 0x5000,
            0x6000, 0x7000, 0x7fff, 0x8000, 0x8001, 0x9000, 0xa000, 0xafff, 0xb000, 0xb001, 0xc000,
            0xd000, 0xdfff, 0xe000, 0xefff, 0xf000, 0xf001, 0xffff, 0x1234, 0x5a5a, 0xedcb,
        ];
        (0..=u16::MAX as u32)
            .flat_map(|high| lows.map(|low| (high << 16) | low))
            .flat_map(u32::to_ne_bytes)
            .collect()
    }

    type Path = Box<dyn Fn(&[u8], &mut [u8])>;

    /// Every way `cast` can run on this machine: the one `run` chooses, the portable loop,
    /// and each instruction set's build of it the machine has.
    fn every_path(cast: Cast) -> Vec<(&'static str, Path)> {
        let mut paths: Vec<(&'static str, Path)> = vec![
            ("run", Box::new(move |s, d| cast.run(s, d))),
            ("portable", Box::new(move |s, d| cast.run_portable(s, d))),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the machine has AVX2.
                paths.push(("avx2", Box::new(move |s, d| unsafe { cast.run_avx2(s, d) })));
            }
            if std::arch::is_x86_feature_detected!("avx512bw") {
                // SAFETY: the machine has AVX-512 BW.
                paths.push((
                    "avx512",
                    Box::new(move |s, d| unsafe { cast.run_avx512(s, d) }),
                ));
            }
        }
        paths
    }

    fn assert_same(patterns: &[u8], from: Kind, to: Kind) {
        let theirs = torch_bits(patterns, from, to);
        let size = to.elt_size_in_bytes();
        let cast = Cast::new(from, to, false).unwrap();
        for (name, path) in every_path(cast) {
            let mut mine = vec![0u8; patterns.len() / cast.src_size() * cast.dst_size()];
            path(patterns, &mut mine);
            if let Some((i, a, b)) = first_difference(&mine, &theirs, size) {
                let at = i * from.elt_size_in_bytes();
                panic!(
                    "{from:?} -> {to:?} ({name}): pattern {:02x?} gives {a:02x?}, libtorch {b:02x?}",
                    &patterns[at..at + from.elt_size_in_bytes()]
                );
            }
        }
    }

    #[test]
    fn every_bf16_and_fp16_pattern_widens_as_libtorch_does() {
        let patterns = all_16_bit_patterns();
        assert_same(&patterns, Kind::BFloat16, Kind::Float);
        assert_same(&patterns, Kind::Half, Kind::Float);
    }

    #[test]
    fn fp32_narrows_as_libtorch_does_at_every_exponent_and_boundary() {
        let patterns = fp32_patterns();
        assert_same(&patterns, Kind::Float, Kind::BFloat16);
        assert_same(&patterns, Kind::Float, Kind::Half);
    }

    /// All 2^32 fp32 patterns, in blocks; minutes in a debug build:
    /// `scripts/cargo test --release --lib every_fp32 -- --ignored`.
    #[test]
    #[ignore = "exhaustive: every fp32 pattern (run in release)"]
    fn every_fp32_pattern_narrows_as_libtorch_does() {
        const BLOCK: u64 = 1 << 24;
        for block in 0..(1u64 << 32) / BLOCK {
            let patterns: Vec<u8> = (block * BLOCK..(block + 1) * BLOCK)
                .flat_map(|u| (u as u32).to_ne_bytes())
                .collect();
            assert_same(&patterns, Kind::Float, Kind::BFloat16);
            assert_same(&patterns, Kind::Float, Kind::Half);
        }
    }

    #[test]
    fn big_endian_sources_are_swapped_first() {
        let patterns = fp32_patterns();
        let swapped: Vec<u8> = patterns
            .chunks_exact(4)
            .flat_map(|c| [c[3], c[2], c[1], c[0]])
            .collect();
        assert_eq!(
            ours(&swapped, Kind::Float, Kind::BFloat16, true),
            ours(&patterns, Kind::Float, Kind::BFloat16, false)
        );
        let halves = all_16_bit_patterns();
        let swapped: Vec<u8> = halves.chunks_exact(2).flat_map(|c| [c[1], c[0]]).collect();
        assert_eq!(
            ours(&swapped, Kind::Half, Kind::Float, true),
            ours(&halves, Kind::Half, Kind::Float, false)
        );
    }

    #[test]
    fn only_distinct_float_formats_have_a_kernel() {
        assert!(Cast::new(Kind::Float, Kind::Float, false).is_none());
        assert!(Cast::new(Kind::Double, Kind::Float, false).is_none());
        assert!(Cast::new(Kind::Float, Kind::Int64, false).is_none());
        assert!(Cast::new(Kind::Half, Kind::BFloat16, false).is_none());
        assert_eq!(
            Cast::new(Kind::Half, Kind::Float, true).map(|c| c.dst_size()),
            Some(4)
        );
    }
}
