//! What a member's behaviour tells the others about its exhaustion (docs/design.md §9, issue 13), as settings of
//! the shipped rules that node and simulator both follow.
//!
//! A lender that names the most exhausted member as the borrower is right far above chance, because today only
//! exhausted members borrow and the `none` headroom bucket is gossiped to the whole group. Two levers, each a
//! setting ([`Exposure`]):
//!
//! - **cover borrowing** ([`Exposure::cover_share`]): a member that could serve a request itself still borrows it
//!   with this probability (and so lends as much), so borrowing no longer means exhaustion;
//! - **no exhaustion bucket** ([`Exposure::hide_exhaustion`]): a member with nothing to lend attests `low` rather
//!   than `none` (its lender refuses borrows it cannot serve, as it does whenever headroom runs out between
//!   attestations), so the gossip no longer singles out the exhausted.
//!
//! Pure: the caller passes the randomness.

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::attestation::HeadroomBucket;

/// Largest [`Exposure::cover_share`] accepted: beyond half, cover borrows would be most of the traffic.
pub const MAX_COVER_SHARE: f64 = 0.5;

/// How much a member's behaviour may expose its exhaustion (`[privacy]` in the node's config and the scenarios).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exposure {
    /// Share of requests a member could serve itself that it borrows anyway (0 to [`MAX_COVER_SHARE`]).
    pub cover_share: f64,
    /// Attest `low` instead of `none` when there is nothing to lend.
    pub hide_exhaustion: bool,
}

impl Default for Exposure {
    /// Today's behaviour: no cover borrows, the `none` bucket gossiped.
    fn default() -> Self {
        Exposure {
            cover_share: 0.0,
            hide_exhaustion: false,
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
}

impl Exposure {
    /// Refuses a share outside 0..=[`MAX_COVER_SHARE`].
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=MAX_COVER_SHARE).contains(&self.cover_share) {
            return Err(format!(
                "cover_share must be from 0 to {MAX_COVER_SHARE} (got {})",
                self.cover_share
            ));
        }
        Ok(())
    }

    /// Where a request goes: its own upstream when `can_serve_own`, unless drawn as a cover borrow.
    pub fn route(&self, can_serve_own: bool, rng: &mut impl RngCore) -> Route {
        if !can_serve_own {
            return Route::Borrow;
        }
        if self.cover_share > 0.0 && unit(rng) < self.cover_share {
            Route::Cover
        } else {
            Route::Own
        }
    }

    /// The bucket to attest for a true `bucket`.
    pub fn attested(&self, bucket: HeadroomBucket) -> HeadroomBucket {
        if self.hide_exhaustion && bucket == HeadroomBucket::None {
            HeadroomBucket::Low
        } else {
            bucket
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
        let none = Exposure::default();
        assert!((0..1000).all(|_| none.route(true, &mut rng) == Route::Own));
        assert!((0..1000).all(|_| none.route(false, &mut rng) == Route::Borrow));
        let cover = Exposure {
            cover_share: 0.2,
            ..Exposure::default()
        };
        let n = (0..10_000)
            .filter(|_| cover.route(true, &mut rng) == Route::Cover)
            .count();
        assert!((1_800..2_200).contains(&n), "{n} cover borrows of 10 000");
        assert!((0..1000).all(|_| cover.route(false, &mut rng) == Route::Borrow));
        assert!(
            Exposure {
                cover_share: 0.6,
                ..Exposure::default()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn hiding_exhaustion_attests_low_for_none_and_nothing_else_changes() {
        let hide = Exposure {
            hide_exhaustion: true,
            ..Exposure::default()
        };
        assert_eq!(hide.attested(HeadroomBucket::None), HeadroomBucket::Low);
        for b in [HeadroomBucket::Low, HeadroomBucket::Medium, HeadroomBucket::High] {
            assert_eq!(hide.attested(b), b);
        }
        assert_eq!(
            Exposure::default().attested(HeadroomBucket::None),
            HeadroomBucket::None
        );
    }
}
