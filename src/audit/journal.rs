//! The audit journal: a local append-only file that makes each AuditEvent durable before its response leaves,
//! imported into the audit table in large batches by a background task.
//!
//! A request's event is written to the journal with one `write` of one line (an [`AuditRow::line`]) and the request
//! goes on; the importer copies new lines into the database every [`IMPORT_INTERVAL`] in one transaction, which
//! records in the same commit how far it has read (table `audit_journal`), so a line is imported exactly once
//! whatever crashes in between. Compared with a database commit per group of requests this takes the audit trail
//! off the request's critical path and makes commits rare (each commit of the embedded SQLite also empties the
//! other connections' page caches).
//!
//! Guarantees:
//! - Nothing is answered unaudited: a request whose line cannot be written gets a 500 instead of its data.
//! - A line survives a crash of the process (it is in the operating system's file cache once `write` returns);
//!   like SQLite's own write-ahead log at `synchronous=NORMAL`, the last moments before a power failure may not.
//! - Reading the audit trail (`/fhir/AuditEvent`) first waits until every line written so far has been imported
//!   ([`Journal::flush`]), so an AuditEvent search sees the events of every request already answered.
//!
//! Layout: `<root>/<journal id>/<segment>.ndjson`, one directory per running process, held with an exclusive file
//! lock (`<dir>/lock`) while it runs. Segments roll over at [`SEGMENT_BYTES`] and are deleted once imported. At start,
//! and every minute, a process imports and removes the directories of processes that are gone (their lock is free):
//! several replicas may share one root.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::error::{Error, ErrorKind, Result};
use crate::store::Store;
use crate::store::audit::AuditRow;
use crate::store::db::{Col, Sql};

/// How often the importer copies new lines into the database.
pub const IMPORT_INTERVAL: Duration = Duration::from_secs(1);

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// How long a reader of the audit trail waits for the importer before giving up with 503.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// How often orphaned journals (of processes that are gone) are looked for.
const ADOPT_INTERVAL: Duration = Duration::from_secs(60);

const SEGMENT_SUFFIX: &str = ".ndjson";

/// A place in a journal: segment number and byte offset in it. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Out {
    segment: u64,
    file: File,
    len: u64,
    /// Set once the importer has taken the last line, at shutdown: later appends fail instead of being lost.
    closed: bool,
}

/// This process's journal.
#[derive(Debug)]
pub struct Journal {
    root: PathBuf,
    id: String,
    dir: PathBuf,
    /// Held (locked) while the process runs: tells other processes this journal is alive.
    _lock: File,
    segment_bytes: u64,
    out: Mutex<Out>,
    /// How far the importer has got.
    imported: watch::Sender<Pos>,
    wake: Notify,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:012}{SEGMENT_SUFFIX}"))
}

fn open_segment(dir: &Path, segment: u64) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, segment))
}

/// The segment numbers present in a journal directory, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> Error {
    Error::internal(anyhow::anyhow!(
        "audit journal: cannot {what} {}: {e}",
        path.display()
    ))
}

impl Journal {
    /// Creates this process's journal under `root` (created when missing).
    pub fn create(root: &Path) -> Result<Journal> {
        Journal::create_with(root, SEGMENT_BYTES)
    }

    /// The same, with segments rolling over at `segment_bytes`.
    pub fn create_with(root: &Path, segment_bytes: u64) -> Result<Journal> {
        fs::create_dir_all(root).map_err(|e| io_error("create", root, &e))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = root.join(&id);
        fs::create_dir(&dir).map_err(|e| io_error("create", &dir, &e))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(|e| io_error("create", &lock_path, &e))?;
        lock.try_lock()
            .map_err(|e| io_error("lock", &lock_path, &io::Error::other(e.to_string())))?;
        let file = open_segment(&dir, 0).map_err(|e| io_error("create", &dir, &e))?;
        Ok(Journal {
            root: root.to_owned(),
            id,
            dir,
            _lock: lock,
            segment_bytes,
            out: Mutex::new(Out {
                segment: 0,
                file,
                len: 0,
                closed: false,
            }),
            imported: watch::Sender::new(Pos::default()),
            wake: Notify::new(),
        })
    }

    /// This journal's id (its directory name and its key in the `audit_journal` table).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn out(&self) -> Result<std::sync::MutexGuard<'_, Out>> {
        self.out
            .lock()
            .map_err(|_| Error::internal(anyhow::anyhow!("audit journal: lock poisoned")))
    }

    /// Appends one event; when this returns `Ok` the event survives a crash of the process.
    pub fn append(&self, row: &AuditRow) -> Result<Pos> {
        let mut line = row.line()?;
        line.push('\n');
        let mut out = self.out()?;
        if out.closed {
            return Err(Error::internal(anyhow::anyhow!(
                "the audit journal is closed: the gateway is shutting down"
            )));
        }
        if out.len >= self.segment_bytes {
            let next = out.segment + 1;
            let file = open_segment(&self.dir, next)
                .map_err(|e| io_error("create", &segment_path(&self.dir, next), &e))?;
            out.segment = next;
            out.file = file;
            out.len = 0;
        }
        if let Err(e) = out.file.write_all(line.as_bytes()) {
            // A partly written line would run into the next one: cut it off.
            let len = out.len;
            let _ = out.file.set_len(len);
            return Err(io_error(
                "write to",
                &segment_path(&self.dir, out.segment),
                &e,
            ));
        }
        out.len += line.len() as u64;
        Ok(Pos {
            segment: out.segment,
            offset: out.len,
        })
    }

    /// Where the next line will be written.
    fn end(&self) -> Result<Pos> {
        let out = self.out()?;
        Ok(Pos {
            segment: out.segment,
            offset: out.len,
        })
    }

    /// Waits until every event appended before the call is in the database.
    pub async fn flush(&self) -> Result<()> {
        let target = self.end()?;
        let mut imported = self.imported.subscribe();
        if *imported.borrow() >= target {
            return Ok(());
        }
        self.wake.notify_one();
        match tokio::time::timeout(FLUSH_TIMEOUT, imported.wait_for(|p| *p >= target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::internal(anyhow::anyhow!(
                "the audit journal importer has stopped"
            ))),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                "the audit trail is not up to date yet (its importer is behind); try again shortly",
            )),
        }
    }

    /// Imports what is new in this process's journal; returns the number of events imported.
    pub async fn import(&self, store: &Store, reader: &mut Reader) -> Result<usize> {
        let end = self.end()?;
        let mut total = 0;
        loop {
            let n = reader.import_some(store, &self.id, end.segment).await?;
            total += n.unwrap_or(0);
            self.imported.send_replace(reader.pos);
            if n.is_none() && reader.pos.segment >= end.segment {
                return Ok(total);
            }
        }
    }

    /// Imports and removes the journals of processes that are gone; returns the number of events imported.
    pub async fn adopt_orphans(&self, store: &Store) -> Result<usize> {
        adopt_orphans(&self.root, Some(&self.id), store).await
    }

    /// Runs the importer until told to stop, then imports what is left.
    pub async fn run_importer(
        self: std::sync::Arc<Journal>,
        store: Store,
        worker: crate::workers::Worker,
    ) {
        let mut reader = Reader::new(&self.dir, Pos::default());
        let mut last_adopt = tokio::time::Instant::now();
        loop {
            let stopping = tokio::select! {
                biased;
                _ = worker.stopping() => true,
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep(IMPORT_INTERVAL) => false,
            };
            match self.import(&store, &mut reader).await {
                Ok(_) => worker.beat(),
                Err(e) => {
                    tracing::error!(error = %e, journal = %self.id, "could not import audit events; they stay in the journal and are retried");
                    if stopping {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if stopping {
                self.close(&store, &mut reader).await;
                return;
            }
            if last_adopt.elapsed() >= ADOPT_INTERVAL {
                last_adopt = tokio::time::Instant::now();
                if let Err(e) = self.adopt_orphans(&store).await {
                    tracing::error!(error = %e, "could not import an orphaned audit journal");
                }
            }
        }
    }

    /// At shutdown, after the importer's last round: refuses further appends, imports what came in meanwhile, then
    /// removes the journal's directory and its row (in that order: a row without files is harmless, files without
    /// their row would be imported again).
    async fn close(&self, store: &Store, reader: &mut Reader) {
        match self.out() {
            Ok(mut out) => out.closed = true,
            Err(_) => return,
        }
        if let Err(e) = self.import(store, reader).await {
            tracing::error!(error = %e, journal = %self.id, "could not import the last audit events; they stay in the journal for the next start");
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            tracing::warn!(error = %e, journal = %self.id, "could not remove the imported audit journal");
            return;
        }
        if let Err(e) = forget(store, &self.id).await {
            tracing::warn!(error = %e, journal = %self.id, "could not delete the imported audit journal's position");
        }
    }
}

impl Drop for Journal {
    /// A journal fully imported is removed on the way out; one with lines left stays for the next start.
    fn drop(&mut self) {
        let imported = *self.imported.borrow();
        if let Ok(end) = self.end()
            && imported >= end
        {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Reads a journal directory from a position on, importing complete lines.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    pos: Pos,
    file: Option<File>,
    /// Bytes of journal read for one transaction (more when a single line is longer).
    batch_bytes: usize,
}

/// Bytes of journal imported in one database transaction. On SQLite every commit empties the other connections'
/// page caches, so fewer, larger transactions serve the readers better; on PostgreSQL the transaction is split into
/// statements of [`crate::store::audit::POSTGRES_STATEMENT_BYTES`].
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

impl Reader {
    pub fn new(dir: &Path, pos: Pos) -> Reader {
        Reader::with_batch_bytes(dir, pos, BATCH_BYTES)
    }

    fn with_batch_bytes(dir: &Path, pos: Pos, batch_bytes: usize) -> Reader {
        Reader {
            dir: dir.to_owned(),
            pos,
            file: None,
            batch_bytes,
        }
    }

    /// Imports about [`BATCH_BYTES`] of complete lines (at least one whole line, however long) from the current
    /// segment, in one transaction that also records the new position. At the end of a segment older than `last_segment` (which is complete), moves
    /// on to the next one and deletes it. Returns the number of events imported (0 when it only moved on to the next
    /// segment), `None` when there was nothing new.
    async fn import_some(
        &mut self,
        store: &Store,
        journal: &str,
        last_segment: u64,
    ) -> Result<Option<usize>> {
        let path = segment_path(&self.dir, self.pos.segment);
        let file = match &mut self.file {
            Some(f) => f,
            slot => match File::open(&path) {
                Ok(f) => slot.insert(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Deleted after import by an earlier run that stopped before recording the next position.
                    if self.pos.segment < last_segment {
                        self.pos = Pos {
                            segment: self.pos.segment + 1,
                            offset: 0,
                        };
                        return Ok(Some(0));
                    }
                    return Ok(None);
                }
                Err(e) => return Err(io_error("open", &path, &e)),
            },
        };
        file.seek(SeekFrom::Start(self.pos.offset))
            .map_err(|e| io_error("read", &path, &e))?;
        let mut buf = Vec::new();
        // Only whole lines: the writer may be in the middle of one. A line longer than the batch is read on to its
        // end (stopping short would take it for a torn last line, or wait for it forever).
        let complete = loop {
            let read = (&mut *file)
                .take(self.batch_bytes as u64)
                .read_to_end(&mut buf)
                .map_err(|e| io_error("read", &path, &e))?;
            match buf.iter().rposition(|b| *b == b'\n') {
                Some(i) => break i + 1,
                // The end of the file came first: no whole line yet.
                None if read == 0 || read < self.batch_bytes => break 0,
                None => {}
            }
        };
        if complete == 0 {
            if self.pos.segment < last_segment {
                // A finished segment read to its end (a torn last line of a crashed writer is dropped).
                if !buf.is_empty() {
                    tracing::warn!(segment = %path.display(), bytes = buf.len(), "audit journal: dropping an incomplete last line");
                }
                self.file = None;
                let _ = fs::remove_file(&path);
                self.pos = Pos {
                    segment: self.pos.segment + 1,
                    offset: 0,
                };
                return Ok(Some(0));
            }
            return Ok(None);
        }
        let rows = rows_of_lines(&buf[..complete], &path);
        let next = Pos {
            segment: self.pos.segment,
            offset: self.pos.offset + complete as u64,
        };
        let mut tx = store.begin_write().await?;
        store.append_audit(&mut tx, &rows).await?;
        let mut progress =
            Sql::new("INSERT INTO audit_journal (journal, segment, byte_offset) VALUES (");
        progress
            .bind(journal)
            .push(", ")
            .bind(i64::try_from(next.segment).unwrap_or(i64::MAX))
            .push(", ")
            .bind(i64::try_from(next.offset).unwrap_or(i64::MAX))
            .push(
                ") ON CONFLICT (journal) DO UPDATE SET segment = excluded.segment, byte_offset = excluded.byte_offset",
            );
        tx.execute(&progress).await?;
        tx.commit().await?;
        self.pos = next;
        Ok(Some(rows.len()))
    }
}

/// The events of the well-formed lines among `bytes`; a malformed line (which only a damaged file can hold) is
/// logged and left out rather than blocking every line after it.
fn rows_of_lines(bytes: &[u8], path: &Path) -> Vec<AuditRow> {
    let mut rows = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match std::str::from_utf8(line)
            .ok()
            .and_then(|text| AuditRow::from_line(text).ok())
        {
            Some(row) => rows.push(row),
            None => {
                tracing::error!(segment = %path.display(), line = %String::from_utf8_lossy(line), "audit journal: skipping a malformed line");
            }
        }
    }
    rows
}

/// Imports and removes every journal under `root` whose process is gone (its lock can be taken), except `own`.
pub async fn adopt_orphans(root: &Path, own: Option<&str>, store: &Store) -> Result<usize> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error("read", root, &e)),
    };
    let mut total = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if Some(id.as_str()) == own || !entry.path().is_dir() {
            continue;
        }
        let dir = entry.path();
        let lock_path = dir.join("lock");
        let Ok(lock) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            // Its process is still running.
            continue;
        }
        let n = import_orphan(&dir, &id, store).await?;
        if n > 0 {
            tracing::info!(journal = %id, events = n, "imported audit events left in the journal of an earlier run");
        }
        total += n;
        fs::remove_dir_all(&dir).map_err(|e| io_error("remove", &dir, &e))?;
        forget(store, &id).await?;
        drop(lock);
    }
    Ok(total)
}

/// Deletes the recorded position of a journal whose files are gone.
async fn forget(store: &Store, journal: &str) -> Result<()> {
    let mut sql = Sql::new("DELETE FROM audit_journal WHERE journal = ");
    sql.bind(journal);
    let mut tx = store.begin_write().await?;
    tx.execute(&sql).await?;
    tx.commit().await?;
    Ok(())
}

async fn import_orphan(dir: &Path, id: &str, store: &Store) -> Result<usize> {
    let mut query = Sql::new("SELECT segment, byte_offset FROM audit_journal WHERE journal = ");
    query.bind(id);
    let rows = store.db.fetch(&query, &[Col::Int, Col::Int]).await?;
    let start = rows.first().map_or(Pos::default(), |r| Pos {
        segment: u64::try_from(r.int(0)).unwrap_or(0),
        offset: u64::try_from(r.int(1)).unwrap_or(0),
    });
    let present = segments(dir).map_err(|e| io_error("read", dir, &e))?;
    let Some(&last) = present.last() else {
        return Ok(0);
    };
    // Skip segments deleted after import; start at the first one present at or after the recorded position.
    let mut reader = Reader::new(dir, start);
    if let Some(&first) = present.iter().find(|s| **s >= start.segment)
        && first > start.segment
    {
        reader.pos = Pos {
            segment: first,
            offset: 0,
        };
    }
    let mut total = 0;
    // Every segment of a finished journal is complete: `last + 1` lets the reader move past (and delete) the last.
    while reader.pos.segment <= last {
        total += reader.import_some(store, id, last + 1).await?.unwrap_or(0);
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::db::Db;

    async fn store(dir: &Path) -> Store {
        let url = format!("sqlite://{}", dir.join("journal.db").display());
        let db = Db::connect(&url, 2).await.unwrap();
        db.migrate().await.unwrap();
        Store::new(db)
    }

    fn row(n: usize) -> AuditRow {
        AuditRow::new(json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "action": "R",
            "recorded": "2026-01-02T03:04:05Z",
            "outcome": "0",
            "outcomeDesc": format!("event {n}\nwith a line break"),
            "agent": [{"who": {"reference": "Practitioner/lee"}, "requestor": true}],
            "source": {"observer": {"display": "kap-gateway"}},
            "entity": [{"what": {"reference": format!("Patient/p{n}")}}],
        }))
        .unwrap()
    }

    async fn count(store: &Store, table: &str) -> i64 {
        let rows = store
            .db
            .fetch(
                &Sql::new(&format!("SELECT COUNT(*) FROM {table}")),
                &[Col::Int],
            )
            .await
            .unwrap();
        rows[0].int(0)
    }

    async fn event_ids(store: &Store) -> Vec<String> {
        let rows = store
            .db
            .fetch(
                &Sql::new("SELECT id FROM audit_events ORDER BY id"),
                &[Col::Text],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.text(0)).collect()
    }

    #[tokio::test]
    async fn appended_events_are_imported_once_with_their_references() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let journal = Journal::create(&dir.path().join("audit")).unwrap();
        let mut reader = Reader::new(&journal.dir, Pos::default());
        let rows: Vec<AuditRow> = (0..3).map(row).collect();
        for r in &rows {
            journal.append(r).unwrap();
        }
        assert_eq!(journal.import(&store, &mut reader).await.unwrap(), 3);
        assert_eq!(journal.import(&store, &mut reader).await.unwrap(), 0);
        let mut expected: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        expected.sort();
        assert_eq!(event_ids(&store).await, expected);
        // Each event: its agent, its entity, and the entity again as `patient`.
        assert_eq!(count(&store, "audit_event_refs").await, 9);
        let stored = store
            .db
            .fetch(
                &Sql::new("SELECT content FROM audit_events ORDER BY id"),
                &[Col::Text],
            )
            .await
            .unwrap();
        let first: serde_json::Value = serde_json::from_str(&stored[0].text(0)).unwrap();
        assert!(first["outcomeDesc"].as_str().unwrap().contains('\n'));
        assert_eq!(*journal.imported.borrow(), journal.end().unwrap());
    }

    #[tokio::test]
    async fn segments_roll_over_and_are_deleted_once_imported() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let journal = Journal::create_with(&dir.path().join("audit"), 1000).unwrap();
        let mut reader = Reader::new(&journal.dir, Pos::default());
        for n in 0..10 {
            journal.append(&row(n)).unwrap();
        }
        let end = journal.end().unwrap();
        assert!(end.segment >= 4, "{end:?}");
        assert_eq!(
            segments(&journal.dir).unwrap().len() as u64,
            end.segment + 1
        );
        assert_eq!(journal.import(&store, &mut reader).await.unwrap(), 10);
        // Only the segment being written is left.
        assert_eq!(segments(&journal.dir).unwrap(), vec![end.segment]);
        assert_eq!(count(&store, "audit_events").await, 10);
    }

    #[tokio::test]
    async fn events_longer_than_a_batch_are_imported_whole_in_old_and_current_segments() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        // Segments of about 1,000 bytes, batches of 100: every line is longer than a batch.
        let journal = Journal::create_with(&dir.path().join("audit"), 1000).unwrap();
        let mut reader = Reader::with_batch_bytes(&journal.dir, Pos::default(), 100);
        let rows: Vec<AuditRow> = (0..6).map(row).collect();
        for r in &rows {
            assert!(r.line().unwrap().len() > 100);
            journal.append(r).unwrap();
        }
        assert!(journal.end().unwrap().segment >= 2);
        assert_eq!(journal.import(&store, &mut reader).await.unwrap(), 6);
        let mut expected: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        expected.sort();
        assert_eq!(event_ids(&store).await, expected);
        assert_eq!(*journal.imported.borrow(), journal.end().unwrap());
    }

    #[tokio::test]
    async fn flush_waits_for_the_importer() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let journal = std::sync::Arc::new(Journal::create(&dir.path().join("audit")).unwrap());
        let workers = crate::workers::Workers::new();
        let running = journal.clone();
        let importer_store = store.clone();
        workers.spawn(
            "audit-importer",
            crate::workers::Stage::AfterRequests,
            None,
            move |w| running.run_importer(importer_store, w),
        );
        for n in 0..5 {
            journal.append(&row(n)).unwrap();
        }
        journal.flush().await.unwrap();
        assert_eq!(count(&store, "audit_events").await, 5);
        journal.append(&row(5)).unwrap();
        workers.signal(crate::workers::Stage::AfterRequests);
        workers
            .wait(
                crate::workers::Stage::AfterRequests,
                tokio::time::Instant::now() + Duration::from_secs(10),
            )
            .await;
        // The importer took what was left on its way out, then removed the journal and its position.
        assert_eq!(count(&store, "audit_events").await, 6);
        assert!(!journal.dir.exists());
        assert_eq!(count(&store, "audit_journal").await, 0);
        assert!(
            journal.append(&row(6)).is_err(),
            "a closed journal refuses lines"
        );
    }

    #[tokio::test]
    async fn a_journal_left_by_a_crash_is_imported_exactly_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let root = dir.path().join("audit");
        let crashed = Journal::create_with(&root, 2000).unwrap();
        let crashed_dir = crashed.dir.clone();
        let mut reader = Reader::new(&crashed.dir, Pos::default());
        for n in 0..3 {
            crashed.append(&row(n)).unwrap();
        }
        assert_eq!(crashed.import(&store, &mut reader).await.unwrap(), 3);
        for n in 3..8 {
            crashed.append(&row(n)).unwrap();
        }
        let last = crashed.end().unwrap().segment;
        // A line the crash cut short, and a damaged one before it.
        let mut file = open_segment(&crashed_dir, last).unwrap();
        file.write_all(b"not json\n[\"torn-line\", 17").unwrap();
        // The process is gone: its lock is released, its unimported lines stay.
        drop(crashed);
        assert!(crashed_dir.exists());

        let alive = Journal::create(&root).unwrap();
        alive.append(&row(100)).unwrap();
        assert_eq!(alive.adopt_orphans(&store).await.unwrap(), 5);
        assert!(!crashed_dir.exists());
        // The running journal is not touched.
        assert!(alive.dir.exists());
        assert_eq!(segments(&alive.dir).unwrap(), vec![0]);
        let ids = event_ids(&store).await;
        assert_eq!(ids.len(), 8);
        assert_eq!(count(&store, "audit_journal").await, 0);
        // Nothing left to adopt the second time.
        assert_eq!(
            adopt_orphans(&root, Some(alive.id()), &store)
                .await
                .unwrap(),
            0
        );
    }
}
