//! The request mix of `loadtest rest`: which operations, by what weights,
//! and drawing one. Knows nothing of HTTP.

use std::str::FromStr;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Feed,
    Create,
    Get,
    Search,
}

pub(super) const OPS: [Op; 4] = [Op::Feed, Op::Create, Op::Get, Op::Search];

impl Op {
    pub(super) fn name(self) -> &'static str {
        match self {
            Op::Feed => "feed",
            Op::Create => "create",
            Op::Get => "get",
            Op::Search => "search",
        }
    }
}

/// Cumulative weights, in [`OPS`] order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mix([u32; 4]);

impl FromStr for Mix {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let mut weights = [0u32; 4];
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("expected name=weight, got {part:?}"))?;
            let slot = OPS
                .iter()
                .position(|op| op.name() == name.trim())
                .ok_or_else(|| format!("unknown operation {name:?} (feed, create, get, search)"))?;
            weights[slot] = weight
                .trim()
                .parse()
                .map_err(|_| format!("bad weight {weight:?}"))?;
        }
        let mut cumulative = [0u32; 4];
        let mut sum = 0u32;
        for (total, weight) in cumulative.iter_mut().zip(weights) {
            sum = sum.checked_add(weight).ok_or("weights too large")?;
            *total = sum;
        }
        if sum == 0 {
            return Err("the mix needs a positive weight".into());
        }
        Ok(Mix(cumulative))
    }
}

impl Mix {
    /// The one operation with a weight, if only one has: then the CPU per
    /// request is that operation's.
    pub(super) fn only(&self) -> Option<Op> {
        let mut weighted = OPS
            .iter()
            .zip(self.0)
            .scan(0, |before, (op, total)| {
                let weight = total - *before;
                *before = total;
                Some((*op, weight))
            })
            .filter(|(_, weight)| *weight > 0);
        let (op, _) = weighted.next()?;
        weighted.next().is_none().then_some(op)
    }

    pub(super) fn pick(&self, rng: &mut Rng) -> Op {
        let draw = rng.below(u64::from(self.0[3])) as u32;
        OPS[self
            .0
            .iter()
            .position(|total| draw < *total)
            .expect("draw below the sum")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix: Mix = "feed=3, get=1".parse().unwrap();
        assert_eq!(mix, Mix([3, 3, 4, 4]));
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[mix.pick(&mut rng) as usize] += 1;
        }
        assert_eq!((counts[1], counts[3]), (0, 0));
        assert!((2800..3200).contains(&counts[0]), "{counts:?}");
        assert_eq!(mix.only(), None);
        assert_eq!("create=1".parse::<Mix>().unwrap().only(), Some(Op::Create));
        assert_eq!(
            "get=0,search=5".parse::<Mix>().unwrap().only(),
            Some(Op::Search)
        );
        for bad in ["feed", "feed=x", "nap=1", "feed=0", ""] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
    }
}
