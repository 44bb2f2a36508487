//! Element types a tensor can hold.

use abi_stable::StableAbi;
use std::fmt;

/// The element type of a tensor.
///
/// Floating-point math runs in `F32`; `F16` and `BF16` are storage types that a device converts
/// with [`Device::cast`](crate::Device::cast) and uses where it has fast kernels for them. `I32`
/// holds class labels and indices, `U8` raw pixel data.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE float (`half::f16`).
    F16 = 1,
    /// 16-bit brain float (`half::bf16`).
    BF16 = 2,
    /// 32-bit signed integer.
    I32 = 3,
    /// 8-bit unsigned integer.
    U8 = 4,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 5] = [DType::F32, DType::F16, DType::BF16, DType::I32, DType::U8];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    /// The name used in job files, shard headers and messages (`"f32"`, `"bf16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::U8 => "u8",
        }
    }

    /// Parses a name as written by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether the type is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// A stable numeric code (used in on-disk formats).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The inverse of [`DType::code`].
    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.code() == code)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The precision of a device's matrix products and convolutions (`[device] precision` in a
/// job file).
///
/// Mixed precision in the sense of PyTorch's `torch.set_float32_matmul_precision("medium")`:
/// tensors stay `F32` (master weights, updater state, activations, losses), and a product
/// rounds its two inputs to the narrower type and accumulates in f32. A device may compute a
/// product more precisely than asked where that is faster (the CPU's Winograd convolutions
/// stay f32), never less.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Precision {
    /// Products of f32 inputs (the default).
    #[default]
    F32 = 0,
    /// Products of inputs rounded to bf16 (to nearest, ties to even), accumulated in f32.
    BF16 = 1,
    /// Products of inputs rounded to f16, accumulated in f32.
    F16 = 2,
}

impl Precision {
    /// Every precision, in declaration order.
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::BF16, Precision::F16];

    /// The names, for error messages.
    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    /// The name used in job files and on the command line (`"f32"`, `"bf16"`, `"f16"`).
    pub const fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::BF16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Parses a name as written by [`Precision::name`].
    pub fn from_name(name: &str) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Rounds `x` to this precision and back to f32: the value a product's input takes.
    /// bf16 rounding is the one AVX-512 BF16's `vcvtneps2bf16` does (see [`bf16_bits`]).
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::BF16 => f32::from_bits((bf16_bits(x) as u32) << 16),
            Precision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

/// The bits of `x` rounded to bf16 as AVX-512 BF16's `vcvtneps2bf16` rounds: to nearest, ties
/// to even; a subnormal input becomes a zero of its sign; a NaN stays a (quiet) NaN.
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7f80_0000 == 0 {
        return (bits >> 16) as u16 & 0x8000;
    }
    let bias = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(bias) >> 16) as u16
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that is the host-side representation of a [`DType`].
pub trait Element: bytemuck::Pod + Send + Sync + 'static {
    /// The dtype this Rust type stands for.
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
            assert_eq!(DType::from_code(d.code()), Some(d));
        }
        assert_eq!(DType::from_name("f64"), None);
        assert_eq!(DType::from_code(200), None);
    }

    #[test]
    fn precisions_round_trip_and_round() {
        for p in Precision::ALL {
            assert_eq!(Precision::from_name(p.name()), Some(p));
        }
        assert_eq!(Precision::from_name("f64"), None);
        // bf16 keeps 8 significant bits: 1 + 2^-8 is a tie, rounded to even (down); 1 + 3·2^-9
        // rounds up; ordinary values agree with `half`.
        assert_eq!(Precision::BF16.round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(Precision::BF16.round(1.0 + 3.0 / 512.0), 1.0 + 1.0 / 128.0);
        for x in [0.1f32, -3.7, 65504.0, 1e-30, 3.4e38] {
            assert_eq!(
                Precision::BF16.round(x),
                half::bf16::from_f32(x).to_f32(),
                "{x}"
            );
        }
        assert_eq!(Precision::BF16.round(f32::MIN_POSITIVE / 2.0), 0.0);
        assert!(Precision::BF16.round(f32::NAN).is_nan());
        assert_eq!(Precision::BF16.round(f32::INFINITY), f32::INFINITY);
        assert_eq!(Precision::F16.round(0.1), half::f16::from_f32(0.1).to_f32());
        assert_eq!(Precision::F32.round(0.1), 0.1);
    }

    #[test]
    fn sizes_match_rust_types() {
        assert_eq!(DType::F32.size(), std::mem::size_of::<f32>());
        assert_eq!(DType::F16.size(), std::mem::size_of::<half::f16>());
        assert_eq!(DType::BF16.size(), std::mem::size_of::<half::bf16>());
        assert_eq!(DType::I32.size(), std::mem::size_of::<i32>());
        assert_eq!(DType::U8.size(), 1);
    }
}
