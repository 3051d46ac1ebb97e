//! The candidate stores behind one small interface, as the node's store writer would use them: one atomic, durable
//! commit per batch of ops (the group commit), a full scan per table (recovery), point reads, explicit compaction.
//!
//! Durability, from each crate's own documentation (quoted in `docs/design/session-store.md`):
//! - redb: a write transaction commits with `Durability::Immediate` by default — "guaranteed to be persistent as
//!   soon as `WriteTransaction::commit` returns"; one fsync (1-phase commit + checksums), or two with quick-repair
//!   (2-phase commit plus the allocator state, so a crash needs no full repair walk on the next open).
//! - fjall: writes go to a journal (write-ahead log); a write batch with `durability(Some(PersistMode::SyncAll))`
//!   flushes its buffer and `fsync`s the journal before `commit` returns, under the journal lock. Without a
//!   durability mode a commit only reaches the OS buffers ("by default, any operation will flush to OS buffers,
//!   but not to disk").

use std::path::{Path, PathBuf};

use fjall::{KeyspaceCreateOptions, PersistMode};
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::workload::{MsgKey, SessionKey};

/// Which store, and how it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// redb 5: one write transaction per batch, `Durability::Immediate` (the default: 1-phase commit with
    /// checksums, one fsync).
    Redb,
    /// redb 5 with quick-repair on every commit: 2-phase commit (two fsyncs) and the allocator state saved, so an
    /// open after a crash does not walk the whole file.
    RedbQr,
    /// fjall 3: one write batch per batch of ops, `PersistMode::SyncAll` (journal `fsync`).
    Fjall,
    /// fjall 3 with `PersistMode::SyncData` (journal `fdatasync`).
    FjallSd,
}

impl Kind {
    /// The name used in arguments and reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redb => "redb",
            Kind::RedbQr => "redb-qr",
            Kind::Fjall => "fjall",
            Kind::FjallSd => "fjall-sd",
        }
    }
}

/// One write of the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A message queued for a session.
    Append {
        /// Session key + sequence.
        key: MsgKey,
        /// Topic, payload and delivery fields.
        value: Vec<u8>,
    },
    /// The client acknowledged a queued message.
    Delete {
        /// Session key + sequence.
        key: MsgKey,
    },
    /// The session's own record (subscriptions, expiry, next sequence) changed.
    Meta {
        /// The session.
        session: SessionKey,
        /// The encoded record.
        value: Vec<u8>,
    },
}

/// The two tables (redb tables, fjall keyspaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Queued messages, keyed by session key + big-endian sequence (one session's queue is one key range).
    Messages,
    /// One record per session.
    Meta,
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported an error.
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// fjall reported an error.
    #[error("fjall: {0}")]
    Fjall(#[from] fjall::Error),
    /// The store directory could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What the benchmark needs from a store.
pub trait Store: Send {
    /// Applies every op atomically and returns once they are durable.
    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError>;
    /// Calls `f` for every entry of `table` in key order; returns the number of entries.
    fn scan(&self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64, StoreError>;
    /// One entry of `table`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reclaims space held by deleted entries now (redb `compact`, fjall memtable flush + major compaction).
    fn compact(&mut self) -> Result<(), StoreError>;
    /// Whether background work (fjall flushes and compactions) is under way; redb has none.
    fn background_busy(&self) -> bool;
    /// Closes the store, persisting what a clean shutdown persists.
    fn close(self: Box<Self>) -> Result<(), StoreError>;
}

/// Opens (creating when missing) the store of `kind` in `dir` with a block/page cache of `cache_bytes`.
pub fn open(kind: Kind, dir: &Path, cache_bytes: u64) -> Result<Box<dyn Store>, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(match kind {
        Kind::Redb | Kind::RedbQr => Box::new(RedbStore::open(
            &dir.join("sessions.redb"),
            cache_bytes,
            kind == Kind::RedbQr,
        )?),
        Kind::Fjall | Kind::FjallSd => Box::new(FjallStore::open(
            &dir.join("fjall"),
            cache_bytes,
            if kind == Kind::Fjall {
                PersistMode::SyncAll
            } else {
                PersistMode::SyncData
            },
        )?),
    })
}

const REDB_MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const REDB_META: TableDefinition<&[u8], &[u8]> = TableDefinition::new("meta");

/// redb: a copy-on-write B+tree in one file.
struct RedbStore {
    db: redb::Database,
    quick_repair: bool,
}

impl RedbStore {
    fn open(path: &Path, cache_bytes: u64, quick_repair: bool) -> Result<Self, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
            .create(path)
            .map_err(redb::Error::from)?;
        let mut store = Self { db, quick_repair };
        // Read transactions fail on a table no write transaction created yet.
        store.commit(&[])?;
        Ok(store)
    }

    fn table(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        match t {
            Table::Messages => REDB_MESSAGES,
            Table::Meta => REDB_META,
        }
    }
}

impl Store for RedbStore {
    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(redb::Error::from)?;
        // Durability::Immediate is the default; set it anyway so the measured mode is explicit.
        txn.set_durability(redb::Durability::Immediate)
            .map_err(redb::Error::from)?;
        if self.quick_repair {
            txn.set_quick_repair(true);
        }
        {
            let mut messages = txn.open_table(REDB_MESSAGES).map_err(redb::Error::from)?;
            let mut meta = txn.open_table(REDB_META).map_err(redb::Error::from)?;
            for op in ops {
                match op {
                    Op::Append { key, value } => {
                        messages
                            .insert(&key[..], &value[..])
                            .map_err(redb::Error::from)?;
                    }
                    Op::Delete { key } => {
                        messages.remove(&key[..]).map_err(redb::Error::from)?;
                    }
                    Op::Meta { session, value } => {
                        meta.insert(&session[..], &value[..])
                            .map_err(redb::Error::from)?;
                    }
                }
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        Ok(())
    }

    fn scan(&self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let t = txn
            .open_table(Self::table(table))
            .map_err(redb::Error::from)?;
        let mut n = 0;
        for entry in t.iter().map_err(redb::Error::from)? {
            let (k, v) = entry.map_err(redb::Error::from)?;
            f(k.value(), v.value());
            n += 1;
        }
        Ok(n)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(redb::Error::from)?;
        let t = txn
            .open_table(Self::table(table))
            .map_err(redb::Error::from)?;
        Ok(t.get(key)
            .map_err(redb::Error::from)?
            .map(|v| v.value().to_vec()))
    }

    fn compact(&mut self) -> Result<(), StoreError> {
        self.db
            .compact(redb::CompactionMode::Balanced)
            .map_err(redb::Error::from)?;
        Ok(())
    }

    fn background_busy(&self) -> bool {
        false
    }

    fn close(self: Box<Self>) -> Result<(), StoreError> {
        self.db.close().map_err(redb::Error::from)?;
        Ok(())
    }
}

/// fjall: an LSM tree per keyspace, one shared journal.
struct FjallStore {
    db: fjall::Database,
    messages: fjall::Keyspace,
    meta: fjall::Keyspace,
    mode: PersistMode,
}

impl FjallStore {
    fn open(path: &Path, cache_bytes: u64, mode: PersistMode) -> Result<Self, StoreError> {
        let db = fjall::Database::builder(path)
            .cache_size(cache_bytes)
            .open()?;
        let messages = db.keyspace("messages", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        Ok(Self {
            db,
            messages,
            meta,
            mode,
        })
    }

    fn keyspace(&self, t: Table) -> &fjall::Keyspace {
        match t {
            Table::Messages => &self.messages,
            Table::Meta => &self.meta,
        }
    }
}

impl Store for FjallStore {
    fn commit(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = self.db.batch().durability(Some(self.mode));
        for op in ops {
            match op {
                Op::Append { key, value } => batch.insert(&self.messages, &key[..], &value[..]),
                Op::Delete { key } => batch.remove(&self.messages, &key[..]),
                Op::Meta { session, value } => batch.insert(&self.meta, &session[..], &value[..]),
            }
        }
        batch.commit()?;
        Ok(())
    }

    fn scan(&self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64, StoreError> {
        let mut n = 0;
        for guard in self.keyspace(table).iter() {
            let (k, v) = guard.into_inner()?;
            f(&k, &v);
            n += 1;
        }
        Ok(n)
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.keyspace(table).get(key)?.map(|v| v.to_vec()))
    }

    fn compact(&mut self) -> Result<(), StoreError> {
        for ks in [&self.messages, &self.meta] {
            ks.rotate_memtable_and_wait()?;
            ks.major_compact()?;
        }
        Ok(())
    }

    fn background_busy(&self) -> bool {
        self.db.active_compactions() > 0 || self.db.outstanding_flushes() > 0
    }

    fn close(self: Box<Self>) -> Result<(), StoreError> {
        // Dropping the database persists the journal (SyncAll) and stops its workers; persist first to see errors.
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}

/// Bytes a directory tree takes.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DiskUsage {
    /// Blocks allocated on disk (what `du` reports; fjall preallocates its journal sparsely).
    pub allocated_bytes: u64,
    /// Sum of file lengths.
    pub apparent_bytes: u64,
    /// Number of files.
    pub files: u64,
}

/// Walks `dir` (iteratively) and sums its files.
pub fn disk_usage(dir: &Path) -> std::io::Result<DiskUsage> {
    use std::os::unix::fs::MetadataExt as _;
    let mut usage = DiskUsage::default();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                usage.allocated_bytes += meta.blocks() * 512;
                usage.apparent_bytes += meta.len();
                usage.files += 1;
            }
        }
    }
    Ok(usage)
}
