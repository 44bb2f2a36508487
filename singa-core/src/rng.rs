//! Random numbers that every device draws the same way.
//!
//! [`Device::random`](crate::Device::random) fills element `i` with a pure function of
//! `(seed, i)`: SplitMix64 evaluated at position `i` of the stream keyed by `seed`. Being
//! counter-based, it parallelises without coordination, runs the same on CPU and GPU, and makes
//! a dropout mask or an initialisation reproducible from its seed alone.

/// The SplitMix64 finaliser: a bijective, well-mixing function of 64 bits.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 64 random bits at position `i` of the stream keyed by `seed`.
#[inline(always)]
pub fn bits_at(seed: u64, i: u64) -> u64 {
    mix64(mix64(seed).wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// A uniform draw from `[0, 1)` (24 bits of precision) at position `i`.
#[inline(always)]
pub fn uniform_at(seed: u64, i: u64) -> f32 {
    (bits_at(seed, i) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// A standard normal draw at position `i` (Box–Muller on the two halves of one 64-bit draw).
#[inline(always)]
pub fn normal_at(seed: u64, i: u64) -> f32 {
    let b = bits_at(seed, i);
    // u1 in (0, 1] so the logarithm is finite; u2 in [0, 1).
    let u1 = ((b >> 40) as f64 + 1.0) * (1.0 / (1u64 << 24) as f64);
    let u2 = ((b >> 8) & 0xff_ffff) as f64 * (1.0 / (1u64 << 24) as f64);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Derives an independent seed for a named stream (a parameter, a layer) from a job seed.
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, then mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(seed ^ mix64(h))
}

/// A small sequential generator for host-side work (shuffling a data set).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// A uniform integer in `0..n` (`n > 0`), without modulo bias (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_moments() {
        let n = 100_000;
        let xs: Vec<f32> = (0..n).map(|i| uniform_at(7, i)).collect();
        let mean = xs.iter().sum::<f32>() / n as f32;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn normal_moments() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| normal_at(11, i) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "var {var}");
    }

    #[test]
    fn seeds_give_different_streams() {
        assert_ne!(bits_at(1, 0), bits_at(2, 0));
        assert_ne!(derive_seed(1, "fc1/weight"), derive_seed(1, "fc2/weight"));
    }

    #[test]
    fn shuffle_is_a_permutation_and_reproducible() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        SplitMix64::new(3).shuffle(&mut a);
        SplitMix64::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, sorted);
    }
}
