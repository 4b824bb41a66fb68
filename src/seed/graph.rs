//! The follow graph and who writes the posts.
//!
//! Every user gets a popularity rank (a seeded random permutation, so the
//! celebrities are scattered over the id range, not the oldest accounts).
//! Each user follows `d` others, `d` drawn from a log-normal around the
//! median (most users follow tens of people, a few hundreds); each followed
//! user is drawn by rank from a power law, so the head of the ranking
//! collects most of the follows: at a million users the first ranks have
//! hundreds of thousands of followers while the median user has about ten.
//! Self-follows and repeats are redrawn, so a user's list has no duplicate.

use super::random::{SeedRng, Stream, Zipf};

/// Exponent of the popularity power law of follows (a heavier head with a
/// larger exponent; must stay below 1).
pub const FOLLOW_EXPONENT: f64 = 0.8;
/// Exponent of the power law of who writes the posts: the popular post more.
pub const AUTHOR_EXPONENT: f64 = 0.6;
/// Spread of the log-normal number of follows (the sigma of its logarithm).
pub const DEGREE_SIGMA: f64 = 0.7;
/// Nobody follows more than this many users.
pub const MAX_FOLLOWS: u32 = 1_000;

/// Popularity rank to user index: a seeded permutation of `0..n`.
pub struct Popularity {
    by_rank: Vec<u32>,
}

impl Popularity {
    pub fn new(seed: u64, n: u32) -> Self {
        let mut rng = SeedRng::new(seed, Stream::Popularity);
        let mut by_rank: Vec<u32> = (0..n).collect();
        // Fisher-Yates.
        for i in (1..by_rank.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            by_rank.swap(i, j);
        }
        Self { by_rank }
    }

    pub fn user(&self, rank: u64) -> u32 {
        self.by_rank[rank as usize]
    }

    pub fn users(&self) -> u32 {
        self.by_rank.len() as u32
    }
}

/// How many users one user follows: log-normal with the given median,
/// at least 1, at most [`MAX_FOLLOWS`] (and at most everybody else).
#[derive(Debug, Clone, Copy)]
pub struct FollowCount {
    median: f64,
    sigma: f64,
    most: u32,
}

impl FollowCount {
    pub fn new(median: u32, users: u32) -> Self {
        Self {
            median: f64::from(median),
            sigma: DEGREE_SIGMA,
            most: MAX_FOLLOWS.min(users.saturating_sub(1)),
        }
    }

    pub fn sample(&self, rng: &mut SeedRng) -> u32 {
        if self.most == 0 {
            return 0;
        }
        let draw = (self.median * (self.sigma * rng.normal()).exp()).round();
        (draw as u32).clamp(1, self.most)
    }

    /// The expected mean, before clamping: `median * e^(sigma^2 / 2)`.
    pub fn mean(&self) -> f64 {
        self.median * (self.sigma * self.sigma / 2.0).exp()
    }
}

/// Streams the follow lists, follower by follower.
pub struct Follows<'a> {
    users: u32,
    popularity: &'a Popularity,
    ranks: Zipf,
    count: FollowCount,
    rng: SeedRng,
}

impl<'a> Follows<'a> {
    pub fn new(seed: u64, median: u32, popularity: &'a Popularity) -> Self {
        let users = popularity.users();
        Self {
            users,
            popularity,
            ranks: Zipf::new(u64::from(users.max(1)), FOLLOW_EXPONENT),
            count: FollowCount::new(median, users),
            rng: SeedRng::new(seed, Stream::Follows),
        }
    }

    /// Fills `out` with the users that `follower` follows, ascending, never
    /// `follower` itself, never twice. Call for followers `0, 1, 2, ...`.
    pub fn of(&mut self, follower: u32, out: &mut Vec<u32>) {
        out.clear();
        let want = self.count.sample(&mut self.rng) as usize;
        // Power-law draws until they keep hitting the ones already taken
        // (only when a user follows a large part of a small network), then
        // uniform draws, then a sweep: the loop always ends.
        let mut misses = 0;
        while out.len() < want {
            let candidate = if misses < 64 + 4 * want {
                self.popularity.user(self.ranks.sample(&mut self.rng))
            } else if misses < 128 + 8 * want {
                self.rng.below(u64::from(self.users)) as u32
            } else {
                self.sweep(follower, want, out);
                break;
            };
            if candidate == follower {
                misses += 1;
                continue;
            }
            match out.binary_search(&candidate) {
                Ok(_) => misses += 1,
                Err(at) => out.insert(at, candidate),
            }
        }
    }

    /// Takes the first free users after a random start until `want`.
    fn sweep(&mut self, follower: u32, want: usize, out: &mut Vec<u32>) {
        let start = self.rng.below(u64::from(self.users)) as u32;
        for step in 0..self.users {
            if out.len() >= want {
                break;
            }
            let candidate = (start + step) % self.users;
            if candidate == follower {
                continue;
            }
            if let Err(at) = out.binary_search(&candidate) {
                out.insert(at, candidate);
            }
        }
    }
}

/// Who writes each post: a power law over the same popularity ranks.
pub struct Authors<'a> {
    popularity: &'a Popularity,
    ranks: Zipf,
}

impl<'a> Authors<'a> {
    pub fn new(popularity: &'a Popularity) -> Self {
        Self {
            popularity,
            ranks: Zipf::new(u64::from(popularity.users().max(1)), AUTHOR_EXPONENT),
        }
    }

    pub fn sample(&self, rng: &mut SeedRng) -> u32 {
        self.popularity.user(self.ranks.sample(rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_counts_are_tens_with_a_long_tail() {
        let count = FollowCount::new(25, 1_000_000);
        let mut rng = SeedRng::new(42, Stream::Follows);
        let mut draws: Vec<u32> = (0..100_000).map(|_| count.sample(&mut rng)).collect();
        assert!(draws.iter().all(|&d| (1..=MAX_FOLLOWS).contains(&d)));
        let mean = draws.iter().map(|&d| f64::from(d)).sum::<f64>() / draws.len() as f64;
        assert!((mean - count.mean()).abs() < 1.0, "mean {mean}");
        assert!((25.0..40.0).contains(&mean), "mean {mean}");
        draws.sort_unstable();
        let median = draws[draws.len() / 2];
        assert!((22..=28).contains(&median), "median {median}");
        let tens = draws.iter().filter(|&&d| (10..100).contains(&d)).count();
        assert!(tens > 80_000, "{tens} of 100000 follow 10..99 users");
        assert!(draws[draws.len() - 1] > 150, "a long tail");
    }

    #[test]
    fn follow_counts_fit_tiny_networks() {
        let mut rng = SeedRng::new(1, Stream::Follows);
        assert_eq!(FollowCount::new(25, 1).sample(&mut rng), 0);
        assert!((0..100).all(|_| FollowCount::new(25, 3).sample(&mut rng) <= 2));
    }

    #[test]
    fn lists_are_sorted_unique_and_never_self() {
        for users in [1u32, 2, 3, 10, 5_000] {
            let popularity = Popularity::new(42, users);
            let mut follows = Follows::new(42, 25, &popularity);
            let mut list = Vec::new();
            for follower in 0..users {
                follows.of(follower, &mut list);
                assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
                assert!(!list.contains(&follower));
                assert!(list.iter().all(|&u| u < users));
                assert!(list.len() < users.max(1) as usize);
            }
        }
    }

    #[test]
    fn popularity_is_skewed_and_deterministic() {
        let users = 20_000;
        let in_degrees = |seed| {
            let popularity = Popularity::new(seed, users);
            let mut follows = Follows::new(seed, 25, &popularity);
            let mut followers = vec![0u32; users as usize];
            let mut list = Vec::new();
            for follower in 0..users {
                follows.of(follower, &mut list);
                for &u in &list {
                    followers[u as usize] += 1;
                }
            }
            followers
        };
        let followers = in_degrees(42);
        assert_eq!(followers, in_degrees(42));
        assert_ne!(followers, in_degrees(43));
        let mut sorted = followers.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let median = sorted[sorted.len() / 2];
        assert!(sorted[0] > 5_000, "top {}", sorted[0]);
        assert!(
            sorted[0] > 100 * median.max(1),
            "top {} median {median}",
            sorted[0]
        );
        assert!(sorted[sorted.len() - 1] < 10, "the tail is thin");
    }

    #[test]
    fn popularity_is_a_permutation() {
        let popularity = Popularity::new(7, 1_000);
        let mut users: Vec<u32> = (0..1_000).map(|r| popularity.user(r)).collect();
        assert_ne!(users[..10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        users.sort_unstable();
        assert!(users.iter().enumerate().all(|(i, &u)| i as u32 == u));
    }
}
