//! Routing policy: which lender and which relay a borrower uses (docs/design.md §6 step 2). Pure functions of a peer table,
//! the time and an RNG, shared by the node and the simulator.
//!
//! A candidate is **eligible** as lender if it is not the borrower, was not tried for this request, is not cooling
//! down after a refusal, has an attestation no older than `max_age_ms`, and attested some headroom. Its **score**
//! is its bucket's weight discounted by the attestation's age (halved every `half_life_ms`): stale claims count
//! less.
//!
//! Policies:
//! - [`Policy::PowerOfTwo`] (default): two distinct eligible candidates uniformly at random, the better score wins.
//!   With stale information, greedy choice herds every borrower onto the same lender; two random choices keep most
//!   of the benefit of load information while spreading load (Mitzenmacher 2000).
//! - [`Policy::Greedy`]: the best score (ties at random) — the herding baseline.
//! - [`Policy::Uniform`]: any eligible candidate.
//! - [`Policy::Weighted`]: probability proportional to score.
//!
//! A sticky lender (conversation stickiness) is used whenever it is still eligible. Relays are chosen uniformly
//! among connected members other than the borrower and the lender.

use std::str::FromStr;

use rand_core::RngCore;

use crate::attestation::{DEFAULT_WINDOW_MS, HeadroomBucket};
use crate::capability::{Capability, Need};
use crate::ids::PeerId;

/// A lender-selection policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Better of two random candidates (default).
    #[default]
    #[serde(rename = "p2c")]
    PowerOfTwo,
    /// Most headroom.
    Greedy,
    /// Uniformly random.
    Uniform,
    /// Random, weighted by headroom.
    Weighted,
}

impl Policy {
    /// All policies, for comparisons.
    pub const ALL: [Policy; 4] = [
        Policy::PowerOfTwo,
        Policy::Greedy,
        Policy::Uniform,
        Policy::Weighted,
    ];

    /// The short name (`p2c`, `greedy`, `uniform`, `weighted`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::PowerOfTwo => "p2c",
            Policy::Greedy => "greedy",
            Policy::Uniform => "uniform",
            Policy::Weighted => "weighted",
        }
    }
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown routing policy '{s}'; use p2c, greedy, uniform or weighted"))
    }
}

/// What the borrower knows about one peer.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The peer.
    pub peer: PeerId,
    /// Its last accepted attestation's bucket.
    pub headroom: HeadroomBucket,
    /// Age of that attestation.
    pub attestation_age_ms: u64,
    /// Cooling down after a refusal until this instant.
    pub cooling_until_ms: Option<u64>,
}

/// Tunables.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoutingParams {
    /// Attestations older than this are ignored.
    pub max_age_ms: u64,
    /// Age at which an attestation's score halves.
    pub half_life_ms: u64,
}

impl Default for RoutingParams {
    fn default() -> Self {
        RoutingParams {
            max_age_ms: DEFAULT_WINDOW_MS,
            half_life_ms: 30_000,
        }
    }
}

/// One lender choice to make.
#[derive(Clone, Copy, Debug)]
pub struct LenderQuery<'a> {
    /// The borrower.
    pub me: &'a PeerId,
    /// The peer table.
    pub candidates: &'a [Candidate],
    /// Peers already tried for this request.
    pub tried: &'a [PeerId],
    /// Now.
    pub now_ms: u64,
    /// The conversation's lender, if any.
    pub sticky: Option<&'a PeerId>,
}

/// Scores within this fraction of each other are a tie (broken at random). Without it, attestations of equal
/// headroom made a fraction of a second apart decide every pairing: the lender that attested first loses all of
/// them until it attests again, and is starved.
pub const TIE_TOLERANCE: f64 = 0.1;

/// The age-discounted score of a candidate.
pub fn score(c: &Candidate, params: &RoutingParams) -> f64 {
    let half_lives = c.attestation_age_ms as f64 / params.half_life_ms.max(1) as f64;
    c.headroom.weight() * 0.5f64.powf(half_lives)
}

/// Whether a candidate may be chosen.
pub fn is_eligible(c: &Candidate, q: &LenderQuery<'_>, params: &RoutingParams) -> bool {
    &c.peer != q.me
        && !q.tried.contains(&c.peer)
        && c.cooling_until_ms.is_none_or(|until| until <= q.now_ms)
        && c.attestation_age_ms <= params.max_age_ms
        && c.headroom != HeadroomBucket::None
}

/// Chooses a lender, or `None` if no candidate is eligible.
pub fn choose_lender(
    policy: Policy,
    q: &LenderQuery<'_>,
    params: &RoutingParams,
    rng: &mut impl RngCore,
) -> Option<PeerId> {
    let eligible: Vec<&Candidate> = q
        .candidates
        .iter()
        .filter(|c| is_eligible(c, q, params))
        .collect();
    if let Some(sticky) = q.sticky
        && eligible.iter().any(|c| &c.peer == sticky)
    {
        return Some(*sticky);
    }
    if eligible.is_empty() {
        return None;
    }
    let chosen = match policy {
        Policy::Uniform => eligible[uniform_index(rng, eligible.len())],
        Policy::PowerOfTwo => {
            if eligible.len() == 1 {
                eligible[0]
            } else {
                let a = uniform_index(rng, eligible.len());
                let mut b = uniform_index(rng, eligible.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (ca, cb) = (eligible[a], eligible[b]);
                let (sa, sb) = (score(ca, params), score(cb, params));
                // `a` is already uniformly random, so a tie goes to either with equal chance.
                if sb > sa * (1.0 + TIE_TOLERANCE) { cb } else { ca }
            }
        }
        Policy::Greedy => {
            let best = eligible.iter().map(|c| score(c, params)).fold(f64::MIN, f64::max);
            let top: Vec<&Candidate> = eligible
                .iter()
                .copied()
                .filter(|c| score(c, params) >= best)
                .collect();
            top[uniform_index(rng, top.len())]
        }
        Policy::Weighted => {
            let total: f64 = eligible.iter().map(|c| score(c, params)).sum();
            if total <= 0.0 {
                eligible[uniform_index(rng, eligible.len())]
            } else {
                let mut x = unit_f64(rng) * total;
                let mut pick = eligible[eligible.len() - 1];
                for c in &eligible {
                    x -= score(c, params);
                    if x < 0.0 {
                        pick = c;
                        break;
                    }
                }
                pick
            }
        }
    };
    Some(chosen.peer)
}

/// One lender as the borrower knows it: its attested capabilities and what routing needs besides.
#[derive(Clone, Copy, Debug)]
pub struct Offer<'a> {
    /// The lender.
    pub peer: PeerId,
    /// Its attested capabilities.
    pub capabilities: &'a [Capability],
    /// Age of its attestation.
    pub attestation_age_ms: u64,
    /// Cooling down until this instant.
    pub cooling_until_ms: Option<u64>,
}

/// The lenders that can serve `need`, for routing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Capable {
    /// Each capable lender with the headroom of its best upstream that serves `need`.
    pub candidates: Vec<Candidate>,
    /// The earliest window reset among capable lenders with no headroom for it (for a `Retry-After`).
    pub next_reset_ms: Option<u64>,
}

/// The lenders of `offers` that serve `need` (`crate::capability`).
pub fn candidates_for(need: &Need, offers: &[Offer<'_>]) -> Capable {
    let mut out = Capable::default();
    for o in offers {
        let serving: Vec<&Capability> = o.capabilities.iter().filter(|c| c.serves(need)).collect();
        let Some(best) = serving.iter().max_by_key(|c| c.headroom) else {
            continue;
        };
        if best.headroom == HeadroomBucket::None {
            let reset = serving.iter().map(|c| c.resets_at_ms).min();
            out.next_reset_ms = match (out.next_reset_ms, reset) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out.candidates.push(Candidate {
            peer: o.peer,
            headroom: best.headroom,
            attestation_age_ms: o.attestation_age_ms,
            cooling_until_ms: o.cooling_until_ms,
        });
    }
    out
}

/// Whether `need` is served by none of `offers` although some advertise an upstream: it names an API or model no
/// member shares, so no retry helps (`no_capable_lender`, before any token is taken). Offers that advertise nothing
/// are members that only borrow, or whose upstream has no capacity: when they are all there is (the lenders are
/// away, frozen or restarting), the group has no lender now, which a retry may cure, and this is false.
pub fn nobody_serves(need: &Need, offers: &[Offer<'_>]) -> bool {
    offers.iter().any(|o| !o.capabilities.is_empty()) && candidates_for(need, offers).candidates.is_empty()
}

/// Chooses a relay uniformly among `connected`, never `me` nor `lender`.
pub fn choose_relay(
    me: &PeerId,
    lender: &PeerId,
    connected: &[PeerId],
    rng: &mut impl RngCore,
) -> Option<PeerId> {
    let options: Vec<&PeerId> = connected.iter().filter(|p| *p != me && *p != lender).collect();
    if options.is_empty() {
        return None;
    }
    Some(*options[uniform_index(rng, options.len())])
}

/// When a refused lender may be tried again: its `Retry-After` if given, else `default_ms`, plus up to 25 % jitter
/// so borrowers refused together do not return together.
pub fn cooldown_until(
    now_ms: u64,
    retry_after_ms: Option<u64>,
    default_ms: u64,
    rng: &mut impl RngCore,
) -> u64 {
    let base = retry_after_ms.unwrap_or(default_ms);
    let jitter = (base as f64 * 0.25 * unit_f64(rng)) as u64;
    now_ms.saturating_add(base).saturating_add(jitter)
}

/// Uniform in `[0, n)` without modulo bias. `n` must be positive.
pub fn uniform_index(rng: &mut impl RngCore, n: usize) -> usize {
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

/// Uniform in `[0, 1)`.
pub fn unit_f64(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn pid(seed: u8) -> PeerId {
        PeerId::from_public_key(&SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    fn cand(seed: u8, headroom: HeadroomBucket, age: u64) -> Candidate {
        Candidate {
            peer: pid(seed),
            headroom,
            attestation_age_ms: age,
            cooling_until_ms: None,
        }
    }

    #[test]
    fn never_self_tried_cooling_stale_or_empty() {
        let me = pid(1);
        let mut cooling = cand(4, HeadroomBucket::High, 0);
        cooling.cooling_until_ms = Some(2_000);
        let cands = vec![
            cand(1, HeadroomBucket::High, 0),
            cand(2, HeadroomBucket::High, 0),
            cand(3, HeadroomBucket::None, 0),
            cooling,
            cand(5, HeadroomBucket::High, 10 * 60_000),
            cand(6, HeadroomBucket::Low, 0),
        ];
        let tried = [pid(2)];
        let q = LenderQuery {
            me: &me,
            candidates: &cands,
            tried: &tried,
            now_ms: 1_000,
            sticky: None,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for policy in Policy::ALL {
            for _ in 0..200 {
                assert_eq!(
                    choose_lender(policy, &q, &RoutingParams::default(), &mut rng),
                    Some(pid(6)),
                    "{policy:?}"
                );
            }
        }
        // Once the cooldown passes, peer 4 is back.
        let q2 = LenderQuery { now_ms: 2_000, ..q };
        let picks: Vec<_> = (0..100)
            .filter_map(|_| choose_lender(Policy::Greedy, &q2, &RoutingParams::default(), &mut rng))
            .collect();
        assert!(picks.iter().all(|p| *p == pid(4)));
        // Nothing eligible.
        let all_tried = [pid(2), pid(4), pid(6)];
        let q3 = LenderQuery {
            tried: &all_tried,
            ..q2
        };
        assert_eq!(
            choose_lender(Policy::PowerOfTwo, &q3, &RoutingParams::default(), &mut rng),
            None
        );
    }

    #[test]
    fn power_of_two_prefers_headroom_but_spreads() {
        let me = pid(1);
        let cands: Vec<_> = (2..=9)
            .map(|s| {
                cand(
                    s,
                    if s == 2 {
                        HeadroomBucket::High
                    } else {
                        HeadroomBucket::Medium
                    },
                    0,
                )
            })
            .collect();
        let q = LenderQuery {
            me: &me,
            candidates: &cands,
            tried: &[],
            now_ms: 0,
            sticky: None,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..8000 {
            *counts
                .entry(choose_lender(Policy::PowerOfTwo, &q, &RoutingParams::default(), &mut rng).unwrap())
                .or_insert(0) += 1;
        }
        // The High peer wins whenever drawn (2/8 of draws ≈ 2000); others share the rest.
        let top = counts[&pid(2)];
        assert!((1700..2300).contains(&top), "{top}");
        assert_eq!(counts.len(), 8, "every candidate gets load");
        // Greedy herds onto the one High peer.
        for _ in 0..100 {
            assert_eq!(
                choose_lender(Policy::Greedy, &q, &RoutingParams::default(), &mut rng),
                Some(pid(2))
            );
        }
    }

    #[test]
    fn near_equal_scores_are_ties_so_no_lender_is_starved() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        // Three lenders with equal headroom attested 0.1 s apart: the stalest still gets about a third.
        let cands = [
            cand(2, HeadroomBucket::High, 800),
            cand(3, HeadroomBucket::High, 700),
            cand(4, HeadroomBucket::High, 900),
        ];
        let me = pid(1);
        let mut wins = std::collections::HashMap::new();
        for _ in 0..3000 {
            let q = LenderQuery {
                me: &me,
                candidates: &cands,
                tried: &[],
                now_ms: 0,
                sticky: None,
            };
            *wins
                .entry(choose_lender(Policy::PowerOfTwo, &q, &RoutingParams::default(), &mut rng).unwrap())
                .or_insert(0) += 1;
        }
        for c in &cands {
            let n = wins.get(&c.peer).copied().unwrap_or(0);
            assert!((800..1200).contains(&n), "{n} of 3000");
        }
    }

    #[test]
    fn age_discounts_score_and_sticky_wins_when_eligible() {
        let p = RoutingParams::default();
        assert!(
            score(&cand(2, HeadroomBucket::High, 60_000), &p)
                < score(&cand(3, HeadroomBucket::Medium, 0), &p)
        );
        let me = pid(1);
        let cands = vec![cand(2, HeadroomBucket::High, 0), cand(3, HeadroomBucket::Low, 0)];
        let sticky = pid(3);
        let q = LenderQuery {
            me: &me,
            candidates: &cands,
            tried: &[],
            now_ms: 0,
            sticky: Some(&sticky),
        };
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        assert_eq!(choose_lender(Policy::Greedy, &q, &p, &mut rng), Some(pid(3)));
        let tried = [pid(3)];
        let q2 = LenderQuery { tried: &tried, ..q };
        assert_eq!(choose_lender(Policy::Greedy, &q2, &p, &mut rng), Some(pid(2)));
    }

    #[test]
    fn relay_is_never_self_or_lender_and_is_uniform() {
        let (me, lender) = (pid(1), pid(2));
        let connected: Vec<_> = (1..=5).map(pid).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..3000 {
            let r = choose_relay(&me, &lender, &connected, &mut rng).unwrap();
            assert!(r != me && r != lender);
            *counts.entry(r).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| (850..1150).contains(&c)), "{counts:?}");
        assert_eq!(choose_relay(&me, &lender, &[me, lender], &mut rng), None);
    }

    #[test]
    fn cooldown_honours_retry_after_with_jitter() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        for _ in 0..100 {
            let t = cooldown_until(1000, Some(20_000), 5_000, &mut rng);
            assert!((21_000..=26_000).contains(&t), "{t}");
            let d = cooldown_until(1000, None, 5_000, &mut rng);
            assert!((6_000..=7_250).contains(&d), "{d}");
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(p.name().parse::<Policy>().unwrap(), p);
        }
        assert!("best".parse::<Policy>().is_err());
    }

    fn need(path: &str, body: &str) -> Need {
        Need::of(path, &[], &crate::scrub::Body::parse(body.as_bytes()))
    }

    fn cap(api: crate::capability::Api, models: &[&str], headroom: HeadroomBucket) -> Capability {
        Capability {
            api,
            models: models.iter().map(|m| m.to_string()).collect(),
            headroom,
            resets_at_ms: 1_000,
        }
    }

    #[test]
    fn only_capable_lenders_are_candidates_with_their_best_capable_headroom() {
        let a = [
            cap(
                crate::capability::Api::OpenAiChat,
                &["gpt-4o"],
                HeadroomBucket::High,
            ),
            cap(
                crate::capability::Api::AnthropicMessages,
                &[],
                HeadroomBucket::Low,
            ),
        ];
        let b = [cap(
            crate::capability::Api::AnthropicMessages,
            &[],
            HeadroomBucket::None,
        )];
        let c = [cap(
            crate::capability::Api::OpenAiChat,
            &[],
            HeadroomBucket::Medium,
        )];
        let offers = [
            Offer {
                peer: pid(1),
                capabilities: &a,
                attestation_age_ms: 10,
                cooling_until_ms: None,
            },
            Offer {
                peer: pid(2),
                capabilities: &b,
                attestation_age_ms: 10,
                cooling_until_ms: None,
            },
            Offer {
                peer: pid(3),
                capabilities: &c,
                attestation_age_ms: 10,
                cooling_until_ms: Some(5),
            },
        ];
        let got = candidates_for(&need("/v1/messages", r#"{"model":"claude-x"}"#), &offers);
        let peers: Vec<(PeerId, HeadroomBucket)> =
            got.candidates.iter().map(|c| (c.peer, c.headroom)).collect();
        assert_eq!(
            peers,
            [(pid(1), HeadroomBucket::Low), (pid(2), HeadroomBucket::None)]
        );
        assert_eq!(
            got.next_reset_ms,
            Some(1_000),
            "when the exhausted capable lender resets"
        );
        let got = candidates_for(&need("/v1/chat/completions", r#"{"model":"gpt-4o"}"#), &offers);
        assert_eq!(got.candidates.len(), 2);
        assert_eq!(got.candidates[1].cooling_until_ms, Some(5));
        assert!(
            candidates_for(&need("/v1/chat/completions", r#"{"model":"o3"}"#), &offers)
                .candidates
                .len()
                == 1
        );
        assert!(
            candidates_for(&need("/api/generate", "{}"), &offers)
                .candidates
                .is_empty()
        );
        assert!(nobody_serves(&need("/api/generate", "{}"), &offers));
        assert!(!nobody_serves(&need("/v1/messages", "{}"), &offers));
    }

    #[test]
    fn members_that_advertise_nothing_do_not_make_a_request_unservable() {
        let chat = [cap(crate::capability::Api::OpenAiChat, &[], HeadroomBucket::High)];
        let borrower_only = Offer {
            peer: pid(1),
            capabilities: &[],
            attestation_age_ms: 10,
            cooling_until_ms: None,
        };
        let lender = Offer {
            peer: pid(2),
            capabilities: &chat,
            attestation_age_ms: 10,
            cooling_until_ms: None,
        };
        let n = need("/v1/chat/completions", r#"{"model":"m"}"#);
        assert!(
            !nobody_serves(&n, &[borrower_only]),
            "the lenders are away: no lender now, not an unknown model"
        );
        assert!(!nobody_serves(&n, &[]));
        assert!(!nobody_serves(&n, &[borrower_only, lender]));
        let generate = need("/api/generate", "{}");
        assert!(nobody_serves(&generate, &[borrower_only, lender]));
    }
}
