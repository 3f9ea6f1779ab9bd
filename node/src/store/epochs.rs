//! The per-epoch rows: the lender's spent set (with a counter per epoch, so `/metrics` never scans it), the
//! replica's first claims, pruning of retired epochs, learned peer addresses.

use super::*;

/// What [`Store::prune_epochs_before`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Spent-set entries.
    pub spent: u64,
    /// Replica claims.
    pub claims: u64,
    /// Issuer quota records.
    pub quota: u64,
    /// Issuer keys.
    pub issuer_keys: u64,
}

impl Store {
    /// Removes every row of epochs before `epoch` — spent set, replica claims, quota records, issuer keys and
    /// spent counters — in one transaction. Those epochs are retired: their tokens are refused everywhere.
    pub fn prune_epochs_before(&self, epoch: u32) -> Result<Pruned, StoreError> {
        let hi = epoch.to_be_bytes();
        let mut pruned = Pruned::default();
        let tx = self.begin_write()?;
        {
            pruned.spent = remove_below(&tx, SPENT, &hi)?;
            pruned.claims = remove_below(&tx, CLAIMS, &hi)?;
            pruned.quota = remove_below(&tx, QUOTA, &hi)?;
            super::ledger::prune_before(&tx, epoch)?;
            let mut keys = tx.open_table(ISSUER_KEYS)?;
            let old: Vec<u32> = keys
                .range(..epoch)?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for e in &old {
                keys.remove(e)?;
            }
            pruned.issuer_keys = old.len() as u64;
            let mut meta = tx.open_table(META)?;
            let counters: Vec<String> = meta
                .range::<&str>("spent_count/".."spent_count0")?
                .map(|r| r.map(|(k, _)| k.value().to_string()))
                .collect::<Result<_, _>>()?;
            for k in counters {
                let e = k
                    .trim_start_matches("spent_count/")
                    .parse::<u32>()
                    .unwrap_or(u32::MAX);
                if e < epoch {
                    meta.remove(k.as_str())?;
                }
            }
        }
        commit(tx)?;
        Ok(pruned)
    }

    /// Epochs with a spent-set counter (for metrics).
    pub fn spent_epochs(&self) -> Result<Vec<u32>, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let mut out = Vec::new();
        for row in meta.range::<&str>("spent_count/".."spent_count0")? {
            let (k, _) = row?;
            if let Ok(e) = k.value().trim_start_matches("spent_count/").parse::<u32>() {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Removes wallet tokens and pending batches whose epoch `keep` refuses; returns the tokens removed.
    pub fn prune_wallet(&self, keep: impl Fn(u32) -> bool) -> Result<u64, StoreError> {
        let tx = self.begin_write()?;
        let removed = {
            let mut wallet = tx.open_table(WALLET)?;
            let mut gone = Vec::new();
            for row in wallet.iter()? {
                let (k, v) = row?;
                let t: WalletToken = decode("wallet token", v.value())?;
                if !keep(t.token.input.epoch) {
                    gone.push((k.value().to_vec(), t.token.input.epoch));
                }
            }
            for (k, epoch) in &gone {
                wallet.remove(k.as_slice())?;
                super::ledger::bump(&tx, *epoch, "expired", 1)?;
            }
            let mut pending = tx.open_table(PENDING)?;
            let mut stale = Vec::new();
            for row in pending.iter()? {
                let (k, v) = row?;
                let b: PendingBatch = decode("pending batch", v.value())?;
                if !keep(b.epoch) {
                    stale.push((k.value().to_vec(), b.epoch, b.tokens.len() as u64));
                }
            }
            for (k, epoch, tokens) in &stale {
                pending.remove(k.as_slice())?;
                super::ledger::bump(&tx, *epoch, "dropped:expired", *tokens)?;
            }
            gone.len() as u64
        };
        commit(tx)?;
        Ok(removed)
    }

    /// Remembers the addresses a roster member was reached at (at most [`MAX_ADDRS_PER_PEER`]).
    pub fn put_peer_addrs(
        &self,
        peer: &lendmesh_protocol::PeerId,
        addrs: &[String],
    ) -> Result<(), StoreError> {
        let addrs: Vec<&String> = addrs.iter().take(MAX_ADDRS_PER_PEER).collect();
        let tx = self.begin_write()?;
        tx.open_table(PEER_ADDRS)?
            .insert(peer.as_bytes().as_slice(), encode(&addrs)?.as_slice())?;
        commit(tx)?;
        Ok(())
    }

    /// Forgets a peer's addresses (it left the group).
    pub fn drop_peer_addrs(&self, peer: &lendmesh_protocol::PeerId) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        tx.open_table(PEER_ADDRS)?.remove(peer.as_bytes().as_slice())?;
        commit(tx)?;
        Ok(())
    }

    /// Every learned address, per peer.
    pub fn peer_addrs(&self) -> Result<Vec<(lendmesh_protocol::PeerId, Vec<String>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PEER_ADDRS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let Ok(peer) = lendmesh_protocol::PeerId::from_bytes(k.value()) else {
                continue;
            };
            out.push((peer, decode("peer addresses", v.value())?));
        }
        Ok(out)
    }
}

impl Store {
    /// As a replica (docs/design.md §7): records the first claim of a token durably; answers whether `claim_id` is it.
    pub fn record_claim(
        &self,
        epoch: u32,
        hash: &TokenHash,
        claim_id: &[u8; 16],
    ) -> Result<bool, StoreError> {
        let key = spent_key(epoch, hash);
        let tx = self.begin_write()?;
        let granted = {
            let mut t = tx.open_table(CLAIMS)?;
            let existing = t.get(key.as_slice())?.map(|v| v.value().to_vec());
            match existing {
                Some(first) => first.as_slice() == claim_id.as_slice(),
                None => {
                    t.insert(key.as_slice(), claim_id.as_slice())?;
                    true
                }
            }
        };
        {
            let mut meta = tx.open_table(META)?;
            let max = meta
                .get(K_CLAIMS_MAX_EPOCH)?
                .and_then(|v| v.value().try_into().ok().map(u32::from_le_bytes));
            if max.is_none_or(|m| epoch > m) {
                meta.insert(K_CLAIMS_MAX_EPOCH, epoch.to_le_bytes().as_slice())?;
            }
        }
        commit(tx)?;
        Ok(granted)
    }

    /// Forgets the claim of `hash` in `epoch` if it is `claim_id` (its lender refused before any work); `true` when
    /// it was held.
    pub fn release_claim(
        &self,
        epoch: u32,
        hash: &TokenHash,
        claim_id: &[u8; 16],
    ) -> Result<bool, StoreError> {
        let key = spent_key(epoch, hash);
        let tx = self.begin_write()?;
        let released = {
            let mut t = tx.open_table(CLAIMS)?;
            let held = t
                .get(key.as_slice())?
                .is_some_and(|v| v.value() == claim_id.as_slice());
            if held {
                t.remove(key.as_slice())?;
            }
            held
        };
        commit(tx)?;
        Ok(released)
    }

    /// The newest epoch this store ever recorded a claim for.
    pub fn claims_max_epoch(&self) -> Result<Option<u32>, StoreError> {
        Ok(self
            .meta_get(K_CLAIMS_MAX_EPOCH)?
            .and_then(|v| v.as_slice().try_into().ok().map(u32::from_le_bytes)))
    }

    /// Every spent token hash of an epoch (for audits and tests).
    pub fn spent_hashes(&self, epoch: u32) -> Result<Vec<TokenHash>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SPENT)?;
        let (lo, hi) = epoch_bounds(epoch);
        let mut out = Vec::new();
        for row in t.range::<&[u8]>((Bound::Included(lo.as_slice()), bound(&hi)))? {
            let (k, _) = row?;
            let k = k.value();
            if k.len() == 36 {
                let mut h = [0u8; 32];
                h.copy_from_slice(&k[4..]);
                out.push(TokenHash(h));
            }
        }
        Ok(out)
    }
}

/// Removes the rows of `table` whose key sorts below `hi` (an epoch prefix); returns how many.
fn remove_below<V: redb::Value + 'static>(
    tx: &redb::WriteTransaction,
    table: TableDefinition<'_, &[u8], V>,
    hi: &[u8],
) -> Result<u64, StoreError> {
    let mut t = tx.open_table(table)?;
    let keys: Vec<Vec<u8>> = t
        .range::<&[u8]>(..hi)?
        .map(|r| r.map(|(k, _)| k.value().to_vec()))
        .collect::<Result<_, _>>()?;
    for k in &keys {
        t.remove(k.as_slice())?;
    }
    Ok(keys.len() as u64)
}

/// Keys of one epoch lie in `[epoch, epoch + 1)` (big-endian prefix); the last epoch has no upper bound.
pub(super) fn epoch_bounds(epoch: u32) -> (Vec<u8>, Option<Vec<u8>>) {
    (
        epoch.to_be_bytes().to_vec(),
        epoch.checked_add(1).map(|e| e.to_be_bytes().to_vec()),
    )
}

pub(super) fn bound(hi: &Option<Vec<u8>>) -> Bound<&[u8]> {
    hi.as_deref().map_or(Bound::Unbounded, Bound::Excluded)
}

pub(super) fn spent_count_key(epoch: u32) -> String {
    format!("spent_count/{epoch}")
}

/// Adds `delta` to an epoch's spent counter inside the caller's transaction.
fn bump_spent_count(tx: &redb::WriteTransaction, epoch: u32, delta: i64) -> Result<(), StoreError> {
    let key = spent_count_key(epoch);
    let mut meta = tx.open_table(META)?;
    let current = meta
        .get(key.as_str())?
        .and_then(|v| v.value().try_into().ok())
        .map_or(0, u64::from_le_bytes);
    let next = current.saturating_add_signed(delta);
    meta.insert(key.as_str(), next.to_le_bytes().as_slice())?;
    Ok(())
}

fn spent_key(epoch: u32, hash: &TokenHash) -> Vec<u8> {
    let mut key = epoch.to_be_bytes().to_vec();
    key.extend_from_slice(&hash.0);
    key
}

/// The lender's durable spent set: a claim is committed (fsync) before `try_claim` returns.
impl SpentSet for Store {
    type Error = StoreError;

    fn try_claim(&self, epoch: u32, hash: &TokenHash) -> Result<ClaimOutcome, StoreError> {
        let key = spent_key(epoch, hash);
        let tx = self.begin_write()?;
        let outcome = {
            let mut t = tx.open_table(SPENT)?;
            if t.get(key.as_slice())?.is_some() {
                ClaimOutcome::AlreadySpent
            } else {
                t.insert(key.as_slice(), crate::clock::now_ms())?;
                ClaimOutcome::Claimed
            }
        };
        if outcome == ClaimOutcome::Claimed {
            bump_spent_count(&tx, epoch, 1)?;
        }
        commit(tx)?;
        Ok(outcome)
    }

    fn release(&self, epoch: u32, hash: &TokenHash) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        let removed = tx
            .open_table(SPENT)?
            .remove(spent_key(epoch, hash).as_slice())?
            .is_some();
        if removed {
            bump_spent_count(&tx, epoch, -1)?;
        }
        commit(tx)?;
        Ok(())
    }
}
