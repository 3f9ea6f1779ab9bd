//! Peer health (docs/design.md §6): whether a connected peer is answering, so routing leaves a sick peer out — as a
//! relay and as a lender — within about a second and a half, and takes it back once it answers again.
//!
//! The evidence is the ping every connection runs (every [`DEFAULT_PING_INTERVAL_MS`]) and what the borrower sees:
//! - a peer is **unhealthy** when it has been connected for a while and no ping has been answered for
//!   [`DEFAULT_UNHEALTHY_AFTER_MS`] (a frozen process keeps its TCP connection open and says nothing: only the
//!   silence shows it);
//! - a stream to it that could not be opened, or a request it did not acknowledge, in time marks it unhealthy at
//!   once ([`PeerHealth::failed`]);
//! - it recovers with the next ping answered after the failure — the ping is the probe, so recovery costs no real
//!   request, and a sick peer is never flooded to find out whether it is back.
//!
//! Pure: the node's PeerBook feeds it connection and ping events; the rules are tested here.

/// How often each connection is pinged.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 500;
/// How long a ping may go unanswered (the ping's own timeout).
pub const DEFAULT_PING_TIMEOUT_MS: u64 = 1_000;
/// A connected peer that has answered no ping for this long is unhealthy: three ping intervals, so one late pong
/// on a loaded machine is not enough, and a frozen peer is left out within about a second and a half.
pub const DEFAULT_UNHEALTHY_AFTER_MS: u64 = 1_500;

/// One peer's health evidence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerHealth {
    connected_at_ms: Option<u64>,
    last_answer_ms: Option<u64>,
    failed_at_ms: Option<u64>,
}

impl PeerHealth {
    /// A connection to the peer was established at `now`.
    pub fn connected(&mut self, now_ms: u64) {
        if self.connected_at_ms.is_none() {
            self.connected_at_ms = Some(now_ms);
        }
    }

    /// The last connection closed.
    pub fn disconnected(&mut self) {
        *self = PeerHealth {
            failed_at_ms: self.failed_at_ms,
            ..PeerHealth::default()
        };
    }

    /// The peer answered a ping (the probe) at `now`: a failure before it is forgiven.
    pub fn answered(&mut self, now_ms: u64) {
        self.last_answer_ms = Some(self.last_answer_ms.map_or(now_ms, |t| t.max(now_ms)));
        if self.failed_at_ms.is_some_and(|f| f <= now_ms) {
            self.failed_at_ms = None;
        }
    }

    /// A stream to the peer could not be opened, or it did not acknowledge a request, in time.
    pub fn failed(&mut self, now_ms: u64) {
        self.failed_at_ms = Some(now_ms);
    }

    /// Whether routing may use the peer at `now`: connected, no unforgiven failure, and heard from (a ping
    /// answered, or the connection itself) within `unhealthy_after_ms`.
    pub fn healthy(&self, now_ms: u64, unhealthy_after_ms: u64) -> bool {
        let Some(since) = self.connected_at_ms else {
            return false;
        };
        if self.failed_at_ms.is_some() {
            return false;
        }
        let heard = self.last_answer_ms.map_or(since, |t| t.max(since));
        now_ms.saturating_sub(heard) <= unhealthy_after_ms
    }

    /// Whether there is evidence against the peer at `now`: an unforgiven failure, or connected and silent for
    /// longer than `unhealthy_after_ms`. A peer this node is not connected to is not sick, only unknown (a relay
    /// may still reach it as a lender).
    pub fn sick(&self, now_ms: u64, unhealthy_after_ms: u64) -> bool {
        self.failed_at_ms.is_some()
            || (self.connected_at_ms.is_some() && !self.healthy(now_ms, unhealthy_after_ms))
    }

    /// Whether routing leaves the peer out at `now`, given whether some other peer of the same role is fine: a
    /// failed stream always does; silence only while another peer answers. On an overloaded machine every pong can
    /// come late, and leaving everyone out would refuse every borrow; a stream that cannot be opened or acknowledged
    /// within seconds settles such a peer then, with the token unspent.
    pub fn left_out(&self, now_ms: u64, unhealthy_after_ms: u64, another_is_fine: bool) -> bool {
        self.failed_at_ms.is_some() || (another_is_fine && self.sick(now_ms, unhealthy_after_ms))
    }

    /// When the peer was last heard from (a ping answered), if ever.
    pub fn last_answer_ms(&self) -> Option<u64> {
        self.last_answer_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: u64 = DEFAULT_UNHEALTHY_AFTER_MS;

    #[test]
    fn a_silent_peer_turns_unhealthy_and_one_answer_brings_it_back() {
        let mut h = PeerHealth::default();
        assert!(!h.healthy(0, AFTER), "not connected");
        assert!(!h.sick(0, AFTER), "not connected is unknown, not sick");
        h.connected(1_000);
        assert!(
            h.healthy(1_000 + AFTER, AFTER),
            "a new connection gets one window"
        );
        h.answered(1_500);
        h.answered(2_000);
        assert!(h.healthy(2_000 + AFTER, AFTER));
        // Frozen: pings stop being answered.
        assert!(!h.healthy(2_000 + AFTER + 1, AFTER) && h.sick(2_000 + AFTER + 1, AFTER));
        // The next ping answered is the probe that brings it back.
        h.answered(9_000);
        assert!(h.healthy(9_000, AFTER));
    }

    #[test]
    fn a_failed_stream_marks_it_at_once_until_a_later_answer() {
        let mut h = PeerHealth::default();
        h.connected(0);
        h.answered(1_000);
        h.failed(1_100);
        assert!(!h.healthy(1_100, AFTER), "unhealthy at once");
        h.answered(1_050);
        assert!(
            !h.healthy(1_200, AFTER),
            "an answer from before the failure does not forgive it"
        );
        h.answered(1_600);
        assert!(h.healthy(1_600, AFTER));
    }

    #[test]
    fn silence_leaves_a_peer_out_only_while_another_answers() {
        let mut h = PeerHealth::default();
        h.connected(0);
        let late = AFTER + 1;
        assert!(h.left_out(late, AFTER, true), "silent, and another peer answers");
        assert!(
            !h.left_out(late, AFTER, false),
            "everyone silent: a loaded machine, not a frozen peer"
        );
        h.failed(late);
        assert!(
            h.left_out(late, AFTER, false),
            "a failed stream always leaves it out"
        );
    }

    #[test]
    fn a_reconnection_starts_afresh_but_keeps_an_unforgiven_failure() {
        let mut h = PeerHealth::default();
        h.connected(0);
        h.failed(100);
        h.disconnected();
        assert!(!h.healthy(200, AFTER));
        assert!(
            h.sick(200, AFTER),
            "a failure is evidence even while disconnected"
        );
        h.connected(5_000);
        assert!(!h.healthy(5_000, AFTER), "still failed until it answers");
        h.answered(5_100);
        assert!(h.healthy(5_100, AFTER));
        assert_eq!(h.last_answer_ms(), Some(5_100));
    }
}
