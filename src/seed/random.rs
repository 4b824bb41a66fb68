//! The seeded generator and the few distributions the data set needs.
//!
//! Only the raw ChaCha8 keystream comes from a library (its output is fixed by
//! the cipher, so it cannot change between versions); every distribution on
//! top of it is written here, so the data set depends on nothing whose
//! sampling algorithm may change in a dependency update.

use rand::rngs::ChaCha8Rng;
use rand::{Rng, SeedableRng};

/// Independent keystreams of one seed, so that the users do not change when
/// only the number of posts does, and so on.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    UserIds = 1,
    Users = 2,
    Popularity = 3,
    Follows = 4,
    Posts = 5,
    PasswordSalt = 6,
    FollowDates = 7,
}

/// Mixed into the key so this generator's streams differ from a plain
/// ChaCha8 seeded with the same number elsewhere.
const KEY_TAG: &[u8; 24] = b"livefeed/seed/v1/chacha8";

pub struct SeedRng(ChaCha8Rng);

impl SeedRng {
    pub fn new(seed: u64, stream: Stream) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..].copy_from_slice(KEY_TAG);
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(stream as u64);
        Self(rng)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn fill(&mut self, bytes: &mut [u8]) {
        self.0.fill_bytes(bytes);
    }

    /// Uniform in `0..n` (Lemire's multiply-and-reject: no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let mut product = u128::from(self.next_u64()) * u128::from(n);
        if (product as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (product as u64) < threshold {
                product = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (product >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    /// A standard normal deviate (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln is finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Ranks `0..n` drawn with probability roughly proportional to
/// `(rank + 1)^-exponent`: the continuous power law inverted in closed form
/// (one `powf` per draw, no table), then floored to a rank.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    inverse_power: f64,
    span: f64,
    #[cfg(test)]
    one_minus_s: f64,
}

impl Zipf {
    /// `exponent` in (0, 1): heavy-headed but still with a long tail.
    pub fn new(n: u64, exponent: f64) -> Self {
        assert!(n > 0, "a Zipf distribution needs at least one rank");
        assert!(
            exponent > 0.0 && exponent < 1.0,
            "exponent must be in (0, 1), got {exponent}"
        );
        let one_minus_s = 1.0 - exponent;
        Self {
            n,
            inverse_power: 1.0 / one_minus_s,
            span: ((n + 1) as f64).powf(one_minus_s) - 1.0,
            #[cfg(test)]
            one_minus_s,
        }
    }

    pub fn sample(&self, rng: &mut SeedRng) -> u64 {
        // x has density proportional to x^-s on [1, n + 1).
        let x = (1.0 + rng.unit() * self.span).powf(self.inverse_power);
        (x as u64).saturating_sub(1).min(self.n - 1)
    }

    /// The share of draws that land on ranks `0..k`.
    #[cfg(test)]
    pub fn head_share(&self, k: u64) -> f64 {
        (((k.min(self.n) + 1) as f64).powf(self.one_minus_s) - 1.0) / self.span
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_same_numbers() {
        let a: Vec<u64> = {
            let mut rng = SeedRng::new(42, Stream::Users);
            (0..8).map(|_| rng.next_u64()).collect()
        };
        let mut rng = SeedRng::new(42, Stream::Users);
        assert!(a.iter().all(|&x| x == rng.next_u64()));
        let mut other_stream = SeedRng::new(42, Stream::Posts);
        assert_ne!(a[0], other_stream.next_u64());
        let mut other_seed = SeedRng::new(43, Stream::Users);
        assert_ne!(a[0], other_seed.next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SeedRng::new(1, Stream::Users);
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            seen[rng.below(7) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn zipf_is_in_range_and_head_heavy() {
        let zipf = Zipf::new(1_000, 0.8);
        let mut rng = SeedRng::new(7, Stream::Follows);
        let mut counts = vec![0u32; 1_000];
        for _ in 0..200_000 {
            counts[zipf.sample(&mut rng) as usize] += 1;
        }
        assert!(counts[0] > counts[9] && counts[9] > counts[99]);
        assert!(counts[999] > 0, "the tail is reachable");
        let head = f64::from(counts[..10].iter().sum::<u32>()) / 200_000.0;
        assert!((head - zipf.head_share(10)).abs() < 0.01, "{head}");
        let single = Zipf::new(1, 0.5);
        assert_eq!(single.sample(&mut rng), 0);
    }

    #[test]
    fn normal_has_mean_zero_and_unit_variance() {
        let mut rng = SeedRng::new(3, Stream::Follows);
        let draws: Vec<f64> = (0..100_000).map(|_| rng.normal()).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let variance = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((variance - 1.0).abs() < 0.02, "{variance}");
    }
}
