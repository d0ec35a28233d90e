use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A tensor encoding modelship writes: llama.cpp's names, lowercase.
///
/// Blocks of 32 (`q8_0`, `q4_0`, `q4_1`) or super-blocks of 256 (`q4_k`,
/// `q5_k`, `q6_k`) weights share scales; the bits per weight include them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q6K,
    Q5K,
    Q4_1,
    Q4K,
    Q4_0,
}

impl QuantType {
    /// Every type, largest first.
    pub const ALL: [QuantType; 9] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::Bf16,
        QuantType::Q8_0,
        QuantType::Q6K,
        QuantType::Q5K,
        QuantType::Q4_1,
        QuantType::Q4K,
        QuantType::Q4_0,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuantType::F32 => "f32",
            QuantType::F16 => "f16",
            QuantType::Bf16 => "bf16",
            QuantType::Q8_0 => "q8_0",
            QuantType::Q6K => "q6_k",
            QuantType::Q5K => "q5_k",
            QuantType::Q4K => "q4_k",
            QuantType::Q4_1 => "q4_1",
            QuantType::Q4_0 => "q4_0",
        }
    }

    /// Bits per weight of the encoding itself, scales included.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            QuantType::F32 => 32.0,
            QuantType::F16 | QuantType::Bf16 => 16.0,
            QuantType::Q8_0 => 8.5,
            QuantType::Q6K => 6.5625,
            QuantType::Q5K => 5.5,
            QuantType::Q4K => 4.5,
            QuantType::Q4_1 => 5.0,
            QuantType::Q4_0 => 4.5,
        }
    }

    /// Whether weights share per-block scales (everything but the floats).
    pub fn is_block_quantized(self) -> bool {
        !matches!(self, QuantType::F32 | QuantType::F16 | QuantType::Bf16)
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A precision name modelship does not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown precision `{0}`: expected one of f32, f16, bf16, q8_0, q6_k, q5_k, q4_1, q4_k, q4_0"
)]
pub struct ParseQuantTypeError(pub String);

impl FromStr for QuantType {
    type Err = ParseQuantTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        QuantType::ALL
            .into_iter()
            .find(|t| t.as_str() == lower)
            .ok_or_else(|| ParseQuantTypeError(s.to_owned()))
    }
}

impl Serialize for QuantType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for QuantType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in QuantType::ALL {
            assert_eq!(t.as_str().parse::<QuantType>(), Ok(t));
            assert_eq!(t.as_str().to_uppercase().parse::<QuantType>(), Ok(t));
        }
        assert!("q3_k".parse::<QuantType>().is_err());
    }

    #[test]
    fn all_is_ordered_largest_first() {
        let bits: Vec<f64> = QuantType::ALL.iter().map(|t| t.bits_per_weight()).collect();
        assert!(bits.windows(2).all(|w| w[0] >= w[1]), "{bits:?}");
    }
}
