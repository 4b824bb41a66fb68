//! UUIDv7 ids from a chosen timestamp and seeded random bits, and the spread
//! of those timestamps over a time window.

use uuid::Uuid;

use super::random::SeedRng;

/// RFC 9562 UUIDv7: 48-bit big-endian Unix milliseconds, version 7, 12 bits
/// of `rand_a`, the `10` variant, 62 bits of `rand_b`. The 74 random bits
/// are the low bits of `random`.
pub fn uuid_v7(unix_ms: u64, random: u128) -> Uuid {
    assert!(unix_ms < 1 << 48, "UUIDv7 timestamps have 48 bits");
    let rand_a = ((random >> 62) & 0xfff) as u64;
    let rand_b = (random as u64) & ((1 << 62) - 1);
    let high = (unix_ms << 16) | (0x7 << 12) | rand_a;
    let low = (0b10 << 62) | rand_b;
    Uuid::from_u64_pair(high, low)
}

/// A UUIDv7 at `unix_ms` with random bits from `rng`.
pub fn seeded_v7(unix_ms: u64, rng: &mut SeedRng) -> Uuid {
    let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
    uuid_v7(unix_ms, random)
}

/// The millisecond timestamp of a UUIDv7.
pub fn unix_ms(id: &Uuid) -> u64 {
    id.as_u64_pair().0 >> 16
}

/// `count` timestamps spread evenly over `[start_ms, end_ms)`, item `i` at a
/// random instant of its own slot: the timestamps never decrease with `i`,
/// so rows written in index order land at the right edge of the primary key.
#[derive(Debug, Clone, Copy)]
pub struct TimeSlots {
    start_ms: u64,
    span_ms: u64,
    count: u64,
}

impl TimeSlots {
    pub fn new(start_ms: u64, end_ms: u64, count: u64) -> Self {
        assert!(end_ms > start_ms, "an empty time window");
        Self {
            start_ms,
            span_ms: end_ms - start_ms,
            count: count.max(1),
        }
    }

    fn slot_start(&self, i: u64) -> u64 {
        (u128::from(i) * u128::from(self.span_ms) / u128::from(self.count)) as u64
    }

    pub fn timestamp(&self, i: u64, rng: &mut SeedRng) -> u64 {
        let from = self.slot_start(i);
        let width = (self.slot_start(i + 1) - from).max(1);
        self.start_ms + from + rng.below(width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::random::Stream;

    #[test]
    fn v7_layout_version_variant_and_timestamp() {
        let ms = 1_760_000_000_123;
        for random in [0u128, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let id = uuid_v7(ms, random);
            assert_eq!(id.get_version_num(), 7, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(unix_ms(&id), ms);
            let text = id.to_string();
            assert_eq!(&text[14..15], "7", "{text}");
            assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
            // uuid's own reading of the timestamp agrees.
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), ms);
        }
        // The random bits land where they should: 12 in rand_a, 62 in rand_b.
        let all_ones = uuid_v7(0, u128::MAX);
        assert_eq!(all_ones.to_string(), "00000000-0000-7fff-bfff-ffffffffffff");
    }

    #[test]
    fn v7_ids_sort_by_timestamp() {
        let mut rng = SeedRng::new(5, Stream::UserIds);
        let earlier = seeded_v7(1_000, &mut rng);
        let later = seeded_v7(1_001, &mut rng);
        assert!(earlier < later);
        assert_eq!(unix_ms(&later), 1_001);
    }

    #[test]
    fn slots_never_decrease_and_stay_in_the_window() {
        let mut rng = SeedRng::new(9, Stream::Posts);
        for (count, span) in [(10u64, 1_000_000u64), (1_000, 999), (1, 5)] {
            let slots = TimeSlots::new(500, 500 + span, count);
            let mut previous = 0;
            for i in 0..count {
                let t = slots.timestamp(i, &mut rng);
                assert!(t >= previous && t >= 500 && t < 500 + span);
                assert!(t < 500 + slots.slot_start(i + 1) || span < count);
                previous = t;
            }
        }
    }
}
