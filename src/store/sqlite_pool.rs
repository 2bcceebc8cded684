//! The SQLite connection pool.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every command to that thread and back, so each
//! command costs two thread switches. sqlx's general-purpose pool adds two such commands to every use of a
//! connection: a liveness ping when it hands a connection out and another when it takes it back (in a task spawned
//! for the purpose). A SQLite connection to a local file does not go stale the way a network connection does, so this
//! pool hands connections out and takes them back without talking to them: a read by id or a search is one hop to
//! the connection's thread instead of three.
//!
//! Connections are opened on first need, up to the pool's size. A connection given back in the middle of a
//! transaction (a request that failed or was cancelled before its commit or rollback) is rolled back by a task
//! that holds the connection's place in the pool until it is done, so the next user always gets a connection
//! outside any transaction.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a caller waits for a free connection before giving up (sqlx's pool default).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// A pool of connections to one SQLite database. Cloning shares the pool.
#[derive(Clone)]
pub struct SqliteConnPool(Arc<Inner>);

struct Inner {
    options: SqliteConnectOptions,
    max: u32,
    /// One permit per connection the pool may have out at once.
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<SqliteConnection>>,
    /// Connections open, idle or in use.
    open: AtomicU32,
}

impl std::fmt::Debug for SqliteConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteConnPool")
            .field("max", &self.0.max)
            .field("open", &self.size())
            .field("idle", &self.num_idle())
            .finish()
    }
}

impl SqliteConnPool {
    /// A pool of at most `max` connections opened with `options` when first needed.
    pub fn new(options: SqliteConnectOptions, max: u32) -> SqliteConnPool {
        let max = max.max(1);
        SqliteConnPool(Arc::new(Inner {
            options,
            max,
            permits: Arc::new(Semaphore::new(max as usize)),
            idle: Mutex::new(Vec::new()),
            open: AtomicU32::new(0),
        }))
    }

    pub fn connect_options(&self) -> &SqliteConnectOptions {
        &self.0.options
    }

    /// A connection, outside any transaction: an idle one, or a new one if fewer than the pool's size are open.
    pub async fn acquire(&self) -> Result<SqliteConn, sqlx::Error> {
        let permit = tokio::time::timeout(ACQUIRE_TIMEOUT, self.0.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let conn = match self.take_idle() {
            Some(conn) => conn,
            None => {
                let conn = self.0.options.connect().await?;
                self.0.open.fetch_add(1, Ordering::Relaxed);
                conn
            }
        };
        Ok(SqliteConn {
            conn: Some(conn),
            pool: self.clone(),
            permit: Some(permit),
            in_transaction: false,
        })
    }

    /// Connections open, idle or in use.
    pub fn size(&self) -> u32 {
        self.0.open.load(Ordering::Relaxed)
    }

    pub fn num_idle(&self) -> usize {
        self.0.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    /// Waits for every connection to come back, closes them all, and refuses connections from then on.
    pub async fn close(&self) {
        if let Ok(all) = self.0.permits.acquire_many(self.0.max).await {
            self.0.permits.close();
            let idle: Vec<SqliteConnection> = match self.0.idle.lock() {
                Ok(mut idle) => std::mem::take(&mut *idle),
                Err(_) => Vec::new(),
            };
            for conn in idle {
                self.0.open.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = conn.close().await {
                    tracing::warn!(error = %e, "closing a SQLite connection failed");
                }
            }
            drop(all);
        }
    }

    fn take_idle(&self) -> Option<SqliteConnection> {
        self.0.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    fn put_back(&self, conn: SqliteConnection) {
        match self.0.idle.lock() {
            Ok(mut idle) => idle.push(conn),
            // Only a panic while holding the list could poison it; the connection is closed instead.
            Err(_) => self.discard(conn),
        }
    }

    fn discard(&self, conn: SqliteConnection) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        // Dropping it ends its thread, which closes the database handle.
        drop(conn);
    }
}

/// A connection taken from a [`SqliteConnPool`]; going out of scope gives it back.
pub struct SqliteConn {
    /// Always `Some` until dropped.
    conn: Option<SqliteConnection>,
    pool: SqliteConnPool,
    /// Released after the connection is back in the idle list, so that whoever gets the permit finds it there.
    permit: Option<OwnedSemaphorePermit>,
    in_transaction: bool,
}

impl SqliteConn {
    pub fn connection(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    /// Starts a transaction with `statement` (`BEGIN` or `BEGIN IMMEDIATE`).
    pub async fn begin(&mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(statement).execute(self.connection()?).await?;
        self.in_transaction = true;
        Ok(())
    }

    /// Ends the transaction (`COMMIT` or `ROLLBACK`); a no-op outside one. If this fails the connection is still
    /// in the transaction, and is rolled back when given back.
    pub async fn finish(&mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        if self.in_transaction {
            sqlx::raw_sql(statement).execute(self.connection()?).await?;
            self.in_transaction = false;
        }
        Ok(())
    }
}

impl Drop for SqliteConn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let permit = self.permit.take();
        let pool = self.pool.clone();
        if !self.in_transaction {
            pool.put_back(conn);
            drop(permit);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    match sqlx::raw_sql("ROLLBACK").execute(&mut conn).await {
                        Ok(_) => pool.put_back(conn),
                        Err(e) => {
                            tracing::warn!(error = %e, "rolling back an abandoned SQLite transaction failed; closing its connection");
                            pool.discard(conn);
                        }
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                pool.discard(conn);
                drop(permit);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::str::FromStr;

    async fn file_pool(max: u32) -> (tempfile::TempDir, SqliteConnPool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = SqliteConnPool::new(options, max);
        let mut c = pool.acquire().await.unwrap();
        sqlx::raw_sql("CREATE TABLE t (x INTEGER)")
            .execute(c.connection().unwrap())
            .await
            .unwrap();
        drop(c);
        (dir, pool)
    }

    async fn count(pool: &SqliteConnPool) -> i64 {
        let mut c = pool.acquire().await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(c.connection().unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn connections_are_opened_on_need_reused_and_bounded() {
        let (_dir, pool) = file_pool(2).await;
        assert_eq!((pool.size(), pool.num_idle()), (1, 1));
        let a = pool.acquire().await.unwrap();
        let b = pool.acquire().await.unwrap();
        assert_eq!((pool.size(), pool.num_idle()), (2, 0));
        // A third caller waits until one comes back.
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(a);
        waiting.await.unwrap().unwrap();
        drop(b);
        assert_eq!((pool.size(), pool.num_idle()), (2, 2));
        pool.close().await;
        assert_eq!(pool.size(), 0);
        assert!(matches!(pool.acquire().await, Err(sqlx::Error::PoolClosed)));
    }

    #[tokio::test]
    async fn a_connection_given_back_inside_a_transaction_is_rolled_back_first() {
        let (_dir, pool) = file_pool(1).await;
        let mut c = pool.acquire().await.unwrap();
        c.begin("BEGIN IMMEDIATE").await.unwrap();
        sqlx::raw_sql("INSERT INTO t VALUES (1)")
            .execute(c.connection().unwrap())
            .await
            .unwrap();
        // Abandoned without COMMIT or ROLLBACK, as a failed request would leave it.
        drop(c);
        // The one connection is the same one: it must come back outside any transaction, the insert undone.
        let mut c = pool.acquire().await.unwrap();
        c.begin("BEGIN IMMEDIATE").await.unwrap();
        c.finish("COMMIT").await.unwrap();
        drop(c);
        assert_eq!(count(&pool).await, 0);
        // A committed one stays.
        let mut c = pool.acquire().await.unwrap();
        c.begin("BEGIN").await.unwrap();
        sqlx::raw_sql("INSERT INTO t VALUES (2)")
            .execute(c.connection().unwrap())
            .await
            .unwrap();
        c.finish("COMMIT").await.unwrap();
        drop(c);
        assert_eq!(count(&pool).await, 1);
        assert_eq!(pool.size(), 1);
    }
}
