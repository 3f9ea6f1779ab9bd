//! Fixtures shared by the protocol's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use lendmesh_protocol::blind_rsa::SecretKey;
use lendmesh_protocol::group::{Roster, RosterEntry};
use lendmesh_protocol::issuer::Issuer;
use lendmesh_protocol::redeemer::Redeemer;
use lendmesh_protocol::token::WalletToken;
use lendmesh_protocol::wallet::Wallet;
use lendmesh_protocol::{GroupId, PeerId, test_keys};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub const GROUP: GroupId = GroupId([0x42; 16]);
pub const NOW: u64 = 1_800_000_000_000;
pub const EPOCH: u32 = 7;

pub fn node_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn peer(seed: u8) -> PeerId {
    PeerId::from_public_key(&node_key(seed).verifying_key())
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Admin = peer 1; members 1..=members with quota 20, expiring far in the future.
pub fn roster(members: u8) -> Roster {
    Roster {
        group_id: GROUP,
        version: 1,
        admin: peer(1),
        members: (1..=members)
            .map(|s| RosterEntry {
                peer: peer(s),
                quota_per_epoch: 20,
                expires_at_ms: NOW + 86_400_000,
            })
            .collect(),
        removed: vec![],
    }
}

pub struct Fixture {
    pub key: SecretKey,
    pub issuer: Issuer,
    pub rng: ChaCha20Rng,
}

impl Fixture {
    pub fn new() -> Self {
        let key = test_keys::rsa_2048();
        let issuer = Issuer::new(EPOCH, key.clone(), roster(4));
        Fixture {
            key,
            issuer,
            rng: rng(99),
        }
    }

    /// Issues `n` tokens to member `seed` through the real blind flow.
    pub fn tokens_for(&mut self, seed: u8, n: u32) -> Vec<WalletToken> {
        let pk = self.key.public_key().clone();
        let (req, batch) = Wallet::prepare_batch(&pk, EPOCH, n, &mut self.rng).unwrap();
        let grant = self.issuer.issue(&peer(seed), &req, NOW, &mut self.rng).unwrap();
        let mut wallet = Wallet::new();
        assert_eq!(
            wallet.finalize(&pk, &batch, &grant.blind_signatures).unwrap(),
            n as usize
        );
        let mut out = Vec::new();
        while let Some(t) = wallet.take(|_| true) {
            out.push(t);
        }
        out
    }

    /// A redeemer for lender `seed` accepting this fixture's epoch.
    pub fn redeemer(&self, seed: u8) -> Redeemer {
        let mut r = Redeemer::new(peer(seed));
        r.accept_epoch(EPOCH, self.key.public_key().clone());
        r
    }
}
