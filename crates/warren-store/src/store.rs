//! The [`Store`] handle: opening the database and running migrations.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Sqlite;

use crate::clock::{Clock, SystemClock};
use crate::error::{Result, StoreError};

/// How long a connection waits for another writer's lock before failing.
/// SQLite's busy handler is not fair (it sleeps and retries), so under a
/// burst of concurrent writes on a loaded machine one writer can wait
/// several seconds; 5 s was seen to fail a burst of 100 creates on CI's 2
/// cores. Requests should wait rather than fail.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections in a file database's pool. WAL lets readers run beside the
/// one writer; more connections than cores buys nothing.
const FILE_POOL_SIZE: u32 = 8;

/// The statement that opens a write transaction.
///
/// SQLite's default `BEGIN` is deferred: it takes the write lock at the
/// first write, and if another connection committed in between, SQLite
/// fails at once with `SQLITE_BUSY` instead of waiting `busy_timeout`.
/// `BEGIN IMMEDIATE` takes the write lock up front, so writers queue.
/// This is SQLite syntax, kept behind the store API as the module doc of
/// `lib.rs` allows; a PostgreSQL backend uses plain `BEGIN`.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The control plane's state store.
///
/// Cheap to clone: clones share one connection pool. All SQL lives behind
/// this type's methods; no `sqlx` type appears in its public API, so a
/// PostgreSQL backend can be added without changing callers.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: SqlitePool,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Store {
    /// Opens (creating if missing, with mode 0600) the SQLite database at
    /// `path` and brings its schema up to date.
    ///
    /// The connection uses WAL journaling, `synchronous=NORMAL` (durable
    /// across process crashes; a power loss may drop the last commits but
    /// never corrupts), a busy timeout of [`BUSY_TIMEOUT`], and enforced
    /// foreign keys. The parent directory must exist.
    pub async fn open_sqlite(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        create_private_file(&path).await?;

        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(FILE_POOL_SIZE)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::OpenDatabase {
                path: path.clone(),
                source,
            })?;
        let store = Store::from_pool(pool).await?;
        tracing::info!(path = %path.display(), "opened state store");
        Ok(store)
    }

    /// Opens a fresh, private in-memory database (for tests).
    ///
    /// An in-memory SQLite database lives as long as its connection and is
    /// invisible to other connections, so the pool holds exactly one
    /// connection that never expires. (A shared-cache URI would allow more,
    /// but shared cache uses table-level locks that fail with
    /// `SQLITE_LOCKED` under concurrency.)
    pub async fn open_in_memory() -> Result<Store> {
        let path = PathBuf::from(":memory:");
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::OpenDatabase { path, source })?;
        Store::from_pool(pool).await
    }

    async fn from_pool(pool: SqlitePool) -> Result<Store> {
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::RunMigrations { source })?;
        Ok(Store {
            pool,
            clock: Arc::new(SystemClock),
        })
    }

    /// Replaces the time source (tests use [`crate::ManualClock`]).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Store {
        self.clock = clock;
        self
    }

    /// Closes every connection, waiting for running queries. Further calls
    /// on this store (or its clones) fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Starts a write transaction (see [`BEGIN_WRITE`]).
    pub(crate) async fn begin_write(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with(BEGIN_WRITE).await
    }
}

/// The schema migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Creates the database file with mode 0600 if it does not exist. An
/// existing file is left alone, but a warning is logged when other users
/// can read it: it holds tenants' sandbox specs (including environment
/// variables) and token hashes.
async fn create_private_file(path: &Path) -> Result<()> {
    let created = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match tokio::fs::metadata(path).await {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                        "state store file is accessible to other users"
                    );
                }
                _ => {}
            }
            Ok(())
        }
        Err(source) => Err(StoreError::CreateDatabaseFile {
            path: path.to_path_buf(),
            source,
        }),
    }
}
