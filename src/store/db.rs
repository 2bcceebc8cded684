//! Database access shared by the SQLite and PostgreSQL stores: connection pools, migrations, transactions and a
//! small SQL builder whose `?` placeholders are rendered for each dialect, so the store's SQL is written once.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Postgres, Row as _, SqlSafeStr, Transaction};

use super::sqlite_pool::{SqliteConn, SqliteConnPool};

/// Binds every value of a `Sql` to a query, in order.
macro_rules! bind_all {
    ($query:expr, $params:expr) => {{
        let mut q = $query;
        for p in $params {
            q = match p {
                Val::Null => q.bind(None::<String>),
                Val::Int(v) => q.bind(*v),
                Val::Real(v) => q.bind(*v),
                Val::Text(v) => q.bind(v.as_str()),
            };
        }
        q
    }};
}

/// Which SQL dialect a pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A connection pool to one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePools),
    Postgres(PgPool),
}

/// SQLite: readers share a pool; every write transaction runs on one connection of its own. SQLite has one writer
/// at a time anyway, and a single write connection keeps the pages that writes touch (index interiors, the ends
/// of growing tables) in one warm cache, and the memory a large transaction needs in one place. The pools are the
/// gateway's own ([`SqliteConnPool`]), not sqlx's: see that module for why.
#[derive(Clone, Debug)]
pub struct SqlitePools {
    read: SqliteConnPool,
    write: SqliteConnPool,
}

impl SqlitePools {
    /// This process's write lock of the file, then the writer's connection: writers queue on the lock in arrival
    /// order (see [`Db::begin_write`]).
    async fn writer(&self) -> Result<(tokio::sync::OwnedMutexGuard<()>, SqliteConn), sqlx::Error> {
        let lock = sqlite_write_lock(&self.write);
        let guard = tokio::time::timeout(SQLITE_BUSY_TIMEOUT, lock.lock_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        Ok((guard, self.write.acquire().await?))
    }

    /// One connection for reads and writes alike: an in-memory database, where every connection would open a
    /// database of its own.
    pub fn single(options: SqliteConnectOptions) -> SqlitePools {
        let pool = SqliteConnPool::new(options, 1);
        SqlitePools {
            read: pool.clone(),
            write: pool,
        }
    }
}

/// Migrations, embedded so that the binary needs nothing beside it. Versions are identical in both folders
/// (a test checks that every file in `migrations/` is listed here).
pub const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "resource store",
        include_str!("../../migrations/sqlite/0001_resource_store.sql"),
    ),
    (
        2,
        "authorization server",
        include_str!("../../migrations/sqlite/0002_auth.sql"),
    ),
    (
        3,
        "performance: audit trail table, revocation index",
        include_str!("../../migrations/sqlite/0003_performance.sql"),
    ),
    (
        4,
        "bulk data export",
        include_str!("../../migrations/sqlite/0004_bulk_export.sql"),
    ),
    (
        5,
        "ehr sync",
        include_str!("../../migrations/sqlite/0005_sync.sql"),
    ),
    (
        6,
        "patient-keyed token index",
        include_str!("../../migrations/sqlite/0006_patient_token_index.sql"),
    ),
    (
        7,
        "audit journal progress",
        include_str!("../../migrations/sqlite/0007_audit_journal.sql"),
    ),
];
pub const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "resource store",
        include_str!("../../migrations/postgres/0001_resource_store.sql"),
    ),
    (
        2,
        "authorization server",
        include_str!("../../migrations/postgres/0002_auth.sql"),
    ),
    (
        3,
        "performance: audit trail table, revocation index",
        include_str!("../../migrations/postgres/0003_performance.sql"),
    ),
    (
        4,
        "bulk data export",
        include_str!("../../migrations/postgres/0004_bulk_export.sql"),
    ),
    (
        5,
        "ehr sync",
        include_str!("../../migrations/postgres/0005_sync.sql"),
    ),
    (
        6,
        "patient-keyed token index",
        include_str!("../../migrations/postgres/0006_patient_token_index.sql"),
    ),
    (
        7,
        "audit journal progress",
        include_str!("../../migrations/postgres/0007_audit_journal.sql"),
    ),
];

fn migrator(list: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        list.iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl Db {
    /// Connects to `url` (`sqlite://path.db` or `postgres://…`), creating a SQLite file when missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                // Statement journals (a multi-row statement inside a transaction keeps one in case it fails half
                // way) and temporary indexes stay in memory instead of temporary files.
                .pragma("temp_store", "memory")
                // The server checkpoints the write-ahead log in the background ([`Db::checkpoint`]), so that no
                // writer pays for it while holding the write lock, and makes it start over once it passes 64 MiB
                // ([`Db::restart_log`]), cutting the file back to that size; SQLite's own checkpoint after a commit
                // is kept only as a safety net for a WAL grown far beyond that (400 MB), and for the command-line
                // tools.
                .pragma("wal_autocheckpoint", "100000")
                .pragma(
                    "journal_size_limit",
                    (SQLITE_LOG_LIMIT_FRAMES * 4096).to_string(),
                );
            if sqlite_in_memory(&options, url) {
                let pools = SqlitePools::single(options);
                // Opened now, so that a bad URL fails at start.
                drop(pools.write.acquire().await?);
                return Ok(Db::Sqlite(pools));
            }
            let read = SqliteConnPool::new(options.clone(), max_connections);
            let write = SqliteConnPool::new(
                options
                    // Writes touch scattered index pages: a larger cache for the one writer, and a large
                    // transaction keeps its changed pages in memory until it commits instead of writing them
                    // to the log early (which wrote many twice).
                    .pragma("cache_size", "-16384")
                    .pragma("cache_spill", "off"),
                1,
            );
            // The writer opens the file now (creating it if missing), so that a bad path fails at start.
            drop(write.acquire().await?);
            Ok(Db::Sqlite(SqlitePools { read, write }))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            Ok(Db::Postgres(pool))
        } else {
            Err(sqlx::Error::Configuration(
                format!(
                    "unsupported database URL scheme (expected sqlite:// or postgres://): {}",
                    scheme_of(url)
                )
                .into(),
            ))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies every embedded migration not yet applied.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            Db::Sqlite(pools) => {
                let mut conn = pools.write.acquire().await?;
                migrator(SQLITE_MIGRATIONS).run(conn.connection()?).await
            }
            Db::Postgres(pool) => migrator(POSTGRES_MIGRATIONS).run(pool).await,
        }
    }

    /// True when every embedded migration has been applied (used by readiness checks).
    pub async fn migrations_applied(&self) -> Result<bool, sqlx::Error> {
        let expected = match self {
            Db::Sqlite(_) => SQLITE_MIGRATIONS.len(),
            Db::Postgres(_) => POSTGRES_MIGRATIONS.len(),
        } as i64;
        let mut tx = self.begin_read().await?;
        let rows = tx
            .fetch(
                &Sql::new("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE"),
                &[Col::Int],
            )
            .await?;
        tx.rollback().await?;
        Ok(rows.first().map(|r| r.int(0)).unwrap_or(0) >= expected)
    }

    /// A transaction for reading. SQLite's deferred BEGIN suffices.
    pub async fn begin_read(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pools) => {
                let mut conn = pools.read.acquire().await?;
                conn.begin("BEGIN").await?;
                Tx::Sqlite(conn, None)
            }
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// A pooled connection without a transaction: no `BEGIN` and `ROLLBACK` (two round trips saved; on SQLite each
    /// is a hop to the connection's thread). Each statement on it is atomic by itself and sees its own snapshot, so
    /// it serves reads that need no single snapshot across statements (a search's page and its count may see the
    /// database a moment apart).
    pub async fn begin_single(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pools) => Tx::Sqlite(pools.read.acquire().await?, None),
            Db::Postgres(pool) => Tx::PostgresSingle(pool.acquire().await?),
        })
    }

    /// A transaction that will write. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a deferred
    /// transaction that upgrades to a writer fails with SQLITE_BUSY without waiting for the busy timeout. SQLite
    /// writers of this process also queue on an in-process lock first, in arrival order: SQLite's own busy handler
    /// makes a waiting writer sleep and poll (up to 100 ms at a time), which leaves the database idle between writers.
    pub async fn begin_write(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(pools) => {
                let (guard, mut conn) = pools.writer().await?;
                conn.begin("BEGIN IMMEDIATE").await?;
                Tx::Sqlite(conn, Some(guard))
            }
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// Runs one read-only statement on any pooled connection, without a transaction around it (one round trip
    /// instead of three, for the hot paths that need a single consistent read).
    pub async fn fetch(&self, sql: &Sql, cols: &[Col]) -> Result<Vec<Row>, sqlx::Error> {
        let text = sql.render(self.backend());
        match self {
            Db::Sqlite(pools) => {
                let mut conn = pools.read.acquire().await?;
                let q = bind_all!(sqlx::query(AssertSqlSafe(text)), &sql.params);
                let rows = q.fetch_all(conn.connection()?).await?;
                rows.iter().map(|r| decode_sqlite(r, cols)).collect()
            }
            Db::Postgres(pool) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(text)), &sql.params);
                let rows = q.fetch_all(pool).await?;
                rows.iter().map(|r| decode_pg(r, cols)).collect()
            }
        }
    }

    /// Copies what the SQLite write-ahead log holds into the database file, as far as readers allow, without
    /// blocking writers (`PRAGMA wal_checkpoint(PASSIVE)`); returns the frames in the log and those copied. The
    /// server runs this in the background (a no-op on PostgreSQL).
    pub async fn checkpoint(&self) -> Result<(i64, i64), sqlx::Error> {
        match self {
            Db::Sqlite(pools) => {
                let mut conn = pools.read.acquire().await?;
                let row: (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(conn.connection()?)
                    .await?;
                Ok((row.1, row.2))
            }
            Db::Postgres(_) => Ok((0, 0)),
        }
    }

    /// Makes the SQLite write-ahead log start over from its beginning (`PRAGMA wal_checkpoint(RESTART)`), as the
    /// server does in the background when the log has grown past [`SQLITE_LOG_LIMIT_FRAMES`]. Under a steady stream
    /// of writes a passive checkpoint copies the log but never lets it start over (a new commit always lands first),
    /// so the file only grows. This one takes the write lock, so the gateway's writers wait while the frames written
    /// since the last passive checkpoint are copied and readers still in the log finish (at most a second). The
    /// next writer then overwrites the file from its start, and SQLite cuts a file grown past the limit back to it
    /// (`journal_size_limit`). Returns whether it completed. A no-op on PostgreSQL.
    pub async fn restart_log(&self) -> Result<bool, sqlx::Error> {
        match self {
            Db::Sqlite(pools) => {
                let (_writers_wait, mut conn) = pools.writer().await?;
                let c = conn.connection()?;
                // Wait for readers at most a second (the next attempt comes soon), not the writers' 30 s.
                sqlx::raw_sql("PRAGMA busy_timeout = 1000")
                    .execute(&mut *c)
                    .await?;
                let row: Result<(i64, i64, i64), sqlx::Error> =
                    sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
                        .fetch_one(&mut *c)
                        .await;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "PRAGMA busy_timeout = {}",
                    SQLITE_BUSY_TIMEOUT.as_millis()
                )))
                .execute(&mut *c)
                .await?;
                Ok(row?.0 == 0)
            }
            Db::Postgres(_) => Ok(true),
        }
    }

    /// Pool statistics: (connections open, connections idle); on SQLite the readers' pool and the writer's.
    pub fn pool_stats(&self) -> (u32, usize) {
        match self {
            Db::Sqlite(pools) => (
                pools.read.size() + pools.write.size(),
                pools.read.num_idle() + pools.write.num_idle(),
            ),
            Db::Postgres(pool) => (pool.size(), pool.num_idle()),
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(pools) => {
                pools.read.close().await;
                pools.write.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Whether a SQLite URL (parsed as `options`) names an in-memory database rather than a file.
pub fn sqlite_in_memory(options: &SqliteConnectOptions, url: &str) -> bool {
    let name = options.get_filename().to_str().unwrap_or_default();
    name.is_empty() || name == ":memory:" || url.contains("mode=memory")
}

/// The length of the SQLite write-ahead log (in pages of 4 KiB: 64 MiB) past which the server makes it start over
/// ([`Db::restart_log`]); a log file grown larger is cut back to this size when it does.
pub const SQLITE_LOG_LIMIT_FRAMES: i64 = 16_384;

/// How long a SQLite writer waits for the write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

type WriteLock = std::sync::Arc<tokio::sync::Mutex<()>>;

/// The in-process write lock of a SQLite database file (one per file, shared by every pool on it).
fn sqlite_write_lock(pool: &SqliteConnPool) -> WriteLock {
    static LOCKS: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, WriteLock>>,
    > = std::sync::LazyLock::new(Default::default);
    let file = pool
        .connect_options()
        .get_filename()
        .to_string_lossy()
        .into_owned();
    match LOCKS.lock() {
        Ok(mut locks) => locks.entry(file).or_default().clone(),
        // Only a panic while holding the map could poison it; fall back to SQLite's own locking.
        Err(_) => WriteLock::default(),
    }
}

fn scheme_of(url: &str) -> &str {
    url.split(':').next().unwrap_or("")
}

/// A bound SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<f64> for Val {
    fn from(v: f64) -> Self {
        Val::Real(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Val::Text(v.clone())
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map(Into::into).unwrap_or(Val::Null)
    }
}

/// SQL text with `?` placeholders and the values bound to them, in order.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    text: String,
    params: Vec<Val>,
}

impl Sql {
    pub fn new(text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            params: Vec::new(),
        }
    }

    /// Appends literal SQL (never user input).
    pub fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind(&mut self, value: impl Into<Val>) -> &mut Sql {
        self.text.push('?');
        self.params.push(value.into());
        self
    }

    /// Appends `v1, v2, …` as placeholders bound to the values (for `IN (…)`).
    pub fn bind_list<V: Into<Val> + Clone>(&mut self, values: &[V]) -> &mut Sql {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.bind(v.clone());
        }
        self
    }

    /// Appends another fragment with its values.
    pub fn append(&mut self, other: &Sql) -> &mut Sql {
        self.text.push_str(&other.text);
        self.params.extend(other.params.iter().cloned());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The SQL text for `backend`: `?` becomes `$1, $2, …` on PostgreSQL.
    pub fn render(&self, backend: Backend) -> String {
        match backend {
            Backend::Sqlite => self.text.clone(),
            Backend::Postgres => {
                let mut out = String::with_capacity(self.text.len() + 8);
                let mut n = 0;
                for ch in self.text.chars() {
                    if ch == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(ch);
                    }
                }
                out
            }
        }
    }
}

/// The type a result column is read as.
#[derive(Debug, Clone, Copy)]
pub enum Col {
    Int,
    Real,
    Text,
    OptInt,
    OptText,
}

/// One result row, decoded per the caller's column list.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Val>);

impl Row {
    pub fn int(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(Val::Int(v)) => *v,
            Some(Val::Real(v)) => *v as i64,
            _ => 0,
        }
    }
    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Val::Int(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn real(&self, i: usize) -> f64 {
        match self.0.get(i) {
            Some(Val::Real(v)) => *v,
            Some(Val::Int(v)) => *v as f64,
            _ => 0.0,
        }
    }
    pub fn text(&self, i: usize) -> String {
        match self.0.get(i) {
            Some(Val::Text(v)) => v.clone(),
            _ => String::new(),
        }
    }
    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Val::Text(v)) => Some(v.clone()),
            _ => None,
        }
    }
    pub fn take_opt_text(&mut self, i: usize) -> Option<String> {
        match self.0.get_mut(i) {
            Some(v @ Val::Text(_)) => match std::mem::replace(v, Val::Null) {
                Val::Text(s) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }
}

/// An open transaction on either database.
pub enum Tx {
    /// A SQLite connection, in a transaction or not ([`Db::begin_single`]), holding this process's write lock of
    /// the file when it is a write transaction.
    Sqlite(SqliteConn, Option<tokio::sync::OwnedMutexGuard<()>>),
    Postgres(Transaction<'static, Postgres>),
    /// No transaction: a pooled connection on which each statement runs on its own, seeing its own snapshot
    /// ([`Db::begin_single`]).
    PostgresSingle(PoolConnection<Postgres>),
}

/// The connection a [`Tx`] runs its statements on, whether in a transaction or not.
enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

impl Tx {
    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(..) => Backend::Sqlite,
            Tx::Postgres(_) | Tx::PostgresSingle(_) => Backend::Postgres,
        }
    }

    fn conn(&mut self) -> Result<Conn<'_>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(conn, _) => Conn::Sqlite(conn.connection()?),
            Tx::Postgres(tx) => Conn::Postgres(tx),
            Tx::PostgresSingle(conn) => Conn::Postgres(conn),
        })
    }

    /// Runs a statement, returning the number of rows it affected.
    pub async fn execute(&mut self, sql: &Sql) -> Result<u64, sqlx::Error> {
        let text = sql.render(self.backend());
        match self.conn()? {
            Conn::Sqlite(conn) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(text)), &sql.params);
                Ok(q.execute(conn).await?.rows_affected())
            }
            Conn::Postgres(conn) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(text)), &sql.params);
                Ok(q.execute(conn).await?.rows_affected())
            }
        }
    }

    /// Runs a query and decodes each row's columns as `cols` says.
    pub async fn fetch(&mut self, sql: &Sql, cols: &[Col]) -> Result<Vec<Row>, sqlx::Error> {
        let text = sql.render(self.backend());
        match self.conn()? {
            Conn::Sqlite(conn) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(text)), &sql.params);
                let rows = q.fetch_all(conn).await?;
                rows.iter().map(|r| decode_sqlite(r, cols)).collect()
            }
            Conn::Postgres(conn) => {
                let q = bind_all!(sqlx::query(AssertSqlSafe(text)), &sql.params);
                let rows = q.fetch_all(conn).await?;
                rows.iter().map(|r| decode_pg(r, cols)).collect()
            }
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            // The write lock (the guard) is released once the commit has run.
            Tx::Sqlite(mut conn, _guard) => conn.finish("COMMIT").await,
            Tx::Postgres(tx) => tx.commit().await,
            Tx::PostgresSingle(_) => Ok(()),
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(mut conn, _guard) => conn.finish("ROLLBACK").await,
            Tx::Postgres(tx) => tx.rollback().await,
            Tx::PostgresSingle(_) => Ok(()),
        }
    }
}

/// Decodes one row of either database the same way.
macro_rules! decode_row {
    ($name:ident, $row:ty) => {
        fn $name(row: &$row, cols: &[Col]) -> Result<Row, sqlx::Error> {
            let mut out = Vec::with_capacity(cols.len());
            for (i, col) in cols.iter().enumerate() {
                out.push(match col {
                    Col::Int => Val::Int(row.try_get::<i64, _>(i)?),
                    Col::Real => Val::Real(row.try_get::<f64, _>(i)?),
                    Col::Text => Val::Text(row.try_get::<String, _>(i)?),
                    Col::OptInt => row
                        .try_get::<Option<i64>, _>(i)?
                        .map_or(Val::Null, Val::Int),
                    Col::OptText => row
                        .try_get::<Option<String>, _>(i)?
                        .map_or(Val::Null, Val::Text),
                });
            }
            Ok(Row(out))
        }
    };
}

decode_row!(decode_sqlite, SqliteRow);
decode_row!(decode_pg, PgRow);

/// True if `err` is a unique-constraint violation (used to turn races into well-defined outcomes).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[allow(clippy::unwrap_used, clippy::panic)]
    async fn sqlite_writes_run_on_their_own_connection_and_are_checkpointed_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let db = Db::connect(&url, 3).await.unwrap();
        let mut tx = db.begin_write().await.unwrap();
        tx.execute(&Sql::new("CREATE TABLE t (x INTEGER)"))
            .await
            .unwrap();
        tx.execute(&Sql::new(
            "INSERT INTO t SELECT value FROM json_each('[1,2,3]')",
        ))
        .await
        .unwrap();
        tx.commit().await.unwrap();
        // Readers (another pool) see the commit at once.
        let rows = db
            .fetch(&Sql::new("SELECT SUM(x) FROM t"), &[Col::Int])
            .await
            .unwrap();
        assert_eq!(rows[0].int(0), 6);
        // The commit stayed in the log (no checkpoint after commit); a checkpoint copies all of it.
        let (log, copied) = db.checkpoint().await.unwrap();
        assert!(log > 0);
        assert_eq!(copied, log);
        // One writer connection beside the readers that have been opened.
        let Db::Sqlite(pools) = &db else {
            panic!("a SQLite database")
        };
        assert_eq!(pools.write.size(), 1);
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn a_sqlite_log_starts_over_on_request_once_readers_are_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("l.db");
        let db = Db::connect(&format!("sqlite://{}", file.display()), 3)
            .await
            .unwrap();
        let mut tx = db.begin_write().await.unwrap();
        tx.execute(&Sql::new("CREATE TABLE t (x TEXT)"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let write = async |rows: i64| {
            let mut tx = db.begin_write().await.unwrap();
            let mut sql =
                Sql::new("INSERT INTO t SELECT hex(randomblob(500)) FROM json_each(json_array(");
            for i in 0..rows {
                sql.push(if i == 0 { "" } else { "," }).bind(i);
            }
            tx.execute(sql.push("))")).await.unwrap();
            tx.commit().await.unwrap();
        };
        let count = async || {
            db.fetch(&Sql::new("SELECT COUNT(*) FROM t"), &[Col::Int])
                .await
                .unwrap()[0]
                .int(0)
        };
        let wal = dir.path().join("l.db-wal");
        let wal_size = || std::fs::metadata(&wal).unwrap().len();
        for _ in 0..20 {
            write(10).await;
        }
        // A reader in the middle of a transaction holds its snapshot, and with it the log.
        let mut reader = db.begin_read().await.unwrap();
        let seen = reader
            .fetch(&Sql::new("SELECT COUNT(*) FROM t"), &[Col::Int])
            .await
            .unwrap();
        assert_eq!(seen[0].int(0), 200);
        for _ in 0..5 {
            write(10).await;
        }
        let (log, _) = db.checkpoint().await.unwrap();
        assert!(log > 0);
        // The log cannot start over under it: the attempt gives up after about a second instead of holding the
        // writers for the 30 s busy timeout, and writes go on.
        let started = std::time::Instant::now();
        assert!(!db.restart_log().await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
        write(10).await;
        reader.rollback().await.unwrap();
        // With the reader gone it starts over: the next writes overwrite the file from its start.
        db.checkpoint().await.unwrap();
        assert!(db.restart_log().await.unwrap());
        let size = wal_size();
        write(10).await;
        write(10).await;
        assert_eq!(wal_size(), size);
        let (after, _) = db.checkpoint().await.unwrap();
        assert!(after < log, "{after} frames after, {log} before");
        assert_eq!(count().await, 280);
    }

    #[test]
    fn placeholders_are_numbered_for_postgres_and_left_alone_for_sqlite() {
        let mut sql = Sql::new("SELECT 1 FROM t WHERE a = ");
        sql.bind(1i64).push(" AND b = ").bind("x");
        assert_eq!(
            sql.render(Backend::Postgres),
            "SELECT 1 FROM t WHERE a = $1 AND b = $2"
        );
        assert_eq!(
            sql.render(Backend::Sqlite),
            "SELECT 1 FROM t WHERE a = ? AND b = ?"
        );
    }

    #[test]
    fn every_migration_file_is_embedded_for_both_databases_with_the_same_versions() {
        for (dir, list) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let path = format!("{}/migrations/{dir}", env!("CARGO_MANIFEST_DIR"));
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            let versions: Vec<i64> = files
                .iter()
                .filter_map(|f| f.split('_').next().and_then(|v| v.parse().ok()))
                .collect();
            let listed: Vec<i64> = list.iter().map(|(v, _, _)| *v).collect();
            assert_eq!(
                versions, listed,
                "{dir} migrations on disk and embedded differ"
            );
        }
        let a: Vec<i64> = SQLITE_MIGRATIONS.iter().map(|m| m.0).collect();
        let b: Vec<i64> = POSTGRES_MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(a, b);
    }
}
