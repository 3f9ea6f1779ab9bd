//! The lender's records (docs/design.md §14): one row per lend this member served or refused, kept for the API
//! (`/v1/lends`), bounded by count and by age.
//!
//! **Keys** are a `u128`: the lend's start (`at_ms`, ms since the Unix epoch) in the high 64 bits and a sequence
//! number in the low 64, so rows sort by time and two lends of the same millisecond never collide (a key already
//! taken, e.g. by a process that ran before a restart within the same millisecond, moves on to the next number).
//! Pages are read newest first; a page's cursor ([`LendCursor`]) is the key of its last row, and the next page
//! starts below it.
//!
//! **Retention** ([`LendRetention`]): each write removes, in the same transaction, at most [`PRUNE_BATCH`] of the
//! oldest rows that are over the count or older than the age limit, so a write stays short however far over the
//! bound the table is (e.g. after the limit was lowered); [`Store::prune_lends`] removes more in bounded batches
//! (the lender runs it at start, off the actor). The table holds only what the lender saw: never a borrower.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::*;

/// Rows a record write removes at most, in its own transaction. Each write adds one row, so a table over its bound
/// shrinks by up to 63 rows per write while no write waits on a long delete.
pub const PRUNE_BATCH: u64 = 64;

/// Per-process part of the key: distinct keys for lends that started in the same millisecond.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// One lend as this member saw it: what it lent, never who borrowed. What `/v1/lends` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LendEntry {
    /// When the lend started (ms since the Unix epoch).
    pub at_ms: u64,
    /// How long serving it took, from the start to the answer (ms).
    pub duration_ms: u64,
    /// The spent token's hash (hex).
    pub token_hash: String,
    /// The relay that forwarded it (the borrower is unknown to the lender).
    pub relay: String,
    /// The token's epoch.
    pub epoch: u32,
    /// How it ended: `served`, `no_headroom`, `token_rejected:<reason>`, `upstream_refused:<status>`, …
    pub outcome: String,
    /// Method and path of the request.
    pub request: String,
    /// Size of the plain HTTP request body the borrower sent (bytes; headers and wire framing not counted).
    pub request_bytes: u64,
    /// Size of the plain HTTP response body lent back (bytes; 0 when no response was lent).
    pub response_bytes: u64,
}

/// How many lend records to keep, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LendRetention {
    /// Records kept at most (0 keeps none).
    pub max_records: u64,
    /// Records older than this are removed (ms).
    pub max_age_ms: u64,
}

/// Where a page of lend records ends: the key of its last (oldest) row. Shown as 32 hex digits; opaque to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LendCursor(u128);

impl std::fmt::Display for LendCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for LendCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "'{s}' is not a lend cursor (32 hex digits, the `next` of a previous page)"
            ));
        }
        u128::from_str_radix(s, 16)
            .map(LendCursor)
            .map_err(|e| e.to_string())
    }
}

impl Serialize for LendCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One page of lend records, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LendPage {
    /// The records.
    pub lends: Vec<LendEntry>,
    /// Pass as `before` for the next (older) page; `None` when this page reached the oldest record.
    pub next: Option<LendCursor>,
}

fn lend_key(at_ms: u64, seq: u64) -> u128 {
    (u128::from(at_ms) << 64) | u128::from(seq)
}

impl Store {
    /// Records a finished lend durably (committed, fsync) and prunes at most [`PRUNE_BATCH`] rows beyond
    /// `retention` in the same transaction. With `max_records` 0 nothing is written, only pruned.
    pub fn put_lend(
        &self,
        entry: &LendEntry,
        retention: LendRetention,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let value = encode(entry)?;
        let tx = self.begin_write()?;
        let pruned = {
            let mut t = tx.open_table(LENDS)?;
            if retention.max_records > 0 {
                let mut key = lend_key(entry.at_ms, NEXT_SEQ.fetch_add(1, Ordering::Relaxed));
                while t.get(key)?.is_some() {
                    key = key.wrapping_add(1);
                }
                t.insert(key, value.as_slice())?;
            }
            prune_oldest(&mut t, retention, now_ms, PRUNE_BATCH)?
        };
        commit(tx)?;
        Ok(pruned)
    }

    /// Removes at most `max_rows` records beyond `retention` (the oldest first) in one transaction; returns how
    /// many. Call it again while it returns `max_rows` to reach the bound.
    pub fn prune_lends(
        &self,
        retention: LendRetention,
        now_ms: u64,
        max_rows: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.begin_write()?;
        let pruned = prune_oldest(&mut tx.open_table(LENDS)?, retention, now_ms, max_rows)?;
        commit(tx)?;
        Ok(pruned)
    }

    /// Up to `limit` records older than `before` (all, without it), newest first, read off the async worker.
    pub fn lends_page(&self, before: Option<LendCursor>, limit: usize) -> Result<LendPage, StoreError> {
        blocking(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(LENDS)?;
            let rows = match before {
                Some(c) => t.range(..c.0)?,
                None => t.range::<u128>(..)?,
            };
            let mut lends = Vec::new();
            let mut last = None;
            let mut more = false;
            for row in rows.rev() {
                let (k, v) = row?;
                if lends.len() == limit {
                    more = true;
                    break;
                }
                lends.push(decode("lend record", v.value())?);
                last = Some(LendCursor(k.value()));
            }
            Ok(LendPage {
                lends,
                next: last.filter(|_| more),
            })
        })
    }

    /// Lend records held.
    pub fn lends_len(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(LENDS)?.len()?)
    }
}

/// Removes, oldest first and at most `max_rows`, the rows over `retention.max_records` and those that started
/// before `now_ms - retention.max_age_ms`.
fn prune_oldest(
    t: &mut redb::Table<'_, u128, &[u8]>,
    retention: LendRetention,
    now_ms: u64,
    max_rows: u64,
) -> Result<u64, StoreError> {
    let over = t.len()?.saturating_sub(retention.max_records);
    let cutoff = lend_key(now_ms.saturating_sub(retention.max_age_ms), 0);
    let mut removed = 0;
    while removed < max_rows {
        let Some(oldest) = t.first()?.map(|(k, _)| k.value()) else {
            break;
        };
        if removed >= over && oldest >= cutoff {
            break;
        }
        t.remove(oldest)?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;
    const KEEP_ALL: LendRetention = LendRetention {
        max_records: u64::MAX,
        max_age_ms: u64::MAX,
    };

    fn entry(at_ms: u64) -> LendEntry {
        LendEntry {
            at_ms,
            duration_ms: 12,
            token_hash: format!("{at_ms:064x}"),
            relay: "relay123".into(),
            epoch: 3,
            outcome: "served".into(),
            request: format!("POST /v1/echo?i={at_ms}"),
            request_bytes: 15,
            response_bytes: 120,
        }
    }

    fn all(store: &Store, limit: usize) -> (Vec<LendEntry>, usize) {
        let mut out = Vec::new();
        let mut before = None;
        let mut pages = 0;
        loop {
            let page = store.lends_page(before, limit).unwrap();
            assert!(page.lends.len() <= limit);
            out.extend(page.lends);
            pages += 1;
            match page.next {
                Some(c) => before = Some(c),
                None => return (out, pages),
            }
        }
    }

    #[test]
    fn records_are_paged_newest_first_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.lends_page(None, 10).unwrap(),
            LendPage {
                lends: vec![],
                next: None
            }
        );
        // Two lends in the same millisecond, and one written late (it started earlier but finished last).
        for at in [1_000, 2_000, 2_000, 3_000, 5_000, 4_000, 6_000] {
            store.put_lend(&entry(at), KEEP_ALL, 7_000).unwrap();
        }
        assert_eq!(store.lends_len().unwrap(), 7);
        let first = store.lends_page(None, 3).unwrap();
        let at: Vec<u64> = first.lends.iter().map(|e| e.at_ms).collect();
        assert_eq!(at, [6_000, 5_000, 4_000], "newest first, by start time");
        let cursor = first.next.expect("more pages");
        assert_eq!(cursor.to_string().parse::<LendCursor>().unwrap(), cursor);
        let second = store.lends_page(Some(cursor), 3).unwrap();
        let at: Vec<u64> = second.lends.iter().map(|e| e.at_ms).collect();
        assert_eq!(at, [3_000, 2_000, 2_000]);
        let last = store.lends_page(second.next, 3).unwrap();
        assert_eq!(last.lends, vec![entry(1_000)]);
        assert_eq!(last.next, None, "the oldest page has no cursor");
        // A page that ends exactly at the oldest record has no cursor either.
        let (whole, pages) = all(&store, 7);
        assert_eq!((whole.len(), pages), (7, 1));

        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let (again, pages) = all(&store, 2);
        assert_eq!(pages, 4);
        assert_eq!(again, whole, "the same records after a reopen");
        // Keys stay unique across processes: a record of an already used millisecond is added, not replaced.
        store.put_lend(&entry(2_000), KEEP_ALL, 7_000).unwrap();
        assert_eq!(store.lends_len().unwrap(), 8);
    }

    #[test]
    fn bad_cursors_are_refused() {
        for bad in ["", "xyz", "00ff", &"g".repeat(32), &"0".repeat(33)] {
            assert!(bad.parse::<LendCursor>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "0000000000000001000000000000002a".parse::<LendCursor>().unwrap(),
            LendCursor(lend_key(1, 42))
        );
    }

    #[test]
    fn retention_by_count_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keep = LendRetention {
            max_records: 5,
            max_age_ms: DAY_MS,
        };
        for at in 1..=12 {
            store.put_lend(&entry(at), keep, 100).unwrap();
        }
        assert_eq!(store.lends_len().unwrap(), 5);
        let (rest, _) = all(&store, 100);
        let at: Vec<u64> = rest.iter().map(|e| e.at_ms).collect();
        assert_eq!(at, [12, 11, 10, 9, 8]);

        // Far over the bound (the limit was lowered): each write removes a bounded batch; a prune reaches it.
        for at in 13..=(13 + 2 * PRUNE_BATCH) {
            store.put_lend(&entry(at), KEEP_ALL, 1_000).unwrap();
        }
        let held = store.lends_len().unwrap();
        let lower = LendRetention {
            max_records: 2,
            max_age_ms: DAY_MS,
        };
        assert_eq!(store.put_lend(&entry(500), lower, 1_000).unwrap(), PRUNE_BATCH);
        assert_eq!(store.lends_len().unwrap(), held + 1 - PRUNE_BATCH);
        while store.prune_lends(lower, 1_000, 10).unwrap() == 10 {}
        let (rest, _) = all(&store, 100);
        let at: Vec<u64> = rest.iter().map(|e| e.at_ms).collect();
        assert_eq!(at, [500, 13 + 2 * PRUNE_BATCH]);

        // Zero keeps none.
        let none = LendRetention {
            max_records: 0,
            max_age_ms: DAY_MS,
        };
        store.put_lend(&entry(600), none, 1_000).unwrap();
        assert_eq!(store.lends_len().unwrap(), 0);
    }

    #[test]
    fn retention_by_age_drops_old_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keep = LendRetention {
            max_records: 1_000,
            max_age_ms: 30 * DAY_MS,
        };
        let now = 100 * DAY_MS;
        for day in [10, 60, 69, 70, 71, 99] {
            store.put_lend(&entry(day * DAY_MS), KEEP_ALL, now).unwrap();
        }
        // At start: everything that started before now − 30 days goes; the boundary itself stays.
        assert_eq!(store.prune_lends(keep, now, 1_000).unwrap(), 3);
        let (rest, _) = all(&store, 100);
        let days: Vec<u64> = rest.iter().map(|e| e.at_ms / DAY_MS).collect();
        assert_eq!(days, [99, 71, 70]);
        // On write: time passed, so the write also removes what aged out meanwhile.
        let later = now + 5 * DAY_MS;
        assert_eq!(store.put_lend(&entry(later), keep, later).unwrap(), 2);
        let (rest, _) = all(&store, 100);
        let days: Vec<u64> = rest.iter().map(|e| e.at_ms / DAY_MS).collect();
        assert_eq!(days, [105, 99]);
    }

    #[test]
    fn a_version_2_store_without_the_table_opens_and_records_lends() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What an earlier build wrote: schema version 2, no `lends` table.
            let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(K_SCHEMA, 2u32.to_le_bytes().as_slice())
                .unwrap();
            tx.commit().unwrap();
            use redb::TableHandle;
            let tx = db.begin_read().unwrap();
            assert!(tx.list_tables().unwrap().all(|t| t.name() != LENDS.name()));
            // Every build kept the store 0600.
            crate::home::restrict_file(&dir.path().join(STORE_FILE)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lends_page(None, 10).unwrap().lends, vec![]);
        store.put_lend(&entry(1), KEEP_ALL, 2).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.lends_page(None, 10).unwrap().lends, vec![entry(1)]);
    }
}
