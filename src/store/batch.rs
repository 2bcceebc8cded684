//! Reads by id that arrive together are answered by one statement.
//!
//! A read by id is the commonest request an EHR or app makes, and on its own it is a tiny statement. What it costs on
//! SQLite is the trip to the database: sqlx runs each SQLite connection on a thread of its own, so every statement is
//! handed to that thread and its rows handed back (two thread wake-ups). Under load, reads therefore queue here (the
//! store uses this on SQLite only; see `Store::current_direct`), and a few *lanes* (at most [`READ_LANES`] at a time,
//! each a task of its own) take everything queued, up to [`MAX_BATCH`] reads, and fetch it with one
//! `res_type = ? AND id IN (…)` statement per resource type. A read that finds a lane free starts one at once, so a
//! lone read waits for nothing; the busier the gateway, the more each statement carries.
//!
//! Each read sees the database as of its statement, which runs after the read was asked for: a read that follows a
//! committed write sees that write, as without batching.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::db::{Db, Sql};
use super::{RESOURCE_COLS, RESOURCE_KINDS, StoredResource, resource_from_row};
use crate::error::{Error, ErrorKind, Result};

/// The most reads one statement answers.
pub const MAX_BATCH: usize = 64;

/// How many batch statements run at once. Two kept a 2-core machine's SQLite busy; four measured a little faster
/// (more reads in flight while a lane's answers are handed out) and leave most of the pool to searches and writes.
pub const READ_LANES: usize = 4;

/// What a queued read gets back: its row, or the error of the statement that was to fetch it (shared by every read
/// of that statement).
type Reply = std::result::Result<Option<StoredResource>, Arc<sqlx::Error>>;

struct Waiter {
    res_type: String,
    id: String,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    /// Lanes now running.
    running: usize,
}

/// The queue of reads by id of one store (see the module documentation).
pub struct ReadBatcher {
    queue: Mutex<Queue>,
    lanes: usize,
}

impl std::fmt::Debug for ReadBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBatcher")
            .field("lanes", &self.lanes)
            .finish_non_exhaustive()
    }
}

impl ReadBatcher {
    /// A batcher that runs at most `lanes` statements at a time (at least one).
    pub fn new(lanes: usize) -> ReadBatcher {
        ReadBatcher {
            queue: Mutex::new(Queue::default()),
            lanes: lanes.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is consistent between statements: a panic elsewhere cannot leave it half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current row of `res_type/id` (deleted or not), fetched together with the reads queued beside it.
    pub async fn read(
        self: &Arc<Self>,
        db: &Db,
        res_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>> {
        let (reply, answer) = oneshot::channel();
        let start_lane = {
            let mut q = self.lock();
            q.waiting.push(Waiter {
                res_type: res_type.to_owned(),
                id: id.to_owned(),
                reply,
            });
            let free = q.running < self.lanes;
            if free {
                q.running += 1;
            }
            free
        };
        if start_lane {
            let guard = LaneGuard {
                batcher: self.clone(),
                released: false,
            };
            tokio::spawn(lane(guard, db.clone()));
        }
        match answer.await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(e)) if matches!(*e, sqlx::Error::PoolTimedOut) => Err(Error::new(
                ErrorKind::Unavailable,
                "The database is busy; retry later",
            )),
            Ok(Err(e)) => Err(Error::internal(e)),
            Err(_) => Err(Error::internal(anyhow::anyhow!(
                "the read of {res_type}/{id} was dropped before it ran"
            ))),
        }
    }
}

/// A running lane: gives its place back when it ends, however it ends (a cancelled task included).
struct LaneGuard {
    batcher: Arc<ReadBatcher>,
    released: bool,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if !self.released {
            let mut q = self.batcher.lock();
            q.running = q.running.saturating_sub(1);
        }
    }
}

/// Takes queued reads, a statement's worth at a time, until none are left.
async fn lane(mut guard: LaneGuard, db: Db) {
    loop {
        let batch: Vec<Waiter> = {
            let mut q = guard.batcher.lock();
            if q.waiting.is_empty() {
                // Decided under the lock: a read queued after this sees one lane fewer and starts its own.
                q.running = q.running.saturating_sub(1);
                drop(q);
                guard.released = true;
                return;
            }
            let n = q.waiting.len().min(MAX_BATCH);
            q.waiting.drain(..n).collect()
        };
        fetch_batch(&db, batch).await;
    }
}

/// The statement for `ids` of one type. The list is padded (repeating its last id) to a power of two, so that a
/// handful of statement texts serve every batch size and stay in each connection's prepared-statement cache.
fn batch_sql(res_type: &str, ids: &[&str]) -> Sql {
    let mut sql = Sql::new(&format!(
        "SELECT {RESOURCE_COLS} FROM resources WHERE res_type = "
    ));
    let mut padded = ids.to_vec();
    if let Some(last) = ids.last() {
        padded.resize(ids.len().next_power_of_two(), last);
    }
    sql.bind(res_type)
        .push(" AND id IN (")
        .bind_list(&padded)
        .push(")");
    sql
}

/// Fetches a batch, one statement per resource type, and answers every waiter.
async fn fetch_batch(db: &Db, batch: Vec<Waiter>) {
    let mut by_type: Vec<(String, Vec<Waiter>)> = Vec::new();
    for w in batch {
        match by_type.iter_mut().find(|(t, _)| *t == w.res_type) {
            Some((_, group)) => group.push(w),
            None => by_type.push((w.res_type.clone(), vec![w])),
        }
    }
    for (res_type, group) in by_type {
        let mut ids: Vec<&str> = group.iter().map(|w| w.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let sql = batch_sql(&res_type, &ids);
        match db.fetch(&sql, RESOURCE_KINDS).await {
            Ok(rows) => {
                let mut found: HashMap<String, StoredResource> = rows
                    .into_iter()
                    .map(resource_from_row)
                    .map(|r| (r.id.clone(), r))
                    .collect();
                // The last waiter of an id takes the row; any before it (the same id asked twice) get a copy.
                let mut remaining: HashMap<&str, usize> = HashMap::new();
                for w in &group {
                    *remaining.entry(w.id.as_str()).or_default() += 1;
                }
                let mut answers = Vec::with_capacity(group.len());
                for w in &group {
                    let left = remaining.get_mut(w.id.as_str()).map_or(0, |n| {
                        *n -= 1;
                        *n
                    });
                    let row = if left == 0 {
                        found.remove(&w.id)
                    } else {
                        found.get(&w.id).cloned()
                    };
                    answers.push(row);
                }
                for (w, row) in group.into_iter().zip(answers) {
                    // A reader that went away (its client disconnected) no longer wants the answer.
                    let _ = w.reply.send(Ok(row));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for w in group {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::db::Backend;
    use crate::store::{Method, Store};
    use serde_json::json;

    async fn store(dir: &std::path::Path) -> Store {
        let url = format!("sqlite://{}", dir.join("batch.db").display());
        let db = Db::connect(&url, 4).await.unwrap();
        db.migrate().await.unwrap();
        Store::new(db)
    }

    /// Many reads at once (more than a statement carries, several types, the same id twice, unknown ids, a
    /// deleted resource) each get exactly their own row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_each_get_their_own_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let mut tx = store.begin_write().await.unwrap();
        for n in 0..150 {
            let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("o{n}")}});
            store
                .insert(
                    &mut tx,
                    "Observation",
                    &format!("o{n}"),
                    obs,
                    &[],
                    Method::Put,
                )
                .await
                .unwrap();
        }
        let patient = json!({"resourceType": "Patient", "name": [{"family": "Same"}]});
        store
            .insert(&mut tx, "Patient", "o1", patient, &[], Method::Put)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin_write().await.unwrap();
        let gone = store
            .current(&mut tx, "Observation", "o7")
            .await
            .unwrap()
            .unwrap();
        store.delete(&mut tx, &gone).await.unwrap();
        tx.commit().await.unwrap();

        let mut asked: Vec<(&str, String)> =
            (0..160).map(|n| ("Observation", format!("o{n}"))).collect();
        asked.push(("Patient", "o1".into()));
        asked.push(("Observation", "o3".into()));
        asked.push(("Patient", "o2".into()));
        let reads = asked.iter().map(|(t, id)| {
            let store = store.clone();
            let (t, id) = (*t, id.clone());
            tokio::spawn(async move { store.current_direct(t, &id).await })
        });
        let answers = futures_util::future::join_all(reads).await;
        for ((t, id), answer) in asked.iter().zip(answers) {
            let found = answer.unwrap().unwrap();
            let known = (*t == "Observation"
                && id.trim_start_matches('o').parse::<u32>().unwrap() < 150)
                || (*t == "Patient" && id == "o1");
            match found {
                Some(r) => {
                    assert!(known, "{t}/{id} should not exist");
                    assert_eq!((r.res_type.as_str(), r.id.as_str()), (*t, id.as_str()));
                    assert_eq!(r.deleted, *t == "Observation" && id == "o7", "{t}/{id}");
                    if !r.deleted {
                        let json = r.json().unwrap();
                        assert_eq!(json["resourceType"], *t);
                        if *t == "Observation" {
                            assert_eq!(json["code"]["text"], *id);
                        }
                    }
                }
                None => assert!(!known, "{t}/{id} was not found"),
            }
        }
        // Every lane ends once the queue is empty (just after handing out its last answers), and a later read
        // starts a new one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.reads.lock().running > 0 {
            assert!(std::time::Instant::now() < deadline, "a lane never ended");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            store
                .current_direct("Observation", "o0")
                .await
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn batch_statements_are_padded_to_a_power_of_two() {
        assert_eq!(
            batch_sql("Observation", &["a", "b", "c"]).render(Backend::Postgres),
            format!(
                "SELECT {RESOURCE_COLS} FROM resources WHERE res_type = $1 AND id IN ($2, $3, $4, $5)"
            )
        );
        assert_eq!(
            batch_sql("Patient", &["x"]).render(Backend::Sqlite),
            format!("SELECT {RESOURCE_COLS} FROM resources WHERE res_type = ? AND id IN (?)")
        );
    }
}
