//! Which route a copy takes: a pure function of the model's tensor and where its values are,
//! described as plain data, so that the choice is tested without a model, a file or a GPU.
//!
//! | route | when | how |
//! |---|---|---|
//! | [`Choice::Read`] | the bytes are the model's tensor as they are ([`Dst::takes_as_is`]) | `pread` into the tensor ([`direct`](super::direct)) |
//! | [`Choice::ToDevice`] | the model's tensor is on another device | pinned buffers, copied and converted there ([`stage`](super::stage)) |
//! | [`Choice::Convert`] | another dtype or byte order, a contiguous CPU tensor | read in blocks and converted ([`convert`](super::convert)) |
//! | [`Choice::Block`] | a strided block of a DCP chunk's box, little-endian | a buffer of the block's shape, then `copy_` |
//! | [`Choice::Materialize`] | anything else: strided or deflated in the file, a cast asked for | read as a tensor, then `copy_` |

use tch::{Device, Kind, Tensor};

/// The model's tensor, as the route sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dst {
    pub kind: Kind,
    pub device: Device,
    pub contiguous: bool,
    pub numel: usize,
}

impl Dst {
    pub(crate) fn of(t: &Tensor) -> Dst {
        Dst {
            kind: t.kind(),
            device: t.device(),
            contiguous: t.is_contiguous(),
            numel: t.numel(),
        }
    }

    /// Whether bytes of `kind`, in a file of `big_endian` order, can be written into this
    /// tensor as they are: same dtype, little-endian, a contiguous CPU tensor. The one
    /// spelling of the rule behind the direct reads, the DCP runs and the in-memory memcpy.
    pub(crate) fn takes_as_is(&self, kind: Kind, big_endian: bool) -> bool {
        !big_endian && self.device == Device::Cpu && self.contiguous && self.kind == kind
    }
}

/// Where a copy's values are in a file, as the route sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileBytes {
    /// The dtype, `None` for one tch cannot hold (refused before, when the load is checked).
    pub kind: Option<Kind>,
    /// Whether they lie contiguous and stored in the file, with no cast asked for: readable
    /// at an offset. Not so for a strided or deflated tensor.
    pub in_place: bool,
    pub big_endian: bool,
    /// How many elements: a whole tensor's, or as many as its destination for a piece of a
    /// DCP chunk.
    pub numel: usize,
    /// A piece of a DCP chunk (a block of its box) rather than a whole tensor.
    pub piece: bool,
}

/// The route of one copy from a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    Read,
    ToDevice,
    Convert,
    Block,
    Materialize,
}

/// The most bytes of a strided destination on another device that the staged route takes:
/// it cannot be split, and must fit one of the smallest buffers.
pub(crate) const STAGED_STRIDED_BYTES: usize = 1 << 20;

#[cfg(test)]
thread_local! {
    /// In this crate's unit tests: whether a CPU destination takes the staged route, as a
    /// GPU's would, so that whole loads through it run on a machine without a GPU. The
    /// thread's own, so that the tests beside it load as users do.
    static STAGE_ON_CPU: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// In this crate's unit tests: `f`, run with this thread's CPU destinations taking the
/// staged route ([`STAGE_ON_CPU`]).
#[cfg(test)]
pub(crate) fn staging_cpu<T>(f: impl FnOnce() -> T) -> T {
    STAGE_ON_CPU.with(|s| s.set(true));
    let out = f();
    STAGE_ON_CPU.with(|s| s.set(false));
    out
}

/// Whether a destination on `device` takes the staged route (every route that writes
/// straight into a tensor's memory asks this first).
pub(crate) fn staged(device: Device) -> bool {
    #[cfg(test)]
    if STAGE_ON_CPU.with(std::cell::Cell::get) {
        return true;
    }
    device != Device::Cpu
}

/// The route of a copy of `src` into `dst`.
pub(crate) fn choose(dst: &Dst, src: &FileBytes) -> Choice {
    let Some(kind) = src.kind.filter(|_| src.in_place) else {
        return Choice::Materialize;
    };
    let staged = staged(dst.device);
    if !staged && dst.takes_as_is(kind, src.big_endian) && (src.piece || src.numel == dst.numel) {
        return Choice::Read;
    }
    if staged && (dst.contiguous || dst.numel * kind.elt_size_in_bytes() <= STAGED_STRIDED_BYTES) {
        return Choice::ToDevice;
    }
    if dst.contiguous {
        return Choice::Convert;
    }
    if src.piece && !src.big_endian {
        return Choice::Block;
    }
    Choice::Materialize
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_F32: Dst = Dst {
        kind: Kind::Float,
        device: Device::Cpu,
        contiguous: true,
        numel: 10,
    };

    const F32: FileBytes = FileBytes {
        kind: Some(Kind::Float),
        in_place: true,
        big_endian: false,
        numel: 10,
        piece: false,
    };

    #[test]
    fn bytes_as_the_model_lays_them_out_are_read_straight_in() {
        assert_eq!(choose(&CPU_F32, &F32), Choice::Read);
        // A piece of a DCP chunk holds what its destination does.
        let piece = FileBytes {
            numel: 3,
            piece: true,
            ..F32
        };
        assert_eq!(choose(&CPU_F32, &piece), Choice::Read);
    }

    #[test]
    fn another_dtype_or_byte_order_is_converted_on_the_cpu() {
        let bf16 = FileBytes {
            kind: Some(Kind::BFloat16),
            ..F32
        };
        assert_eq!(choose(&CPU_F32, &bf16), Choice::Convert);
        let big = FileBytes {
            big_endian: true,
            ..F32
        };
        assert_eq!(choose(&CPU_F32, &big), Choice::Convert);
        // A whole tensor of another element count is never read as it is.
        let longer = FileBytes { numel: 11, ..F32 };
        assert_eq!(choose(&CPU_F32, &longer), Choice::Convert);
    }

    #[test]
    fn a_model_on_another_device_is_staged_whatever_the_dtype() {
        for device in [Device::Cuda(0), Device::Cuda(1), Device::Mps] {
            let dst = Dst { device, ..CPU_F32 };
            assert_eq!(choose(&dst, &F32), Choice::ToDevice);
            let half = FileBytes {
                kind: Some(Kind::Half),
                big_endian: true,
                ..F32
            };
            assert_eq!(choose(&dst, &half), Choice::ToDevice);
        }
        // A strided block fits a buffer up to its size; past it, it is materialized.
        let strided = Dst {
            device: Device::Cuda(0),
            contiguous: false,
            numel: STAGED_STRIDED_BYTES / 4,
            ..CPU_F32
        };
        assert_eq!(choose(&strided, &F32), Choice::ToDevice);
        let wide = Dst {
            numel: STAGED_STRIDED_BYTES / 4 + 1,
            ..strided
        };
        assert_eq!(choose(&wide, &F32), Choice::Materialize);
    }

    #[test]
    fn strided_cpu_destinations_take_blocks_or_a_materialized_tensor() {
        let strided = Dst {
            contiguous: false,
            ..CPU_F32
        };
        let piece = FileBytes { piece: true, ..F32 };
        assert_eq!(choose(&strided, &piece), Choice::Block);
        let big_piece = FileBytes {
            big_endian: true,
            ..piece
        };
        assert_eq!(choose(&strided, &big_piece), Choice::Materialize);
        assert_eq!(choose(&strided, &F32), Choice::Materialize);
    }

    #[test]
    fn bytes_not_in_place_or_of_a_dtype_tch_lacks_are_materialized() {
        let strided = FileBytes {
            in_place: false,
            ..F32
        };
        assert_eq!(choose(&CPU_F32, &strided), Choice::Materialize);
        let unknown = FileBytes { kind: None, ..F32 };
        assert_eq!(choose(&CPU_F32, &unknown), Choice::Materialize);
        let cuda = Dst {
            device: Device::Cuda(0),
            ..CPU_F32
        };
        assert_eq!(choose(&cuda, &strided), Choice::Materialize);
    }

    #[test]
    fn the_as_is_rule_needs_every_condition() {
        assert!(CPU_F32.takes_as_is(Kind::Float, false));
        assert!(!CPU_F32.takes_as_is(Kind::Float, true));
        assert!(!CPU_F32.takes_as_is(Kind::Half, false));
        let strided = Dst {
            contiguous: false,
            ..CPU_F32
        };
        assert!(!strided.takes_as_is(Kind::Float, false));
        let cuda = Dst {
            device: Device::Cuda(0),
            ..CPU_F32
        };
        assert!(!cuda.takes_as_is(Kind::Float, false));
    }
}
