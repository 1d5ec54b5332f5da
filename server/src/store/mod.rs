//! The SQLite store: opening and migrating the database, the pool of read connections, and (in `writer`) the
//! single writer thread through which every state change goes.

pub mod apply;
pub mod digest;
pub mod models;
pub mod queries;
pub mod schema;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::SyncMode;
use crate::error::{Error, Result};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// How long a connection waits on a lock before giving up (only the start-up WAL switch ever waits).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS: u32 = 4;

fn pragmas(sync: SyncMode) -> String {
    let sync = match sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    // busy_timeout first: the switch to WAL takes an exclusive lock that other connections must wait for.
    format!(
        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; \
         PRAGMA foreign_keys = ON; \
         PRAGMA secure_delete = ON;",
        BUSY_TIMEOUT.as_millis()
    )
}

/// Opens the writer's connection: creates the file and its directory if needed and runs pending migrations.
pub fn open_writer(path: &Path, sync: SyncMode) -> Result<SqliteConnection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("creating {}: {e}", dir.display())))?;
    }
    let url = path.to_str().ok_or_else(|| {
        Error::internal(format!("database path is not UTF-8: {}", path.display()))
    })?;
    let mut conn = SqliteConnection::establish(url)?;
    conn.batch_execute(&pragmas(sync))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| Error::internal(format!("migrating {}: {e}", path.display())))?;
    Ok(conn)
}

/// A migrated database in memory with the pragmas the store's rules rely on (foreign keys), for tests.
#[cfg(test)]
pub(crate) fn open_memory() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").expect("an in-memory database");
    conn.batch_execute("PRAGMA foreign_keys = ON;")
        .expect("setting pragmas");
    conn.run_pending_migrations(MIGRATIONS)
        .expect("migrating the in-memory database");
    conn
}

#[derive(Debug)]
struct ReaderSetup;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for ReaderSetup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA query_only = ON;",
            BUSY_TIMEOUT.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Read-only connections, used off the async threads through [`Readers::run`].
#[derive(Clone)]
pub struct Readers {
    pool: Pool<ConnectionManager<SqliteConnection>>,
}

impl Readers {
    /// Opens the pool; call after [`open_writer`] so the schema exists.
    pub fn open(path: &Path) -> Result<Readers> {
        let manager = ConnectionManager::<SqliteConnection>::new(path.to_string_lossy());
        let pool = Pool::builder()
            .max_size(READERS)
            .connection_customizer(Box::new(ReaderSetup))
            .build(manager)?;
        Ok(Readers { pool })
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut SqliteConnection) -> Result<T> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::internal(format!("reader task: {e}")))?
    }
}

/// Writes a consistent copy of the database at `db` into `out` (which must not exist), without blocking the
/// writer: `VACUUM INTO` reads one snapshot of the WAL database.
pub fn snapshot_to(db: &Path, out: &Path) -> Result<()> {
    let mut conn = SqliteConnection::establish(&db.to_string_lossy())?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {};",
        BUSY_TIMEOUT.as_millis()
    ))?;
    let quoted = out.to_string_lossy().replace('\'', "''");
    conn.batch_execute(&format!("VACUUM INTO '{quoted}'"))?;
    Ok(())
}

/// The `(epoch, seq)` held by a database file (a snapshot).
pub fn position_of(path: &Path) -> Result<(i64, i64)> {
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
    let s = apply::read_state(&mut conn)?;
    Ok((s.epoch, s.seq))
}
