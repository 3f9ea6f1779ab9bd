//! The coarse headroom a lender attests (docs/design.md §5): a leaf, so that what reads it — attestations,
//! capabilities, routing — need not import each other.

use serde::{Deserialize, Serialize};

/// Coarse headroom: what a lender can lend before its window resets.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum HeadroomBucket {
    /// Nothing to lend.
    None,
    /// Under a quarter of its capacity left.
    Low,
    /// A quarter to two thirds left.
    Medium,
    /// Over two thirds left.
    High,
}

impl HeadroomBucket {
    /// The bucket for `remaining` of `capacity` requests (after the lender's own reserve).
    pub fn from_remaining(remaining: u64, capacity: u64) -> Self {
        if remaining == 0 || capacity == 0 {
            return HeadroomBucket::None;
        }
        let r = remaining.min(capacity) as f64 / capacity as f64;
        if r < 0.25 {
            HeadroomBucket::Low
        } else if r <= 2.0 / 3.0 {
            HeadroomBucket::Medium
        } else {
            HeadroomBucket::High
        }
    }

    /// The weight routing gives this bucket (roughly the midpoint of its range).
    pub fn weight(self) -> f64 {
        match self {
            HeadroomBucket::None => 0.0,
            HeadroomBucket::Low => 0.125,
            HeadroomBucket::Medium => 0.45,
            HeadroomBucket::High => 0.85,
        }
    }

    /// A lowercase label for metrics and tables.
    pub fn label(self) -> &'static str {
        match self {
            HeadroomBucket::None => "none",
            HeadroomBucket::Low => "low",
            HeadroomBucket::Medium => "medium",
            HeadroomBucket::High => "high",
        }
    }
}
