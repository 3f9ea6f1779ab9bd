//! What a member's behaviour tells the others about its exhaustion (docs/design.md §9, issue 13), as settings of
//! the shipped rules that node and simulator both follow.
//!
//! A lender that names the most exhausted member as the borrower is right far above chance when only exhausted
//! members borrow and the `none` headroom bucket is gossiped to the whole group; an admin that names the member who
//! drew the most tokens is right far above chance when refills follow spending. Four levers, each a setting
//! ([`Exposure`]):
//!
//! - **cover borrowing** ([`Exposure::cover_share`]): a member that could serve a request itself still borrows it
//!   with this probability (and so lends as much), so borrowing no longer means exhaustion;
//! - **a randomized borrow threshold** ([`Exposure::reserve`]): a member whose own headroom has fallen below a
//!   threshold drawn afresh for each request, uniformly between 0 and `reserve` of its capacity, borrows rather than
//!   spend its last units, so borrowers are not only the members at zero;
//! - **an attestation floor** ([`Exposure::attest_floor`]): a member attests no lower than the floor — `low`: a
//!   member with nothing to lend attests `low` rather than `none`; `medium`: a member under a quarter of its
//!   capacity attests `medium` too. Its lender refuses borrows it cannot serve, as it does whenever headroom runs
//!   out between attestations, so the gossip no longer singles out the exhausted, at the cost of those refusals;
//! - **constant-rate issuance** ([`Exposure::issuance`], [`crate::refill::Issuance`]): every member draws its whole
//!   quota of each epoch on one schedule, whatever it spends, so refill volume and timing say nothing.
//!
//! A borrow made by choice (cover or threshold) falls back to the member's own upstream when it fails, so these
//! borrows never cost a request. Pure: the caller passes the randomness.

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::attestation::HeadroomBucket;
use crate::refill::Issuance;

/// Largest [`Exposure::cover_share`] accepted: beyond half, cover borrows would be most of the traffic.
pub const MAX_COVER_SHARE: f64 = 0.5;
/// Largest [`Exposure::reserve`] accepted: a member borrows before it has used half of its own capacity at most.
pub const MAX_RESERVE: f64 = 0.5;

/// How much a member's behaviour may expose its exhaustion (`[exposure]` in the node's config and in the
/// simulator's scenarios).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exposure {
    /// Share of requests a member could serve itself that it borrows anyway (0 to [`MAX_COVER_SHARE`]).
    pub cover_share: f64,
    /// Borrow when the own headroom left (a fraction of capacity) is below a threshold drawn uniformly from 0 to
    /// this, for each request (0 to [`MAX_RESERVE`]; 0: borrow only what the own upstreams cannot serve).
    pub reserve: f64,
    /// The lowest bucket attested: a member below it attests it.
    pub attest_floor: Floor,
    /// When the member draws tokens: as it spends them, or its whole quota on a schedule.
    pub issuance: Issuance,
}

impl Exposure {
    /// No lever at all: borrow only when the own upstreams cannot serve, attest `none`, refill as tokens are spent
    /// (lendmesh before issue 13; the simulator's baseline).
    pub const EXPOSED: Exposure = Exposure {
        cover_share: 0.0,
        reserve: 0.0,
        attest_floor: Floor::None,
        issuance: Issuance::Demand,
    };
}

impl Exposure {
    /// The node's default, chosen from the simulator's policy comparison (sim/docs/exposure.md): attestations say
    /// nothing of headroom (floor `high`), and every member draws its whole quota on the schedule. In the office
    /// scenario it brings the lender's linkage to chance and the admin's to chance, for about 13 % more relay
    /// traffic and no served demand.
    pub const SHIPPED: Exposure = Exposure {
        cover_share: 0.0,
        reserve: 0.0,
        attest_floor: Floor::High,
        issuance: Issuance::Schedule,
    };
}

impl Default for Exposure {
    /// [`Exposure::SHIPPED`].
    fn default() -> Self {
        Exposure::SHIPPED
    }
}

/// The lowest headroom bucket a member attests ([`Exposure::attest_floor`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Floor {
    /// No floor: the true bucket, `none` included.
    #[default]
    None,
    /// `none` is attested as `low`.
    Low,
    /// `none` and `low` are attested as `medium`.
    Medium,
    /// Every bucket is attested as `high`: the attestation says nothing of headroom (borrowers learn which
    /// lenders are dry from their refusals).
    High,
}

impl Floor {
    /// The bucket this floor raises lower buckets to.
    pub fn bucket(self) -> HeadroomBucket {
        match self {
            Floor::None => HeadroomBucket::None,
            Floor::Low => HeadroomBucket::Low,
            Floor::Medium => HeadroomBucket::Medium,
            Floor::High => HeadroomBucket::High,
        }
    }
}

/// Where one request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// This member's own upstream.
    Own,
    /// A lender, because the member's own upstreams cannot serve it.
    Borrow,
    /// A lender, though the member could have served it (a cover borrow).
    Cover,
    /// A lender, because the member's own headroom is below this request's threshold (it could still serve it).
    Early,
}

impl Route {
    /// Whether this is a borrow the member chose (it falls back to its own upstream when the borrow fails).
    pub fn by_choice(self) -> bool {
        matches!(self, Route::Cover | Route::Early)
    }
}

impl Exposure {
    /// Refuses a share outside 0..=[`MAX_COVER_SHARE`] or a reserve outside 0..=[`MAX_RESERVE`].
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=MAX_COVER_SHARE).contains(&self.cover_share) {
            return Err(format!(
                "cover_share must be from 0 to {MAX_COVER_SHARE} (got {})",
                self.cover_share
            ));
        }
        if !(0.0..=MAX_RESERVE).contains(&self.reserve) {
            return Err(format!(
                "reserve must be from 0 to {MAX_RESERVE} (got {})",
                self.reserve
            ));
        }
        Ok(())
    }

    /// Where a request goes. `own_left` is the share of capacity left on the best own upstream that serves the
    /// request (`None`: none can serve it now). Own, unless the threshold or the cover draw sends it out.
    pub fn route(&self, own_left: Option<f64>, rng: &mut impl RngCore) -> Route {
        let Some(left) = own_left else {
            return Route::Borrow;
        };
        if self.reserve > 0.0 && left < self.reserve && unit(rng) * self.reserve > left {
            return Route::Early;
        }
        if self.cover_share > 0.0 && unit(rng) < self.cover_share {
            Route::Cover
        } else {
            Route::Own
        }
    }

    /// The bucket to attest for a true `bucket`: no lower than the floor.
    pub fn attested(&self, bucket: HeadroomBucket) -> HeadroomBucket {
        bucket.max(self.attest_floor.bucket())
    }

    /// The window reset time to attest at `now` for a true `resets_at_ms`: under any floor, `now` (it says
    /// nothing). Routing reads a reset time only for a lender attesting `none`, which a floor never does, and a
    /// reset time that follows use (a provider's rate-limit window) would tell when a member began spending.
    pub fn attested_reset(&self, resets_at_ms: u64, now_ms: u64) -> u64 {
        if self.attest_floor == Floor::None {
            resets_at_ms
        } else {
            now_ms
        }
    }
}

fn unit(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn cover_borrows_come_at_their_share_and_never_replace_a_needed_borrow() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let none = Exposure::EXPOSED;
        assert!((0..1000).all(|_| none.route(Some(0.01), &mut rng) == Route::Own));
        assert!((0..1000).all(|_| none.route(None, &mut rng) == Route::Borrow));
        let cover = Exposure {
            cover_share: 0.2,
            ..Exposure::EXPOSED
        };
        let n = (0..10_000)
            .filter(|_| cover.route(Some(0.9), &mut rng) == Route::Cover)
            .count();
        assert!((1_800..2_200).contains(&n), "{n} cover borrows of 10 000");
        assert!((0..1000).all(|_| cover.route(None, &mut rng) == Route::Borrow));
        for bad in [
            Exposure {
                cover_share: 0.6,
                ..Exposure::EXPOSED
            },
            Exposure {
                reserve: -0.1,
                ..Exposure::EXPOSED
            },
            Exposure {
                reserve: f64::NAN,
                ..Exposure::EXPOSED
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_threshold_borrows_more_the_less_is_left_and_never_above_the_reserve() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let x = Exposure {
            reserve: 0.2,
            ..Exposure::EXPOSED
        };
        let early = |left: f64, rng: &mut ChaCha20Rng| {
            (0..10_000)
                .filter(|_| x.route(Some(left), rng) == Route::Early)
                .count()
        };
        // A threshold uniform on [0, 0.2): P(borrow) = 1 - left / 0.2.
        assert_eq!(early(0.2, &mut rng), 0);
        assert_eq!(early(0.5, &mut rng), 0);
        let half = early(0.1, &mut rng);
        assert!((4_700..5_300).contains(&half), "{half}");
        let most = early(0.02, &mut rng);
        assert!((8_800..9_200).contains(&most), "{most}");
        assert!(Route::Early.by_choice() && Route::Cover.by_choice());
        assert!(!Route::Own.by_choice() && !Route::Borrow.by_choice());
    }

    #[test]
    fn the_floor_raises_what_is_below_it_and_nothing_else() {
        use HeadroomBucket::{High, Low, Medium, None};
        let at = |floor| Exposure {
            attest_floor: floor,
            ..Exposure::EXPOSED
        };
        let all = [None, Low, Medium, High];
        let seen = |floor| all.map(|b| at(floor).attested(b));
        assert_eq!(seen(Floor::None), all);
        assert_eq!(seen(Floor::Low), [Low, Low, Medium, High]);
        assert_eq!(seen(Floor::Medium), [Medium, Medium, Medium, High]);
        assert_eq!(seen(Floor::High), [High; 4]);
        assert_eq!(at(Floor::None).attested_reset(9_000, 10), 9_000);
        assert_eq!(
            at(Floor::Low).attested_reset(9_000, 10),
            10,
            "no reset time under a floor"
        );
        assert_eq!(
            Exposure::EXPOSED.attested(HeadroomBucket::None),
            HeadroomBucket::None
        );
    }
}
