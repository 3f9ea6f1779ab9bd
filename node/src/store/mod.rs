//! The node's durable state: one redb file (`store.redb`) in the home directory.
//!
//! Tables: `meta` (schema version, node identity, group material, attestation sequence), `issuer_keys` (the admin's
//! RSA key per epoch), `quota` (the issuer's per-member counters), `wallet` (finalized tokens with their spend
//! secrets), `pending` (issue batches sent but not yet finalized), `spent` (token hashes claimed as a lender, per
//! epoch), `claims` (first claims recorded as a replica, per epoch), `peer_addrs` (addresses learned for roster
//! members, so a restarted node finds the group without bootstrap flags), `lends` (the lender's records of what it
//! lent, bounded by count and age: [`lends`]). Rows of retired epochs are pruned
//! ([`Store::prune_epochs_before`]), so storage stays bounded over the life of a group. Every write that matters is its own committed transaction (redb's default durability: fsync on commit)
//! before the caller acknowledges it, so a crash at any point loses nothing that was acknowledged.
//!
//! The file holds secrets (node key, group keys, tokens): it is created with mode 0600 inside a 0700 home.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use lendmesh_protocol::blind_rsa::SecretKey;
use lendmesh_protocol::issuer::QuotaRecord;
use lendmesh_protocol::redeemer::{ClaimOutcome, SpentSet};
use lendmesh_protocol::token::{TokenHash, WalletToken};
use lendmesh_protocol::wallet::PendingBatch;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::group::state::GroupState;

/// The schema this build reads and writes. Bump it with a migration when a table's layout changes.
/// Version 2: epochs (the group holds an epoch book; announcements carry a grace period) and learned addresses.
/// A version-1 store's group material is not valid under version 2's signatures: such a group is re-created.
/// A table added later without changing another's layout (`lends`) needs no bump: [`Store::open`] creates it in a
/// store that lacks it, and an older build ignores it.
pub const SCHEMA_VERSION: u32 = 2;
/// The store's file name inside the home directory.
pub const STORE_FILE: &str = "store.redb";

/// Meta key: the newest epoch a claim was recorded for (replica restore detection, docs/design.md §7).
const K_CLAIMS_MAX_EPOCH: &str = "claims_max_epoch";
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const ISSUER_KEYS: TableDefinition<'_, u32, &[u8]> = TableDefinition::new("issuer_keys");
const QUOTA: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("quota");
const WALLET: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("wallet");
const PENDING: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("pending");
const SPENT: TableDefinition<'_, &[u8], u64> = TableDefinition::new("spent");
const CLAIMS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("claims");
const PEER_ADDRS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("peer_addrs");
/// Lend records: (start ms << 64 | sequence) → `LendEntry` (`lends.rs`).
const LENDS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("lends");
/// Addresses kept per peer.
pub const MAX_ADDRS_PER_PEER: usize = 8;

const K_SCHEMA: &str = "schema_version";
const K_IDENTITY: &str = "identity";
const K_GROUP: &str = "group";
const K_ATT_SEQ: &str = "attestation_seq";

/// Store errors; messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process has the store open.
    #[error(
        "the store {path} is in use by another lendmesh process (is `lendmesh run` running with this home?); stop it and retry"
    )]
    InUse {
        /// The store file.
        path: PathBuf,
    },
    /// The file could not be opened as a store.
    #[error(
        "the store {path} is damaged or not a lendmesh store ({detail}); move it aside and restore a backup (or `lendmesh init` a fresh home: its tokens would be lost)"
    )]
    Damaged {
        /// The store file.
        path: PathBuf,
        /// What redb said.
        detail: String,
    },
    /// Others may read or write the store (it holds the node key, the group keys and tokens): refused, as ssh
    /// refuses a private key.
    #[error(
        "the store {path} holds secrets but its mode is {mode:04o}: others may read it. Run `chmod 600 {path}` (and check who could have copied it)"
    )]
    NotPrivate {
        /// The store file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Written by another schema version.
    #[error(
        "the store {path} has schema version {found}, this lendmesh reads version {SCHEMA_VERSION}; use the lendmesh release that wrote it"
    )]
    WrongVersion {
        /// The store file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// No node identity yet.
    #[error("no node identity in {home}; run `lendmesh init --home {home}` first")]
    NotInitialized {
        /// The home directory.
        home: PathBuf,
    },
    /// A value did not decode.
    #[error("store value `{what}` is corrupt: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A redb operation failed.
    #[error("store I/O failed: {0}")]
    Io(String),
}

/// Opens the redb file. redb asserts (panics) on some damaged files, e.g. truncated ones; that is caught here and
/// reported as a damaged store, never a crash.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    // The panic hook is process-wide: serialise the swap so concurrent opens never lose the original hook.
    static HOOK_SWAP: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = HOOK_SWAP.lock().unwrap_or_else(|p| p.into_inner());
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Database::create(path)));
    std::panic::set_hook(hook);
    match result {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::InUse {
            path: path.to_path_buf(),
        }),
        Ok(Err(other)) => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            detail: other.to_string(),
        }),
        Err(_) => Err(StoreError::Damaged {
            path: path.to_path_buf(),
            detail: "the file is truncated or corrupt".into(),
        }),
    }
}

macro_rules! io_err {
    ($($t:ty),*) => {$(impl From<$t> for StoreError {
        fn from(e: $t) -> Self { StoreError::Io(e.to_string()) }
    })*};
}
io_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    std::io::Error
);

/// A handle to the store; cheap to clone (redb serialises writers itself).
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Io(e.to_string()))
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// Each kind of record the store decodes from its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// The group state (`meta`).
    Group,
    /// An issuer's quota record (`quota`).
    Quota,
    /// A wallet token (`wallet`).
    Wallet,
    /// A pending refill batch (`pending`).
    Pending,
    /// A peer's learned addresses (`peer_addrs`).
    PeerAddrs,
    /// A lend record (`lends`).
    Lend,
    /// An issuer's secret key, PKCS#8 DER (`issuer_keys`).
    IssuerKey,
}

impl RecordKind {
    /// Every kind.
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Group,
        RecordKind::Quota,
        RecordKind::Wallet,
        RecordKind::Pending,
        RecordKind::PeerAddrs,
        RecordKind::Lend,
        RecordKind::IssuerKey,
    ];

    /// Decodes `bytes` as a record of this kind, exactly as the store reads one: a damaged record is
    /// [`StoreError::Corrupt`], never a panic (the fuzz target `store_record` holds it to that).
    pub fn check(self, bytes: &[u8]) -> Result<(), StoreError> {
        match self {
            RecordKind::Group => decode::<GroupState>("group", bytes).map(drop),
            RecordKind::Quota => decode::<QuotaRecord>("quota record", bytes).map(drop),
            RecordKind::Wallet => decode::<WalletToken>("wallet token", bytes).map(drop),
            RecordKind::Pending => decode::<PendingBatch>("pending batch", bytes).map(drop),
            RecordKind::PeerAddrs => decode::<Vec<String>>("peer addresses", bytes).map(drop),
            RecordKind::Lend => decode::<LendEntry>("lend record", bytes).map(drop),
            RecordKind::IssuerKey => decode_issuer_key(bytes).map(drop),
        }
    }
}

fn decode_issuer_key(der: &[u8]) -> Result<SecretKey, StoreError> {
    SecretKey::from_pkcs8_der(der).map_err(|e| StoreError::Corrupt {
        what: "issuer key",
        detail: e.to_string(),
    })
}

/// Runs `f`, which blocks on disk (a write transaction: waiting for redb's writer lock, then fsync on commit), so
/// that it does not stall the async worker it is called from: on a multi-threaded tokio runtime through
/// `block_in_place` (the worker's other tasks move to another thread meanwhile), elsewhere directly. Every write of
/// the store goes through here, so no actor blocks an async thread on the disk.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Commits a write transaction (fsync) off the async worker; see [`blocking`].
fn commit(tx: redb::WriteTransaction) -> Result<(), StoreError> {
    blocking(|| tx.commit()).map_err(StoreError::from)
}

/// Creates a node identity in `home` (or keeps the existing one); returns the store and key.
pub fn init_home(home: &Path) -> Result<(Store, SigningKey), StoreError> {
    crate::home::ensure_dir(home)?;
    let store = Store::open(home)?;
    let key = store.init_identity(&SigningKey::generate(&mut rand::rngs::OsRng))?;
    Ok((store, key))
}

impl Store {
    /// Begins a write transaction (waits for redb's single writer) off the async worker; see [`blocking`].
    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        blocking(|| self.db.begin_write().map_err(StoreError::from))
    }

    /// Opens (or creates) the store in `home`, checking its schema version.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        let path = home.join(STORE_FILE);
        let existed = path.exists();
        if existed && let Some(mode) = crate::home::others_may_access(&path)? {
            return Err(StoreError::NotPrivate { path, mode });
        }
        let db = open_db(&path)?;
        crate::home::restrict_file(&path)?;
        let store = Store {
            db: Arc::new(db),
            path,
        };
        let tx = store.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get(K_SCHEMA)?.map(|v| v.value().to_vec());
            match found {
                None if existed && meta.len()? > 0 => {
                    return Err(StoreError::Damaged {
                        path: store.path.clone(),
                        detail: "no schema version".into(),
                    });
                }
                None => {
                    meta.insert(K_SCHEMA, SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
                Some(v) => {
                    let found = v
                        .as_slice()
                        .try_into()
                        .map(u32::from_le_bytes)
                        .unwrap_or(u32::MAX);
                    if found != SCHEMA_VERSION {
                        return Err(StoreError::WrongVersion {
                            path: store.path.clone(),
                            found,
                        });
                    }
                }
            }
            // Create every table so readers never meet a missing one.
            tx.open_table(ISSUER_KEYS)?;
            tx.open_table(QUOTA)?;
            tx.open_table(WALLET)?;
            tx.open_table(PENDING)?;
            tx.open_table(SPENT)?;
            tx.open_table(CLAIMS)?;
            tx.open_table(PEER_ADDRS)?;
            tx.open_table(LENDS)?;
        }
        commit(tx)?;
        Ok(store)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        tx.open_table(META)?.insert(key, value)?;
        commit(tx)?;
        Ok(())
    }

    /// The node's ed25519 identity, if initialised.
    pub fn identity(&self) -> Result<Option<SigningKey>, StoreError> {
        let Some(bytes) = self.meta_get(K_IDENTITY)?.map(Zeroizing::new) else {
            return Ok(None);
        };
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt {
            what: "identity",
            detail: "not 32 bytes".into(),
        })?;
        Ok(Some(SigningKey::from_bytes(&seed)))
    }

    /// Stores the node identity (only if none exists; returns the one in the store).
    pub fn init_identity(&self, key: &SigningKey) -> Result<SigningKey, StoreError> {
        if let Some(existing) = self.identity()? {
            return Ok(existing);
        }
        self.meta_put(K_IDENTITY, key.as_bytes())?;
        Ok(key.clone())
    }

    /// The group this node belongs to, if any.
    pub fn group(&self) -> Result<Option<GroupState>, StoreError> {
        self.meta_get(K_GROUP)?.map(|b| decode("group", &b)).transpose()
    }

    /// Replaces the group state.
    pub fn put_group(&self, group: &GroupState) -> Result<(), StoreError> {
        self.meta_put(K_GROUP, &encode(group)?)
    }

    /// The last attestation sequence number used.
    pub fn attestation_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta_get(K_ATT_SEQ)?
            .and_then(|b| b.as_slice().try_into().ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// Records an attestation sequence number before the attestation is published.
    pub fn put_attestation_seq(&self, seq: u64) -> Result<(), StoreError> {
        self.meta_put(K_ATT_SEQ, &seq.to_le_bytes())
    }

    /// The issuer's key for an epoch (admin only).
    pub fn issuer_key(&self, epoch: u32) -> Result<Option<SecretKey>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ISSUER_KEYS)?;
        let Some(v) = t.get(epoch)? else { return Ok(None) };
        let der = Zeroizing::new(v.value().to_vec());
        decode_issuer_key(&der).map(Some)
    }

    /// Stores the issuer's key for an epoch.
    pub fn put_issuer_key(&self, epoch: u32, key: &SecretKey) -> Result<(), StoreError> {
        let der = key.to_pkcs8_der().map_err(|e| StoreError::Io(e.to_string()))?;
        let tx = self.begin_write()?;
        tx.open_table(ISSUER_KEYS)?.insert(epoch, der.as_slice())?;
        commit(tx)?;
        Ok(())
    }

    /// Every quota record of an epoch.
    pub fn quota_records(&self, epoch: u32) -> Result<Vec<QuotaRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(QUOTA)?;
        let (lo, hi) = epoch_bounds(epoch);
        let mut out = Vec::new();
        for row in t.range::<&[u8]>((Bound::Included(lo.as_slice()), bound(&hi)))? {
            out.push(decode("quota record", row?.1.value())?);
        }
        Ok(out)
    }

    /// Persists a quota record (before the signatures it covers leave the issuer).
    pub fn put_quota_record(&self, record: &QuotaRecord) -> Result<(), StoreError> {
        let mut key = record.epoch.to_be_bytes().to_vec();
        key.extend_from_slice(record.peer.as_bytes());
        let tx = self.begin_write()?;
        tx.open_table(QUOTA)?
            .insert(key.as_slice(), encode(record)?.as_slice())?;
        commit(tx)?;
        Ok(())
    }

    /// Every token in the wallet.
    pub fn wallet_tokens(&self) -> Result<Vec<WalletToken>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(WALLET)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode("wallet token", v.value())?);
        }
        Ok(out)
    }

    /// Tokens in the wallet.
    pub fn wallet_len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(WALLET)?.len()?)
    }

    /// Stores a pending batch before its request is sent.
    pub fn put_pending(&self, batch: &PendingBatch) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        tx.open_table(PENDING)?
            .insert(batch.request_id.as_slice(), encode(batch)?.as_slice())?;
        commit(tx)?;
        Ok(())
    }

    /// Pending batches (sent, not finalized).
    pub fn pending(&self) -> Result<Vec<PendingBatch>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode("pending batch", v.value())?);
        }
        Ok(out)
    }

    /// Drops a pending batch that will never complete (refused by the issuer, or its epoch retired), counting its
    /// tokens in the ledger as `dropped:<reason>`: the issuer may have charged them (an answer lost, then a refusal).
    pub fn drop_pending(&self, request_id: &[u8; 16], reason: &str) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        let removed = tx
            .open_table(PENDING)?
            .remove(request_id.as_slice())?
            .map(|v| v.value().to_vec());
        if let Some(bytes) = removed {
            let batch: PendingBatch = decode("pending batch", &bytes)?;
            ledger::bump(
                &tx,
                batch.epoch,
                &format!("dropped:{reason}"),
                batch.tokens.len() as u64,
            )?;
        }
        commit(tx)?;
        Ok(())
    }

    /// In one transaction: adds finalized tokens (no token twice) and removes their pending batch.
    pub fn finish_batch(&self, request_id: &[u8; 16], tokens: &[WalletToken]) -> Result<usize, StoreError> {
        let tx = self.begin_write()?;
        let mut added = 0;
        {
            let mut wallet = tx.open_table(WALLET)?;
            for t in tokens {
                let hash = t.token.hash();
                if wallet.get(hash.0.as_slice())?.is_none() {
                    wallet.insert(hash.0.as_slice(), encode(t)?.as_slice())?;
                    ledger::bump(&tx, t.token.input.epoch, "received", 1)?;
                    added += 1;
                }
            }
            tx.open_table(PENDING)?.remove(request_id.as_slice())?;
        }
        commit(tx)?;
        Ok(added)
    }

    /// Removes a token from the wallet (it is being spent): in flight in the ledger until
    /// [`Store::settle_token`] or [`Store::put_token`].
    pub fn take_token(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        let tx = self.begin_write()?;
        let removed = tx
            .open_table(WALLET)?
            .remove(hash.0.as_slice())?
            .map(|v| v.value().to_vec());
        let Some(bytes) = removed else {
            return Ok(false);
        };
        let token: WalletToken = decode("wallet token", &bytes)?;
        ledger::take(&tx, hash, token.token.input.epoch)?;
        commit(tx)?;
        Ok(true)
    }

    /// Returns a token to the wallet (refused before any claim).
    pub fn put_token(&self, token: &WalletToken) -> Result<(), StoreError> {
        let hash = token.token.hash();
        let tx = self.begin_write()?;
        tx.open_table(WALLET)?
            .insert(hash.0.as_slice(), encode(token)?.as_slice())?;
        ledger::put_back(&tx, &hash, token.token.input.epoch)?;
        commit(tx)?;
        Ok(())
    }

    /// Spent token hashes recorded for an epoch.
    /// Kept as a counter next to the set, in the same transactions, so a metrics scrape never scans the set.
    pub fn spent_len(&self, epoch: u32) -> Result<u64, StoreError> {
        Ok(self
            .meta_get(&spent_count_key(epoch))?
            .and_then(|b| b.as_slice().try_into().ok())
            .map_or(0, u64::from_le_bytes))
    }
}

mod epochs;
mod ledger;
pub mod lends;
pub use epochs::Pruned;
use epochs::{bound, epoch_bounds, spent_count_key};
pub use ledger::EpochLedger;
pub use lends::{LendCursor, LendEntry, LendPage, LendRetention};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_kept_and_version_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k = SigningKey::from_bytes(&[1; 32]);
        assert_eq!(store.init_identity(&k).unwrap(), k);
        let other = SigningKey::from_bytes(&[2; 32]);
        assert_eq!(
            store.init_identity(&other).unwrap(),
            k,
            "init never overwrites an identity"
        );
        // A second open while the first is alive is refused clearly.
        assert!(matches!(Store::open(dir.path()), Err(StoreError::InUse { .. })));
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.identity().unwrap(), Some(k));
        store.meta_put(K_SCHEMA, &99u32.to_le_bytes()).unwrap();
        drop(store);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::WrongVersion { found: 99, .. })
        ));
    }

    #[test]
    fn truncated_store_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.init_identity(&SigningKey::from_bytes(&[1; 32])).unwrap();
        drop(store);
        let path = dir.path().join(STORE_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len / 3).unwrap();
        drop(f);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("move it aside"), "{err}");
    }

    #[test]
    fn spent_set_claims_once_durably() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let h = TokenHash([7; 32]);
        assert_eq!(store.try_claim(1, &h).unwrap(), ClaimOutcome::Claimed);
        assert_eq!(store.try_claim(1, &h).unwrap(), ClaimOutcome::AlreadySpent);
        assert_eq!(
            store.try_claim(2, &h).unwrap(),
            ClaimOutcome::Claimed,
            "per epoch"
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.try_claim(1, &h).unwrap(),
            ClaimOutcome::AlreadySpent,
            "survives reopen"
        );
        store.release(1, &h).unwrap();
        assert_eq!(store.try_claim(1, &h).unwrap(), ClaimOutcome::Claimed);
        assert_eq!(store.spent_len(1).unwrap(), 1);
        assert_eq!(store.spent_len(2).unwrap(), 1);
        assert_eq!(store.spent_hashes(1).unwrap(), vec![h]);
        store.release(2, &h).unwrap();
        store.release(2, &h).unwrap();
        assert_eq!(
            store.spent_len(2).unwrap(),
            0,
            "releasing twice leaves the count at zero"
        );
        assert!(store.spent_hashes(2).unwrap().is_empty());
    }
}
