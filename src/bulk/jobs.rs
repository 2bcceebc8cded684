//! Export jobs in the database: creation at kick-off, claims with a lease, progress, completion, cancellation and
//! expiry, and the stored NDJSON files.

use std::collections::BTreeMap;

use crate::auth::access::Access;
use crate::auth::scopes::ScopeSet;
use crate::error::{Error, Result};
use crate::fhir::datetime::now_micros;
use crate::store::db::{Backend, Col, Db, Row, Sql};

/// Export level: the whole server, every patient's compartment, or a Group's members' compartments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    System,
    Patient,
    Group,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Patient => "patient",
            Level::Group => "group",
        }
    }

    fn parse(s: &str) -> Level {
        match s {
            "patient" => Level::Patient,
            "group" => Level::Group,
            _ => Level::System,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub status: String,
    pub level: Level,
    pub group_id: Option<String>,
    pub members: Vec<String>,
    pub request_url: String,
    pub types: Vec<String>,
    pub explicit_types: bool,
    /// Resource type → `_typeFilter` query string.
    pub type_filters: BTreeMap<String, String>,
    pub since: Option<String>,
    pub transaction_time: i64,
    pub client_id: String,
    pub subject: String,
    pub scopes: String,
    pub patient: Option<String>,
    pub psychotherapy: bool,
    pub admin: bool,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub attempts: i64,
    pub type_index: i64,
    pub after_pk: i64,
    pub exported: i64,
    pub error: Option<String>,
}

const JOB_COLS: &str = "id, status, level, group_id, members, request_url, types, explicit_types, type_filters, \
     since, transaction_time, client_id, subject, scopes, patient, psychotherapy, admin, created_at, completed_at, \
     expires_at, attempts, type_index, after_pk, exported, error";

const JOB_KINDS: &[Col] = &[
    Col::Text,
    Col::Text,
    Col::Text,
    Col::OptText,
    Col::OptText,
    Col::Text,
    Col::Text,
    Col::Int,
    Col::Text,
    Col::OptText,
    Col::Int,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::OptText,
    Col::Int,
    Col::Int,
    Col::Int,
    Col::OptInt,
    Col::OptInt,
    Col::Int,
    Col::Int,
    Col::Int,
    Col::Int,
    Col::OptText,
];

fn job_from_row(r: &Row) -> Job {
    Job {
        id: r.text(0),
        status: r.text(1),
        level: Level::parse(&r.text(2)),
        group_id: r.opt_text(3),
        members: r
            .opt_text(4)
            .and_then(|m| serde_json::from_str(&m).ok())
            .unwrap_or_default(),
        request_url: r.text(5),
        types: serde_json::from_str(&r.text(6)).unwrap_or_default(),
        explicit_types: r.int(7) != 0,
        type_filters: serde_json::from_str(&r.text(8)).unwrap_or_default(),
        since: r.opt_text(9),
        transaction_time: r.int(10),
        client_id: r.text(11),
        subject: r.text(12),
        scopes: r.text(13),
        patient: r.opt_text(14),
        psychotherapy: r.int(15) != 0,
        admin: r.int(16) != 0,
        created_at: r.int(17),
        completed_at: r.opt_int(18),
        expires_at: r.opt_int(19),
        attempts: r.int(20),
        type_index: r.int(21),
        after_pk: r.int(22),
        exported: r.int(23),
        error: r.opt_text(24),
    }
}

impl Job {
    /// The requesting token's access context, as stored at kick-off.
    pub fn access(&self) -> Result<Access> {
        let scopes = ScopeSet::parse(&self.scopes).map_err(|e| {
            Error::internal(anyhow::anyhow!(
                "stored scopes of export {} are invalid: {e:?}",
                self.id
            ))
        })?;
        Ok(Access {
            client_id: self.client_id.clone(),
            subject: self.subject.clone(),
            scopes,
            patient: self.patient.clone(),
            encounter: None,
            fhir_user: None,
            psychotherapy: self.psychotherapy,
            admin: self.admin,
            jti: None,
        })
    }

    /// The file number of the error (OperationOutcome) file: after every type's file.
    pub fn error_file_no(&self) -> i64 {
        self.types.len() as i64
    }
}

/// A job to create at kick-off.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub level: Level,
    pub group_id: Option<String>,
    pub members: Option<Vec<String>>,
    pub request_url: String,
    pub types: Vec<String>,
    pub explicit_types: bool,
    pub type_filters: BTreeMap<String, String>,
    pub since: Option<String>,
    pub access: &'a Access,
}

/// One stored file of a job.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub file_no: i64,
    pub res_type: String,
    pub count: i64,
}

/// The job store.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub db: Db,
}

impl Jobs {
    pub fn new(db: Db) -> Jobs {
        Jobs { db }
    }

    /// Stores a queued job and returns its id.
    pub async fn create(&self, job: NewJob<'_>) -> Result<(String, i64)> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_micros();
        let a = job.access;
        let mut sql = Sql::new(
            "INSERT INTO bulk_jobs (id, status, level, group_id, members, request_url, types, explicit_types, \
             type_filters, since, transaction_time, client_id, subject, scopes, patient, psychotherapy, admin, \
             created_at) VALUES (",
        );
        sql.bind(id.as_str())
            .push(", 'queued', ")
            .bind(job.level.as_str())
            .push(", ")
            .bind(job.group_id)
            .push(", ")
            .bind(job.members.map(|m| serde_json::to_string(&m)).transpose()?)
            .push(", ")
            .bind(job.request_url)
            .push(", ")
            .bind(serde_json::to_string(&job.types)?)
            .push(", ")
            .bind(i64::from(job.explicit_types))
            .push(", ")
            .bind(serde_json::to_string(&job.type_filters)?)
            .push(", ")
            .bind(job.since)
            .push(", ")
            .bind(now)
            .push(", ")
            .bind(a.client_id.as_str())
            .push(", ")
            .bind(a.subject.as_str())
            .push(", ")
            .bind(a.scopes.to_string())
            .push(", ")
            .bind(a.patient.clone())
            .push(", ")
            .bind(i64::from(a.psychotherapy))
            .push(", ")
            .bind(i64::from(a.admin))
            .push(", ")
            .bind(now)
            .push(")");
        let mut tx = self.db.begin_write().await?;
        tx.execute(&sql).await?;
        tx.commit().await?;
        Ok((id, now))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>> {
        let mut sql = Sql::new(&format!("SELECT {JOB_COLS} FROM bulk_jobs WHERE id = "));
        sql.bind(id);
        Ok(self
            .db
            .fetch(&sql, JOB_KINDS)
            .await?
            .first()
            .map(job_from_row))
    }

    /// Claims the oldest queued job, or a running one whose lease has expired (its worker died), for `owner`.
    /// On PostgreSQL `FOR UPDATE SKIP LOCKED` keeps replicas from claiming the same job; SQLite writers are
    /// serialised anyway.
    pub async fn claim(&self, owner: &str, lease_secs: u64) -> Result<Option<Job>> {
        let now = now_micros();
        let mut sql = Sql::new(
            "UPDATE bulk_jobs SET status = 'running', attempts = attempts + 1, lease_owner = ",
        );
        sql.bind(owner)
            .push(", lease_until = ")
            .bind(now + lease_micros(lease_secs))
            .push(
                " WHERE id = (SELECT id FROM bulk_jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ",
            )
            .bind(now)
            .push(") ORDER BY created_at LIMIT 1");
        if self.db.backend() == Backend::Postgres {
            sql.push(" FOR UPDATE SKIP LOCKED");
        }
        sql.push(&format!(") RETURNING {JOB_COLS}"));
        let mut tx = self.db.begin_write().await?;
        let rows = tx.fetch(&sql, JOB_KINDS).await?;
        tx.commit().await?;
        Ok(rows.first().map(job_from_row))
    }

    /// Puts the jobs left running by a previous run of this (single-process, SQLite) server back in the queue.
    pub async fn requeue_abandoned(&self) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let n = tx
            .execute(&Sql::new(
                "UPDATE bulk_jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL WHERE status = 'running'",
            ))
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Appends one NDJSON chunk to a file and moves the resume point, atomically, if `owner` still holds the job
    /// and it is still running. Returns false when it does not (cancelled, or taken over after a lost lease).
    #[allow(
        clippy::too_many_arguments,
        reason = "one atomic step of the export: chunk, counts and resume point"
    )]
    pub async fn write_progress(
        &self,
        job_id: &str,
        owner: &str,
        lease_secs: u64,
        type_index: i64,
        after_pk: i64,
        chunk: Option<(&str, &str, i64)>,
    ) -> Result<bool> {
        let mut tx = self.db.begin_write().await?;
        // The job row first: on PostgreSQL this locks it, so a concurrent cancel either finishes first (and this
        // update matches nothing) or waits for this step.
        let lines = chunk.map(|(_, _, n)| n).unwrap_or(0);
        let mut sql = Sql::new("UPDATE bulk_jobs SET type_index = ");
        sql.bind(type_index)
            .push(", after_pk = ")
            .bind(after_pk)
            .push(", exported = exported + ")
            .bind(lines)
            .push(", lease_until = ")
            .bind(now_micros() + lease_micros(lease_secs))
            .push(" WHERE id = ")
            .bind(job_id)
            .push(" AND status = 'running' AND lease_owner = ")
            .bind(owner);
        if tx.execute(&sql).await? != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some((res_type, data, n)) = chunk {
            let file_no = type_index;
            let mut sql =
                Sql::new("INSERT INTO bulk_files (job_id, file_no, res_type, line_count) VALUES (");
            sql.bind(job_id)
                .push(", ")
                .bind(file_no)
                .push(", ")
                .bind(res_type)
                .push(", ")
                .bind(n)
                .push(") ON CONFLICT (job_id, file_no) DO UPDATE SET line_count = bulk_files.line_count + ")
                .bind(n);
            tx.execute(&sql).await?;
            let mut sql = Sql::new("INSERT INTO bulk_chunks (job_id, file_no, seq, data) VALUES (");
            sql.bind(job_id)
                .push(", ")
                .bind(file_no)
                .push(", (SELECT COALESCE(MAX(seq), 0) + 1 FROM bulk_chunks WHERE job_id = ")
                .bind(job_id)
                .push(" AND file_no = ")
                .bind(file_no)
                .push("), ")
                .bind(data)
                .push(")");
            tx.execute(&sql).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Writes the error file (if any issue) and marks the job completed, with its files' expiry.
    pub async fn complete(
        &self,
        job: &Job,
        owner: &str,
        errors: &[String],
        ttl_secs: u64,
    ) -> Result<bool> {
        let now = now_micros();
        let mut tx = self.db.begin_write().await?;
        let mut sql = Sql::new("UPDATE bulk_jobs SET status = 'completed', completed_at = ");
        sql.bind(now)
            .push(", expires_at = ")
            .bind(now.saturating_add(lease_micros(ttl_secs)))
            .push(", lease_owner = NULL, lease_until = NULL WHERE id = ")
            .bind(job.id.as_str())
            .push(" AND status = 'running' AND lease_owner = ")
            .bind(owner);
        if tx.execute(&sql).await? != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let file_no = job.error_file_no();
        let mut sql = Sql::new("DELETE FROM bulk_chunks WHERE job_id = ");
        sql.bind(job.id.as_str())
            .push(" AND file_no = ")
            .bind(file_no);
        tx.execute(&sql).await?;
        let mut sql = Sql::new("DELETE FROM bulk_files WHERE job_id = ");
        sql.bind(job.id.as_str())
            .push(" AND file_no = ")
            .bind(file_no);
        tx.execute(&sql).await?;
        if !errors.is_empty() {
            let mut data = String::new();
            for e in errors {
                data.push_str(e);
                data.push('\n');
            }
            let mut sql =
                Sql::new("INSERT INTO bulk_files (job_id, file_no, res_type, line_count) VALUES (");
            sql.bind(job.id.as_str())
                .push(", ")
                .bind(file_no)
                .push(", 'OperationOutcome', ")
                .bind(errors.len() as i64)
                .push(")");
            tx.execute(&sql).await?;
            let mut sql = Sql::new("INSERT INTO bulk_chunks (job_id, file_no, seq, data) VALUES (");
            sql.bind(job.id.as_str())
                .push(", ")
                .bind(file_no)
                .push(", 1, ")
                .bind(data)
                .push(")");
            tx.execute(&sql).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// After a failed run: back to the queue while attempts remain, else failed with `error`.
    pub async fn release_after_error(
        &self,
        job: &Job,
        owner: &str,
        max_attempts: i64,
        error: &str,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let mut sql = if job.attempts >= max_attempts {
            let mut s = Sql::new("UPDATE bulk_jobs SET status = 'failed', completed_at = ");
            s.bind(now_micros()).push(", error = ").bind(error);
            s
        } else {
            let mut s = Sql::new("UPDATE bulk_jobs SET status = 'queued', error = ");
            s.bind(error);
            s
        };
        sql.push(", lease_owner = NULL, lease_until = NULL WHERE id = ")
            .bind(job.id.as_str())
            .push(" AND status = 'running' AND lease_owner = ")
            .bind(owner);
        tx.execute(&sql).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a job failed at once (it can never succeed, e.g. its stored access context is unusable).
    pub async fn fail(&self, job_id: &str, error: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let mut sql = Sql::new("UPDATE bulk_jobs SET status = 'failed', completed_at = ");
        sql.bind(now_micros())
            .push(", error = ")
            .bind(error)
            .push(", lease_owner = NULL, lease_until = NULL WHERE id = ")
            .bind(job_id)
            .push(" AND status IN ('queued', 'running')");
        tx.execute(&sql).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Cancels a job (or discards a finished one): its files go at once, the row stays as `cancelled`.
    pub async fn cancel(&self, job_id: &str) -> Result<()> {
        self.drop_files(job_id, "cancelled").await
    }

    async fn drop_files(&self, job_id: &str, status: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let mut sql = Sql::new("UPDATE bulk_jobs SET status = ");
        sql.bind(status)
            .push(", lease_owner = NULL, lease_until = NULL WHERE id = ")
            .bind(job_id);
        tx.execute(&sql).await?;
        for table in ["bulk_chunks", "bulk_files"] {
            let mut sql = Sql::new(&format!("DELETE FROM {table} WHERE job_id = "));
            sql.bind(job_id);
            tx.execute(&sql).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the files of completed jobs whose expiry has passed; the jobs become `expired`.
    pub async fn expire(&self) -> Result<usize> {
        let mut sql =
            Sql::new("SELECT id FROM bulk_jobs WHERE status = 'completed' AND expires_at <= ");
        sql.bind(now_micros());
        let ids: Vec<String> = self
            .db
            .fetch(&sql, &[Col::Text])
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        for id in &ids {
            self.drop_files(id, "expired").await?;
        }
        // Finished jobs without files are kept a week (their status URL answers 410/404/500 meanwhile), then go.
        let mut sql = Sql::new(
            "DELETE FROM bulk_jobs WHERE status IN ('expired', 'cancelled', 'failed') AND created_at < ",
        );
        sql.bind(now_micros() - JOB_RETENTION_MICROS);
        let mut tx = self.db.begin_write().await?;
        tx.execute(&sql).await?;
        tx.commit().await?;
        Ok(ids.len())
    }

    /// The non-empty files of a job, in file order.
    pub async fn files(&self, job_id: &str) -> Result<Vec<FileInfo>> {
        let mut sql = Sql::new(
            "SELECT file_no, res_type, line_count FROM bulk_files WHERE line_count > 0 AND job_id = ",
        );
        sql.bind(job_id).push(" ORDER BY file_no");
        Ok(self
            .db
            .fetch(&sql, &[Col::Int, Col::Text, Col::Int])
            .await?
            .iter()
            .map(|r| FileInfo {
                file_no: r.int(0),
                res_type: r.text(1),
                count: r.int(2),
            })
            .collect())
    }

    /// The chunk after `after_seq` of a file, with its sequence number.
    pub async fn next_chunk(
        &self,
        job_id: &str,
        file_no: i64,
        after_seq: i64,
    ) -> Result<Option<(i64, String)>> {
        let mut sql = Sql::new("SELECT seq, data FROM bulk_chunks WHERE job_id = ");
        sql.bind(job_id)
            .push(" AND file_no = ")
            .bind(file_no)
            .push(" AND seq > ")
            .bind(after_seq)
            .push(" ORDER BY seq LIMIT 1");
        let mut rows = self.db.fetch(&sql, &[Col::Int, Col::Text]).await?;
        Ok(rows.pop().map(|mut r| {
            let seq = r.int(0);
            (seq, r.take_opt_text(1).unwrap_or_default())
        }))
    }
}

/// How long the row of an expired, cancelled or failed job is kept: a week.
const JOB_RETENTION_MICROS: i64 = 7 * 86_400 * 1_000_000;

fn lease_micros(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 2_000_000)
        .saturating_mul(1_000_000)
}
