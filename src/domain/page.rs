use serde::Deserialize;

use super::ValidationError;

/// A window into a feed: `offset` posts skipped, at most `limit` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPage {
    offset: u32,
    limit: u32,
}

impl FeedPage {
    pub const MAX_OFFSET: u32 = 100_000;
    pub const MAX_LIMIT: u32 = 1_000;
    const DEFAULT_LIMIT: u32 = 10;

    pub fn new(offset: u32, limit: u32) -> Result<Self, ValidationError> {
        if offset > Self::MAX_OFFSET {
            return Err(ValidationError(format!(
                "offset must be between 0 and {}, got {offset}",
                Self::MAX_OFFSET
            )));
        }
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(ValidationError(format!(
                "limit must be between 1 and {}, got {limit}",
                Self::MAX_LIMIT
            )));
        }
        Ok(Self { offset, limit })
    }

    pub fn offset(&self) -> u32 {
        self.offset
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// This page of a feed that holds its newest `depth` posts only: cut to
    /// end at `depth`, or `None` when it starts there or beyond.
    pub fn within(self, depth: u32) -> Option<Self> {
        let room = depth.checked_sub(self.offset).filter(|room| *room > 0)?;
        Some(Self {
            offset: self.offset,
            limit: self.limit.min(room),
        })
    }
}

impl Default for FeedPage {
    fn default() -> Self {
        Self {
            offset: 0,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

impl<'de> Deserialize<'de> for FeedPage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            offset: Option<u32>,
            limit: Option<u32>,
        }
        let raw = Raw::deserialize(deserializer)?;
        let default = Self::default();
        Self::new(
            raw.offset.unwrap_or(default.offset),
            raw.limit.unwrap_or(default.limit),
        )
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let page: FeedPage = serde_urlencoded::from_str("").unwrap();
        assert_eq!((page.offset(), page.limit()), (0, 10));
        let page: FeedPage = serde_urlencoded::from_str("offset=5&limit=1000").unwrap();
        assert_eq!((page.offset(), page.limit()), (5, 1000));
        for bad in [
            "limit=0",
            "limit=1001",
            "offset=-1",
            "offset=100001",
            "limit=ten",
            "limit=1.5",
        ] {
            assert!(
                serde_urlencoded::from_str::<FeedPage>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn pages_are_cut_at_the_depth() {
        let page = |offset, limit| FeedPage::new(offset, limit).unwrap();
        assert_eq!(page(0, 10).within(2000), Some(page(0, 10)));
        assert_eq!(page(1990, 10).within(2000), Some(page(1990, 10)));
        assert_eq!(page(1995, 10).within(2000), Some(page(1995, 5)));
        assert_eq!(page(1999, 1000).within(2000), Some(page(1999, 1)));
        assert_eq!(page(2000, 10).within(2000), None);
        assert_eq!(page(100_000, 1000).within(2000), None);
    }
}

/// Paging bounds over the whole range of the inputs.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_page_is_valid_exactly_within_its_bounds(offset in any::<u32>(), limit in any::<u32>()) {
            let valid = offset <= FeedPage::MAX_OFFSET && (1..=FeedPage::MAX_LIMIT).contains(&limit);
            match FeedPage::new(offset, limit) {
                Ok(page) => {
                    prop_assert!(valid);
                    prop_assert_eq!((page.offset(), page.limit()), (offset, limit));
                }
                Err(_) => prop_assert!(!valid),
            }
        }

        #[test]
        fn a_page_within_a_depth_ends_at_it_at_most(
            offset in 0..=FeedPage::MAX_OFFSET,
            limit in 1..=FeedPage::MAX_LIMIT,
            depth in 0u32..200_000,
        ) {
            let page = FeedPage::new(offset, limit).unwrap();
            match page.within(depth) {
                Some(cut) => {
                    prop_assert!(offset < depth);
                    prop_assert_eq!(cut.offset(), offset);
                    prop_assert_eq!(cut.limit(), limit.min(depth - offset));
                    prop_assert!(cut.limit() >= 1);
                }
                None => prop_assert!(offset >= depth),
            }
        }
    }
}
