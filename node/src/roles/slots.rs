//! Open relay and borrow streams per member (docs/design.md §9.3): the dispatcher takes a [`StreamSlot`] for each
//! inbound stream and the task serving it holds it until the stream is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lendmesh_protocol::PeerId;

/// Open streams per (member, protocol), at most `max` each (`[limits] open_streams`, 64 by default: half of a
/// node's relay slots, all of its lend slots); a [`StreamSlot`] gives its place back when dropped.
#[derive(Clone, Debug)]
pub struct PeerSlots {
    max: usize,
    open: Arc<Mutex<HashMap<(PeerId, bool), usize>>>,
}

/// One open stream's place.
#[derive(Debug)]
pub struct StreamSlot {
    slots: PeerSlots,
    key: (PeerId, bool),
}

impl PeerSlots {
    /// At most `max` streams of each protocol per member.
    pub fn new(max: usize) -> PeerSlots {
        PeerSlots {
            max,
            open: Arc::default(),
        }
    }

    /// A place for one more `relay` (or borrow) stream from `peer`, if it holds fewer than the most allowed.
    pub fn take(&self, peer: PeerId, relay: bool) -> Option<StreamSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry((peer, relay)).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            slots: self.clone(),
            key: (peer, relay),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_holds_at_most_its_share_and_a_closed_stream_gives_its_place_back() {
        const MAX: usize = 64;
        let slots = PeerSlots::new(MAX);
        let pid =
            |s: u8| PeerId::from_public_key(&ed25519_dalek::SigningKey::from_bytes(&[s; 32]).verifying_key());
        let (a, b) = (pid(1), pid(2));
        let held: Vec<StreamSlot> = (0..MAX).map(|_| slots.take(a, true).unwrap()).collect();
        assert!(slots.take(a, true).is_none(), "a's relay streams are full");
        assert!(
            slots.take(a, false).is_some(),
            "its borrow streams are counted apart"
        );
        assert!(slots.take(b, true).is_some(), "another member is not affected");
        drop(held.into_iter().next());
        assert!(slots.take(a, true).is_some(), "a closed stream frees its place");
    }
}
