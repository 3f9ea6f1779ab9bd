//! The member's token ledger: what became of every token its wallet received, per epoch, durable in the same
//! transactions that move the tokens (issue 15). A token that leaves the wallet to be spent is *in flight* (its
//! own row) until the borrow settles it: `served`, or given up with a reason (`ambiguous`, `spent_elsewhere`,
//! `rejected:<why>`, …); put back, it is `returned`. A node killed with tokens in flight gives them up as
//! `interrupted` when it starts again ([`Store::settle_interrupted`]). So for every epoch
//!
//! `received = wallet + in flight + expired + settled (served and every given-up reason)`, with
//! `taken − returned = in flight + settled`,
//!
//! which the chaos harness checks against the issuer's quota records and the lenders' lend records. A refill batch
//! dropped before its tokens arrived is counted as `dropped:<reason>` (`expired`, `refused:<why>`): the issuer may
//! have charged it, so `issued ≤ received + pending + dropped`.

use std::collections::BTreeMap;

use super::*;

/// Tokens sent to be spent and not settled yet: token hash → epoch.
const IN_FLIGHT: TableDefinition<'_, &[u8], u32> = TableDefinition::new("in_flight");

const LEDGER: &str = "ledger/";
const LEDGER_END: &str = "ledger0";

fn ledger_key(epoch: u32, what: &str) -> String {
    format!("{LEDGER}{epoch:010}/{what}")
}

/// Adds `n` to an epoch's ledger line `what` inside the caller's transaction.
pub(super) fn bump(tx: &redb::WriteTransaction, epoch: u32, what: &str, n: u64) -> Result<(), StoreError> {
    if n == 0 {
        return Ok(());
    }
    let key = ledger_key(epoch, what);
    let mut meta = tx.open_table(META)?;
    let current = meta
        .get(key.as_str())?
        .and_then(|v| v.value().try_into().ok())
        .map_or(0, u64::from_le_bytes);
    meta.insert(key.as_str(), current.saturating_add(n).to_le_bytes().as_slice())?;
    Ok(())
}

/// Marks a token taken from the wallet as in flight, inside the caller's transaction.
pub(super) fn take(tx: &redb::WriteTransaction, hash: &TokenHash, epoch: u32) -> Result<(), StoreError> {
    tx.open_table(IN_FLIGHT)?.insert(hash.0.as_slice(), epoch)?;
    bump(tx, epoch, "taken", 1)
}

/// A token back in the wallet: no longer in flight, counted as returned (inside the caller's transaction).
pub(super) fn put_back(tx: &redb::WriteTransaction, hash: &TokenHash, epoch: u32) -> Result<(), StoreError> {
    if tx.open_table(IN_FLIGHT)?.remove(hash.0.as_slice())?.is_some() {
        bump(tx, epoch, "returned", 1)?;
    }
    Ok(())
}

/// Epochs whose ledger lines outlive their retirement: the ledger is a dozen counters per epoch, and a member's
/// record of what became of its tokens should not vanish with the epoch (a node whose clock runs ahead retires an
/// epoch early and expires its tokens: the ledger still says so).
pub(super) const LEDGER_EPOCHS_KEPT: u32 = 16;

/// When epochs before `epoch` are pruned: removes the ledger lines of epochs [`LEDGER_EPOCHS_KEPT`] before it
/// (inside the caller's transaction). Tokens in flight stay until their borrow, or the next start, settles them.
pub(super) fn prune_before(tx: &redb::WriteTransaction, epoch: u32) -> Result<(), StoreError> {
    let keep_from = epoch.saturating_sub(LEDGER_EPOCHS_KEPT);
    let mut meta = tx.open_table(META)?;
    let old: Vec<String> = meta
        .range::<&str>(LEDGER..LEDGER_END)?
        .map(|r| r.map(|(k, _)| k.value().to_string()))
        .collect::<Result<_, _>>()?;
    for k in old {
        if parse_key(&k).is_some_and(|(e, _)| e < keep_from) {
            meta.remove(k.as_str())?;
        }
    }
    Ok(())
}

fn parse_key(key: &str) -> Option<(u32, &str)> {
    let (epoch, what) = key.strip_prefix(LEDGER)?.split_once('/')?;
    Some((epoch.parse().ok()?, what))
}

/// One epoch's ledger lines: `received`, `taken`, `returned`, `expired`, `served`, `given_up:<reason>`.
pub type EpochLedger = BTreeMap<String, u64>;

impl Store {
    /// Settles a token in flight: `served`, or `given_up:<reason>`. Nothing happens for a token not in flight
    /// (settled already, or put back). Not fsynced on its own (it rides on the store's next durable commit, the
    /// next token taken at the latest): a settle lost to a crash leaves the token in flight, given up as
    /// `interrupted` at the next start — still accounted for, and one fsync per borrow fewer.
    pub fn settle_token(&self, hash: &TokenHash, outcome: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write()?;
        tx.set_durability(redb::Durability::None);
        let epoch = tx
            .open_table(IN_FLIGHT)?
            .remove(hash.0.as_slice())?
            .map(|e| e.value());
        if let Some(epoch) = epoch {
            bump(&tx, epoch, outcome, 1)?;
        }
        commit(tx)?;
        Ok(())
    }

    /// Gives up every token still in flight as `given_up:interrupted` (at start: the process that sent them is
    /// gone, and whether a lender claimed them is unknown). Returns how many.
    pub fn settle_interrupted(&self) -> Result<u64, StoreError> {
        let tx = self.begin_write()?;
        let rows: Vec<(Vec<u8>, u32)> = tx
            .open_table(IN_FLIGHT)?
            .iter()?
            .map(|r| r.map(|(k, e)| (k.value().to_vec(), e.value())))
            .collect::<Result<_, _>>()?;
        {
            let mut in_flight = tx.open_table(IN_FLIGHT)?;
            for (k, epoch) in &rows {
                in_flight.remove(k.as_slice())?;
                bump(&tx, *epoch, "given_up:interrupted", 1)?;
            }
        }
        commit(tx)?;
        Ok(rows.len() as u64)
    }

    /// Tokens in flight, per epoch.
    pub fn in_flight(&self) -> Result<BTreeMap<u32, u64>, StoreError> {
        let tx = self.db.begin_read()?;
        let mut out = BTreeMap::new();
        for row in tx.open_table(IN_FLIGHT)?.iter()? {
            *out.entry(row?.1.value()).or_default() += 1;
        }
        Ok(out)
    }

    /// The ledger, per epoch (epochs pruned with [`Store::prune_epochs_before`] are gone).
    pub fn ledger(&self) -> Result<BTreeMap<u32, EpochLedger>, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let mut out: BTreeMap<u32, EpochLedger> = BTreeMap::new();
        for row in meta.range::<&str>(LEDGER..LEDGER_END)? {
            let (k, v) = row?;
            let Some((epoch, what)) = parse_key(k.value()) else {
                continue;
            };
            let n = v.value().try_into().map_or(0, u64::from_le_bytes);
            out.entry(epoch).or_default().insert(what.to_string(), n);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lendmesh_protocol::token::{Token, TokenInput};

    fn token(epoch: u32, n: u8) -> WalletToken {
        WalletToken {
            token: Token {
                input: TokenInput::new(epoch, [1; 32], [n; 32]),
                signature: vec![n; 8],
            },
            spend_secret: lendmesh_protocol::token::SpendSecret::generate(&mut rand::rngs::OsRng),
        }
    }

    #[test]
    fn every_token_received_is_in_the_wallet_in_flight_or_settled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tokens: Vec<WalletToken> = (1..=6).map(|n| token(3, n)).collect();
        store.finish_batch(&[9; 16], &tokens).unwrap();
        // The same batch again (a retried answer) adds nothing.
        store.finish_batch(&[9; 16], &tokens).unwrap();
        let h = |i: usize| tokens[i].token.hash();
        assert!(store.take_token(&h(0)).unwrap());
        assert!(store.take_token(&h(1)).unwrap());
        assert!(store.take_token(&h(2)).unwrap());
        assert!(store.take_token(&h(3)).unwrap());
        assert!(
            !store.take_token(&h(3)).unwrap(),
            "a token leaves the wallet once"
        );
        store.settle_token(&h(0), "served").unwrap();
        store.settle_token(&h(0), "served").unwrap();
        store.settle_token(&h(1), "given_up:ambiguous").unwrap();
        store.put_token(&tokens[2]).unwrap();
        assert_eq!(store.in_flight().unwrap(), BTreeMap::from([(3, 1)]));
        // Killed with one token in flight: given up as interrupted at the next start.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.settle_interrupted().unwrap(), 1);
        assert!(store.in_flight().unwrap().is_empty());
        let expired = store.prune_wallet(|_| false).unwrap();
        assert_eq!(expired, 3);
        let l = store.ledger().unwrap()[&3].clone();
        let get = |k: &str| l.get(k).copied().unwrap_or(0);
        assert_eq!(get("received"), 6);
        assert_eq!(get("taken"), 4);
        assert_eq!(get("returned"), 1);
        assert_eq!(get("served"), 1);
        assert_eq!(get("given_up:ambiguous"), 1);
        assert_eq!(get("given_up:interrupted"), 1);
        assert_eq!(get("expired"), 3);
        assert_eq!(store.wallet_len().unwrap(), 0);
        // Refill batches dropped before their tokens came: counted with the reason, as the issuer may have charged
        // them.
        let secret = lendmesh_protocol::blind_rsa::SecretKey::generate(
            lendmesh_protocol::blind_rsa::KeySize::Rsa2048,
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let key = secret.public_key();
        let (_, refused) =
            lendmesh_protocol::wallet::Wallet::prepare_batch(key, 3, 4, &mut rand::rngs::OsRng).unwrap();
        store.put_pending(&refused).unwrap();
        store
            .drop_pending(&refused.request_id, "refused:over_quota")
            .unwrap();
        let (_, stale) =
            lendmesh_protocol::wallet::Wallet::prepare_batch(key, 3, 2, &mut rand::rngs::OsRng).unwrap();
        store.put_pending(&stale).unwrap();
        store.prune_wallet(|_| false).unwrap();
        assert!(store.pending().unwrap().is_empty());
        let l = store.ledger().unwrap()[&3].clone();
        assert_eq!(l["dropped:refused:over_quota"], 4);
        assert_eq!(l["dropped:expired"], 2);
        // The ledger outlives the epoch's other rows by LEDGER_EPOCHS_KEPT epochs.
        store.prune_epochs_before(4).unwrap();
        assert_eq!(store.ledger().unwrap()[&3], l);
        store.prune_epochs_before(3 + LEDGER_EPOCHS_KEPT).unwrap();
        assert_eq!(store.ledger().unwrap().len(), 1);
        store.prune_epochs_before(4 + LEDGER_EPOCHS_KEPT).unwrap();
        assert!(store.ledger().unwrap().is_empty());
    }
}
