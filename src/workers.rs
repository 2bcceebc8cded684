//! The registry of background workers: readiness reports them, shutdown stops them.
//!
//! Every long-running task is started through [`Workers::spawn`], which hands it a [`Worker`]: a cancellation
//! signal to watch and a heartbeat to beat. `/health/ready` fails when a worker has ended, or when one that beats
//! has not done so within its `stale_after`; `kapgw_worker_up` shows the same per worker. On SIGTERM or SIGINT
//! the server stops accepting, and then:
//!
//! 1. [`Stage::Background`] workers (key reload, EHR outbox delivery, export jobs) are signalled at once, while
//!    in-flight requests finish; each finishes its current unit of work (one delivery, one batch) and returns;
//! 2. once the HTTP server has stopped, [`Stage::AfterRequests`] workers (the audit writers, whose queue the
//!    finishing requests still fill) are signalled: they write what is queued and return;
//! 3. the process waits for all of them until `shutdown_timeout_secs` after the signal, then exits.
//!
//! Plugging a worker in takes one call where the application is built (`startup.rs`), e.g.:
//!
//! ```no_run
//! # use kap_gateway::workers::{Stage, Workers};
//! # use std::time::Duration;
//! # fn f(workers: &Workers) {
//! workers.spawn("outbox", Stage::Background, Some(Duration::from_secs(120)), |w| async move {
//!     while !w.is_stopping() {
//!         // deliver one message (a delivery in progress is not interrupted) …
//!         w.beat();
//!         tokio::select! {
//!             _ = w.stopping() => break,
//!             _ = tokio::time::sleep(Duration::from_secs(1)) => {}
//!         }
//!     }
//! });
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// When a worker is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// As soon as shutdown begins, while in-flight requests finish.
    Background,
    /// After the HTTP server has stopped (workers that serve requests, such as the audit writers).
    AfterRequests,
}

/// What a running worker holds.
#[derive(Clone)]
pub struct Worker {
    name: &'static str,
    stop: CancellationToken,
    heartbeat: Arc<AtomicI64>,
    epoch: Instant,
}

impl Worker {
    /// The worker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Records that the worker is alive and making progress.
    pub fn beat(&self) {
        let ms = i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.heartbeat.store(ms, Ordering::Relaxed);
    }

    /// Resolves when the worker must stop.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.stop.cancelled()
    }

    /// Whether the worker must stop.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }
}

struct Entry {
    name: &'static str,
    stage: Stage,
    stale_after: Option<Duration>,
    heartbeat: Arc<AtomicI64>,
    handle: Option<JoinHandle<()>>,
}

/// A worker's state, as readiness and the metrics report it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerStatus {
    pub name: String,
    pub running: bool,
    /// Seconds since the last heartbeat (`None` for workers that do not beat).
    pub last_beat_secs: Option<f64>,
    pub healthy: bool,
}

struct Inner {
    epoch: Instant,
    background: CancellationToken,
    after_requests: CancellationToken,
    /// Shutdown has begun with a drain period: readiness fails while requests are still served.
    draining: std::sync::atomic::AtomicBool,
    entries: Mutex<Vec<Entry>>,
}

/// The application's background workers (cheap to clone).
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers::new()
    }
}

impl Workers {
    pub fn new() -> Workers {
        Workers {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                background: CancellationToken::new(),
                after_requests: CancellationToken::new(),
                draining: std::sync::atomic::AtomicBool::new(false),
                entries: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Starts a worker on the current runtime. With `stale_after`, readiness fails when the worker has not called
    /// [`Worker::beat`] for that long (it starts as if it had just beaten).
    pub fn spawn<F, Fut>(
        &self,
        name: &'static str,
        stage: Stage,
        stale_after: Option<Duration>,
        f: F,
    ) where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = match stage {
            Stage::Background => self.inner.background.child_token(),
            Stage::AfterRequests => self.inner.after_requests.child_token(),
        };
        let worker = Worker {
            name,
            stop,
            heartbeat: Arc::new(AtomicI64::new(0)),
            epoch: self.inner.epoch,
        };
        worker.beat();
        let heartbeat = worker.heartbeat.clone();
        let handle = tokio::spawn(f(worker));
        if let Ok(mut entries) = self.inner.entries.lock() {
            entries.push(Entry {
                name,
                stage,
                stale_after,
                heartbeat,
                handle: Some(handle),
            });
        }
    }

    /// Every worker's state.
    pub fn status(&self) -> Vec<WorkerStatus> {
        let now = self.inner.epoch.elapsed();
        let Ok(entries) = self.inner.entries.lock() else {
            return Vec::new();
        };
        entries
            .iter()
            .map(|e| {
                let running = e.handle.as_ref().is_some_and(|h| !h.is_finished());
                let last = u64::try_from(e.heartbeat.load(Ordering::Relaxed)).unwrap_or(0);
                let since = now.saturating_sub(Duration::from_millis(last));
                let fresh = e.stale_after.is_none_or(|limit| since <= limit);
                WorkerStatus {
                    name: e.name.to_owned(),
                    running,
                    last_beat_secs: e.stale_after.map(|_| since.as_secs_f64()),
                    healthy: running && fresh,
                }
            })
            .collect()
    }

    /// Whether shutdown has begun (its drain period included).
    pub fn shutting_down(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
            || self.inner.background.is_cancelled()
    }

    /// Starts the drain period of a shutdown: readiness fails from now on; nothing else changes.
    pub fn begin_drain(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Signals the workers of `stage` to stop.
    pub fn signal(&self, stage: Stage) {
        match stage {
            Stage::Background => self.inner.background.cancel(),
            Stage::AfterRequests => self.inner.after_requests.cancel(),
        }
    }

    /// Waits until the workers of `stage` have returned, or until `deadline`. Returns the names of those still
    /// running at the deadline (they are abandoned: the process exits).
    pub async fn wait(&self, stage: Stage, deadline: tokio::time::Instant) -> Vec<&'static str> {
        let handles: Vec<(&'static str, JoinHandle<()>)> = match self.inner.entries.lock() {
            Ok(mut entries) => entries
                .iter_mut()
                .filter(|e| e.stage == stage)
                .filter_map(|e| e.handle.take().map(|h| (e.name, h)))
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut late = Vec::new();
        for (name, handle) in handles {
            match tokio::time::timeout_at(deadline, handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(worker = name, error = %e, "a worker failed"),
                Err(_) => late.push(name),
            }
        }
        late
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_worker_that_stops_beating_is_unhealthy_and_stopping_waits_for_it() {
        let workers = Workers::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        workers.spawn(
            "beater",
            Stage::Background,
            Some(Duration::from_millis(50)),
            |w| async move {
                w.stopping().await;
                // The current unit of work finishes after the signal.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = done_tx.send(());
            },
        );
        assert!(workers.status()[0].healthy);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let s = &workers.status()[0];
        assert!(s.running && !s.healthy, "{s:?}");
        workers.signal(Stage::Background);
        let late = workers
            .wait(
                Stage::Background,
                tokio::time::Instant::now() + Duration::from_secs(5),
            )
            .await;
        assert!(late.is_empty());
        assert!(done_rx.await.is_ok());
    }

    #[tokio::test]
    async fn a_worker_that_ignores_the_signal_is_reported_late() {
        let workers = Workers::new();
        workers.spawn("stubborn", Stage::AfterRequests, None, |_w| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        workers.signal(Stage::AfterRequests);
        let late = workers
            .wait(
                Stage::AfterRequests,
                tokio::time::Instant::now() + Duration::from_millis(50),
            )
            .await;
        assert_eq!(late, vec!["stubborn"]);
    }
}
