//! Deterministic embedding vectors: the same text always gives the same unit vector, on every
//! run and platform, so a test (or a cache) can compare them.

/// A unit-length vector of `dimensions` values derived from `text`.
pub(crate) fn vector(text: &str, dimensions: u64) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(stable_hash(text.as_bytes()));
    let mut values: Vec<f32> = (0..dimensions).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = values.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        for value in &mut values {
            *value /= norm;
        }
    }
    values
}

/// 64-bit FNV-1a. Written here because std's `DefaultHasher` does not promise the same output
/// across Rust releases, and the vectors must not change when the toolchain does.
fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_unit_vector() {
        let first = vector("hello", 16);
        assert_eq!(first, vector("hello", 16));
        assert_ne!(first, vector("hello!", 16));
        let norm: f32 = first.iter().map(|value| value * value).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }

    #[test]
    fn fnv_reference_values() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
