//! The outbox tables: enqueueing inside write transactions, claims with a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL, so several gateway processes share the work), per-patient ordering, and the bookkeeping behind
//! `/admin/sync` and `kap-gateway sync`.
//!
//! Ordering: rows are delivered per *lane* (one patient, or one resource without a patient) in sequence order.
//! Only the oldest pending row of a lane can be claimed, so a row that keeps failing holds back the later rows of
//! its patient (never other patients) until it is delivered or dead-lettered. Dead letters and withheld
//! psychotherapy notes do not block their lane.

use serde::Serialize;
use serde_json::Value;

use super::{Described, SyncOp};
use crate::error::Result;
use crate::fhir::datetime::{format_instant, now_micros};
use crate::store::db::{Backend, Col, Db, Row, Sql, Tx};

/// Row states.
pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const DEAD: &str = "dead";
pub const WITHHELD: &str = "withheld";

/// Adds one row for `ehr` (called inside the resource write's transaction).
pub async fn insert(tx: &mut Tx, ehr: &str, d: &Described, version: i64, op: SyncOp) -> Result<()> {
    let now = now_micros();
    let mut sql = Sql::new(
        "INSERT INTO sync_outbox (ehr, lane, res_type, res_id, version, op, kind, id_system, id_value, \
         psychotherapy, state, attempts, next_attempt_at, enqueued_at) VALUES (",
    );
    sql.bind(ehr)
        .push(", ")
        .bind(d.lane.as_str())
        .push(", ")
        .bind(d.res_type.as_str())
        .push(", ")
        .bind(d.id.as_str())
        .push(", ")
        .bind(version)
        .push(", ")
        .bind(op.as_str())
        .push(", ")
        .bind(d.kind.as_str())
        .push(", ")
        .bind(d.id_system.as_str())
        .push(", ")
        .bind(d.id_value.as_str())
        .push(", ")
        .bind(i64::from(d.psychotherapy))
        .push(", 'pending', 0, ")
        .bind(now)
        .push(", ")
        .bind(now)
        .push(")");
    tx.execute(&sql).await?;
    Ok(())
}

/// A row claimed by a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub seq: i64,
    pub ehr: String,
    pub lane: String,
    pub res_type: String,
    pub res_id: String,
    pub version: i64,
    pub op: SyncOp,
    pub kind: String,
    pub id_system: String,
    pub id_value: String,
    pub psychotherapy: bool,
    /// Delivery attempts including this one.
    pub attempts: i64,
}

const CLAIM_COLS: &str = "seq, ehr, lane, res_type, res_id, version, op, kind, id_system, id_value, \
                          psychotherapy, attempts";
const CLAIM_KINDS: &[Col] = &[
    Col::Int,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Int,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Int,
    Col::Int,
];

fn claimed_from(r: &Row) -> Claimed {
    Claimed {
        seq: r.int(0),
        ehr: r.text(1),
        lane: r.text(2),
        res_type: r.text(3),
        res_id: r.text(4),
        version: r.int(5),
        op: SyncOp::parse(&r.text(6)),
        kind: r.text(7),
        id_system: r.text(8),
        id_value: r.text(9),
        psychotherapy: r.int(10) != 0,
        attempts: r.int(11) + 1,
    }
}

/// Claims up to `limit` due rows of `ehr`, each the oldest pending row of its lane, for `lease_secs`.
pub async fn claim(
    db: &Db,
    ehr: &str,
    owner: &str,
    lease_secs: u64,
    limit: u32,
) -> Result<Vec<Claimed>> {
    let now = now_micros();
    let mut tx = db.begin_write().await?;
    // The head of each lane (its oldest pending row) in one pass over the lane index, then those of them that
    // are due and not leased.
    let mut sql = Sql::new(&format!(
        "SELECT {CLAIM_COLS} FROM sync_outbox o WHERE o.seq IN \
         (SELECT MIN(h.seq) FROM sync_outbox h WHERE h.ehr = "
    ));
    sql.bind(ehr)
        .push(" AND h.state = 'pending' GROUP BY h.lane) AND o.next_attempt_at <= ")
        .bind(now)
        .push(" AND (o.lease_until IS NULL OR o.lease_until < ")
        .bind(now)
        .push(&format!(") ORDER BY o.seq LIMIT {}", limit.max(1)));
    if tx.backend() == Backend::Postgres {
        sql.push(" FOR UPDATE SKIP LOCKED");
    }
    let rows = tx.fetch(&sql, CLAIM_KINDS).await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(Vec::new());
    }
    let claimed: Vec<Claimed> = rows.iter().map(claimed_from).collect();
    let seqs: Vec<i64> = claimed.iter().map(|c| c.seq).collect();
    let lease_until = now.saturating_add(i64::try_from(lease_secs).unwrap_or(60) * 1_000_000);
    let mut update = Sql::new("UPDATE sync_outbox SET lease_owner = ");
    update
        .bind(owner)
        .push(", lease_until = ")
        .bind(lease_until)
        .push(", attempts = attempts + 1 WHERE seq IN (")
        .bind_list(&seqs)
        .push(")");
    tx.execute(&update).await?;
    tx.commit().await?;
    Ok(claimed)
}

/// The stored JSON of the version a row delivers (for a deletion: the version before it, which carries the
/// business identifier).
pub async fn content(db: &Db, c: &Claimed) -> Result<Option<String>> {
    let mut sql = Sql::new("SELECT content FROM resource_history WHERE res_type = ");
    sql.bind(c.res_type.as_str())
        .push(" AND id = ")
        .bind(c.res_id.as_str())
        .push(" AND version = ")
        .bind(c.version);
    let rows = db.fetch(&sql, &[Col::OptText]).await?;
    Ok(rows.first().and_then(|r| r.opt_text(0)))
}

/// Ends the claims of delivered rows (inside the step's recording transaction) and remembers the ids the EHR
/// gave the resources. Returns how many rows were still this worker's to finish.
pub async fn delivered(tx: &mut Tx, owner: &str, rows: &[(&Claimed, Option<&str>)]) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let seqs: Vec<i64> = rows.iter().map(|(c, _)| c.seq).collect();
    let mut sql = Sql::new(
        "UPDATE sync_outbox SET state = 'delivered', lease_owner = NULL, lease_until = NULL, \
         last_status = NULL, finished_at = ",
    );
    sql.bind(now_micros())
        .push(" WHERE seq IN (")
        .bind_list(&seqs)
        .push(") AND lease_owner = ")
        .bind(owner)
        .push(" AND state = 'pending'");
    let changed = tx.execute(&sql).await?;
    // One resource per lane and step, so the keys below are distinct.
    let ids: Vec<(&Claimed, &str)> = rows
        .iter()
        .filter(|(c, _)| c.op == SyncOp::Upsert)
        .filter_map(|(c, r)| r.map(|r| (*c, r)))
        .collect();
    if !ids.is_empty() {
        let mut ins =
            Sql::new("INSERT INTO sync_remote_ids (ehr, res_type, local_id, remote_id) VALUES ");
        for (i, (c, remote)) in ids.iter().enumerate() {
            if i > 0 {
                ins.push(", ");
            }
            ins.push("(")
                .bind(c.ehr.as_str())
                .push(", ")
                .bind(c.res_type.as_str())
                .push(", ")
                .bind(c.res_id.as_str())
                .push(", ")
                .bind(*remote)
                .push(")");
        }
        ins.push(
            " ON CONFLICT (ehr, res_type, local_id) DO UPDATE SET remote_id = excluded.remote_id",
        );
        tx.execute(&ins).await?;
    }
    for (c, _) in rows.iter().filter(|(c, _)| c.op == SyncOp::Delete) {
        let mut del = Sql::new("DELETE FROM sync_remote_ids WHERE ehr = ");
        del.bind(c.ehr.as_str())
            .push(" AND res_type = ")
            .bind(c.res_type.as_str())
            .push(" AND local_id = ")
            .bind(c.res_id.as_str());
        tx.execute(&del).await?;
    }
    Ok(changed)
}

/// Ends a row's claim with a transient failure: due again at `next_at` (microseconds).
pub async fn retry_later(
    tx: &mut Tx,
    c: &Claimed,
    owner: &str,
    next_at: i64,
    status: Option<u16>,
    error: &str,
) -> Result<()> {
    let mut sql = Sql::new(
        "UPDATE sync_outbox SET lease_owner = NULL, lease_until = NULL, next_attempt_at = ",
    );
    sql.bind(next_at).push(", last_status = ");
    bind_opt_int(&mut sql, status.map(i64::from));
    sql.push(", last_error = ")
        .bind(error)
        .push(" WHERE seq = ")
        .bind(c.seq)
        .push(" AND lease_owner = ")
        .bind(owner)
        .push(" AND state = 'pending'");
    tx.execute(&sql).await?;
    Ok(())
}

/// Ends a row's claim for good: `dead` (a permanent refusal, with the EHR's OperationOutcome) or `withheld`.
pub async fn finish_failed(
    tx: &mut Tx,
    c: &Claimed,
    owner: &str,
    state: &str,
    status: Option<u16>,
    error: &str,
    outcome: Option<&Value>,
) -> Result<()> {
    let now = now_micros();
    let mut sql = Sql::new("UPDATE sync_outbox SET state = ");
    sql.bind(state)
        .push(", lease_owner = NULL, lease_until = NULL, finished_at = ")
        .bind(now)
        .push(", last_status = ");
    bind_opt_int(&mut sql, status.map(i64::from));
    sql.push(", last_error = ")
        .bind(error)
        .push(", outcome = ")
        .bind(outcome.map(Value::to_string))
        .push(" WHERE seq = ")
        .bind(c.seq)
        .push(" AND lease_owner = ")
        .bind(owner)
        .push(" AND state = 'pending'");
    tx.execute(&sql).await?;
    Ok(())
}

/// A nullable integer: a typed NULL literal (a NULL bound as text would not fit a BIGINT column on PostgreSQL).
fn bind_opt_int(sql: &mut Sql, v: Option<i64>) {
    match v {
        Some(v) => sql.bind(v),
        None => sql.push("NULL"),
    };
}

/// Per-EHR bookkeeping of a step: `delivered` more rows (and a last success when any), and the last error.
pub async fn ehr_status(tx: &mut Tx, ehr: &str, delivered: u64, error: Option<&str>) -> Result<()> {
    let now = now_micros();
    let mut ensure = Sql::new("INSERT INTO sync_ehr_status (ehr, delivered) VALUES (");
    ensure.bind(ehr).push(", 0) ON CONFLICT (ehr) DO NOTHING");
    tx.execute(&ensure).await?;
    if delivered > 0 {
        let mut s = Sql::new("UPDATE sync_ehr_status SET delivered = delivered + ");
        s.bind(i64::try_from(delivered).unwrap_or(i64::MAX))
            .push(", last_success_at = ")
            .bind(now)
            .push(" WHERE ehr = ")
            .bind(ehr);
        tx.execute(&s).await?;
    }
    if let Some(error) = error {
        let mut s = Sql::new("UPDATE sync_ehr_status SET last_error_at = ");
        s.bind(now)
            .push(", last_error = ")
            .bind(error)
            .push(" WHERE ehr = ")
            .bind(ehr);
        tx.execute(&s).await?;
    }
    Ok(())
}

/// Records a failure that is not about one row (token endpoint down, pull failed).
pub async fn record_ehr_error(db: &Db, ehr: &str, error: &str) -> Result<()> {
    let mut tx = db.begin_write().await?;
    ehr_status(&mut tx, ehr, 0, Some(error)).await?;
    tx.commit().await?;
    Ok(())
}

/// Records a completed pull.
pub async fn record_pull(db: &Db, ehr: &str) -> Result<()> {
    let mut tx = db.begin_write().await?;
    let mut ensure = Sql::new("INSERT INTO sync_ehr_status (ehr, delivered) VALUES (");
    ensure.bind(ehr).push(", 0) ON CONFLICT (ehr) DO NOTHING");
    tx.execute(&ensure).await?;
    let mut sql = Sql::new("UPDATE sync_ehr_status SET last_pull_at = ");
    sql.bind(now_micros()).push(" WHERE ehr = ").bind(ehr);
    tx.execute(&sql).await?;
    tx.commit().await?;
    Ok(())
}

/// The id `ehr` gave a local resource, when a delivery has told us.
pub async fn remote_id(db: &Db, ehr: &str, res_type: &str, local: &str) -> Result<Option<String>> {
    let mut sql = Sql::new("SELECT remote_id FROM sync_remote_ids WHERE ehr = ");
    sql.bind(ehr)
        .push(" AND res_type = ")
        .bind(res_type)
        .push(" AND local_id = ")
        .bind(local);
    let rows = db.fetch(&sql, &[Col::Text]).await?;
    Ok(rows.first().map(|r| r.text(0)))
}

/// Whether the patient's authorization to disclose psychotherapy notes to `ehr` is recorded.
pub async fn disclosure_authorized(db: &Db, patient_id: &str, ehr: &str) -> Result<bool> {
    let mut sql =
        Sql::new("SELECT COUNT(*) FROM sync_disclosure_authorizations WHERE patient_id = ");
    sql.bind(patient_id)
        .push(" AND (ehr = ")
        .bind(ehr)
        .push(" OR ehr = '*')");
    let rows = db.fetch(&sql, &[Col::Int]).await?;
    Ok(rows.first().is_some_and(|r| r.int(0) > 0))
}

/// Records (or replaces) a patient's authorization to disclose psychotherapy notes to `ehr` (`*` = every EHR)
/// and puts the notes withheld so far back in the queue. Returns how many were re-queued.
pub async fn authorize_disclosure(
    db: &Db,
    patient_id: &str,
    ehr: &str,
    recorded_by: &str,
    reference: Option<&str>,
) -> Result<u64> {
    let now = now_micros();
    let mut tx = db.begin_write().await?;
    let mut del = Sql::new("DELETE FROM sync_disclosure_authorizations WHERE patient_id = ");
    del.bind(patient_id).push(" AND ehr = ").bind(ehr);
    tx.execute(&del).await?;
    let mut ins = Sql::new(
        "INSERT INTO sync_disclosure_authorizations (patient_id, ehr, recorded_at, recorded_by, reference) VALUES (",
    );
    ins.bind(patient_id)
        .push(", ")
        .bind(ehr)
        .push(", ")
        .bind(now)
        .push(", ")
        .bind(recorded_by)
        .push(", ")
        .bind(reference)
        .push(")");
    tx.execute(&ins).await?;
    let mut requeue = Sql::new("UPDATE sync_outbox SET state = 'pending', next_attempt_at = ");
    requeue
        .bind(now)
        .push(", finished_at = NULL, last_error = NULL WHERE state = 'withheld' AND lane = ")
        .bind(format!("Patient/{patient_id}"));
    if ehr != "*" {
        requeue.push(" AND ehr = ").bind(ehr);
    }
    let n = tx.execute(&requeue).await?;
    tx.commit().await?;
    Ok(n)
}

/// Puts dead letters back in the queue: one (`seq`), those of one EHR, or all. Returns how many.
pub async fn retry_dead(db: &Db, seq: Option<i64>, ehr: Option<&str>) -> Result<u64> {
    let mut tx = db.begin_write().await?;
    let mut sql =
        Sql::new("UPDATE sync_outbox SET state = 'pending', attempts = 0, next_attempt_at = ");
    sql.bind(now_micros())
        .push(", finished_at = NULL, outcome = NULL WHERE state = 'dead'");
    if let Some(seq) = seq {
        sql.push(" AND seq = ").bind(seq);
    }
    if let Some(ehr) = ehr {
        sql.push(" AND ehr = ").bind(ehr);
    }
    let n = tx.execute(&sql).await?;
    tx.commit().await?;
    Ok(n)
}

/// Sync status of one EHR.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EhrStatus {
    pub name: String,
    pub base_url: String,
    /// Rows not yet delivered (due or waiting for a retry).
    pub pending: i64,
    /// Rows waiting for a retry after a failure.
    pub retrying: i64,
    pub dead: i64,
    pub withheld: i64,
    pub delivered: i64,
    /// Age of the oldest pending row, in seconds.
    pub oldest_pending_age_secs: Option<f64>,
    pub last_success: Option<String>,
    pub last_error_at: Option<String>,
    pub last_error: Option<String>,
    pub last_pull: Option<String>,
}

/// A dead letter, with the EHR's answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetter {
    pub seq: i64,
    pub ehr: String,
    pub resource: String,
    pub version: i64,
    pub op: String,
    pub identifier: String,
    pub attempts: i64,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub failed_at: Option<String>,
    /// The OperationOutcome the EHR answered with, when it sent one.
    pub outcome: Option<Value>,
}

/// The whole picture: queue depth and age per EHR, last success/error, dead letters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SyncStatus {
    pub ehrs: Vec<EhrStatus>,
    pub dead_letters: Vec<DeadLetter>,
}

/// Reads the status of the configured EHRs (`(name, base_url)`), with up to `dead_limit` dead letters.
pub async fn status(db: &Db, ehrs: &[(String, String)], dead_limit: i64) -> Result<SyncStatus> {
    let now = now_micros();
    let mut out = Vec::with_capacity(ehrs.len());
    for (name, base_url) in ehrs {
        let mut counts = Sql::new(
            "SELECT state, COUNT(*), MIN(enqueued_at), \
             SUM(CASE WHEN attempts > 0 AND lease_owner IS NULL THEN 1 ELSE 0 END) \
             FROM sync_outbox WHERE ehr = ",
        );
        counts
            .bind(name.as_str())
            .push(" AND state <> 'delivered' GROUP BY state");
        let rows = db
            .fetch(&counts, &[Col::Text, Col::Int, Col::OptInt, Col::OptInt])
            .await?;
        let mut s = EhrStatus {
            name: name.clone(),
            base_url: base_url.clone(),
            pending: 0,
            retrying: 0,
            dead: 0,
            withheld: 0,
            delivered: 0,
            oldest_pending_age_secs: None,
            last_success: None,
            last_error_at: None,
            last_error: None,
            last_pull: None,
        };
        for r in &rows {
            match r.text(0).as_str() {
                PENDING => {
                    s.pending = r.int(1);
                    s.retrying = r.opt_int(3).unwrap_or(0);
                    s.oldest_pending_age_secs = r
                        .opt_int(2)
                        .map(|t| (now.saturating_sub(t)).max(0) as f64 / 1e6);
                }
                DEAD => s.dead = r.int(1),
                WITHHELD => s.withheld = r.int(1),
                _ => {}
            }
        }
        let mut st = Sql::new(
            "SELECT delivered, last_success_at, last_error_at, last_error, last_pull_at FROM sync_ehr_status WHERE ehr = ",
        );
        st.bind(name.as_str());
        let rows = db
            .fetch(
                &st,
                &[
                    Col::Int,
                    Col::OptInt,
                    Col::OptInt,
                    Col::OptText,
                    Col::OptInt,
                ],
            )
            .await?;
        if let Some(r) = rows.first() {
            s.delivered = r.int(0);
            s.last_success = r.opt_int(1).map(format_instant);
            s.last_error_at = r.opt_int(2).map(format_instant);
            s.last_error = r.opt_text(3);
            s.last_pull = r.opt_int(4).map(format_instant);
        }
        out.push(s);
    }
    let mut dead = Sql::new(
        "SELECT seq, ehr, res_type, res_id, version, op, id_system, id_value, attempts, last_status, last_error, \
         finished_at, outcome FROM sync_outbox WHERE state = 'dead' ORDER BY seq LIMIT ",
    );
    dead.bind(dead_limit);
    let rows = db
        .fetch(
            &dead,
            &[
                Col::Int,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Int,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Int,
                Col::OptInt,
                Col::OptText,
                Col::OptInt,
                Col::OptText,
            ],
        )
        .await?;
    let dead_letters = rows
        .iter()
        .map(|r| DeadLetter {
            seq: r.int(0),
            ehr: r.text(1),
            resource: format!("{}/{}", r.text(2), r.text(3)),
            version: r.int(4),
            op: r.text(5),
            identifier: format!("{}|{}", r.text(6), r.text(7)),
            attempts: r.int(8),
            status: r.opt_int(9),
            error: r.opt_text(10),
            failed_at: r.opt_int(11).map(format_instant),
            outcome: r.opt_text(12).and_then(|t| serde_json::from_str(&t).ok()),
        })
        .collect();
    Ok(SyncStatus {
        ehrs: out,
        dead_letters,
    })
}

/// Counts of rows per state for one EHR (tests and the benchmark).
pub async fn counts(db: &Db, ehr: &str) -> Result<std::collections::BTreeMap<String, i64>> {
    let mut sql = Sql::new("SELECT state, COUNT(*) FROM sync_outbox WHERE ehr = ");
    sql.bind(ehr).push(" GROUP BY state");
    let rows = db.fetch(&sql, &[Col::Text, Col::Int]).await?;
    Ok(rows.iter().map(|r| (r.text(0), r.int(1))).collect())
}

/// The sync status as Prometheus text exposition (https://prometheus.io/docs/instrumenting/exposition_formats/):
/// one family per figure, labelled by EHR. Timestamps are Unix seconds.
pub fn prometheus(status: &SyncStatus) -> String {
    use std::fmt::Write as _;
    let seconds = |instant: &Option<String>| {
        instant
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros() as f64 / 1e6)
    };
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, values: Vec<(&str, Option<f64>)>| {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for (ehr, v) in values {
            if let Some(v) = v {
                let _ = writeln!(out, "{name}{{ehr=\"{ehr}\"}} {v}");
            }
        }
    };
    let each = |f: &dyn Fn(&EhrStatus) -> Option<f64>| -> Vec<(&str, Option<f64>)> {
        status
            .ehrs
            .iter()
            .map(|e| (e.name.as_str(), f(e)))
            .collect()
    };
    family(
        "kapgw_sync_pending",
        "gauge",
        "Outbox rows not yet delivered",
        each(&|e| Some(e.pending as f64)),
    );
    family(
        "kapgw_sync_retrying",
        "gauge",
        "Pending rows waiting for a retry",
        each(&|e| Some(e.retrying as f64)),
    );
    family(
        "kapgw_sync_dead_letters",
        "gauge",
        "Rows the EHR refused for good",
        each(&|e| Some(e.dead as f64)),
    );
    family(
        "kapgw_sync_withheld",
        "gauge",
        "Psychotherapy notes held back for want of an authorization",
        each(&|e| Some(e.withheld as f64)),
    );
    family(
        "kapgw_sync_delivered_total",
        "counter",
        "Rows delivered",
        each(&|e| Some(e.delivered as f64)),
    );
    family(
        "kapgw_sync_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending row",
        each(&|e| Some(e.oldest_pending_age_secs.unwrap_or(0.0))),
    );
    family(
        "kapgw_sync_last_success_timestamp_seconds",
        "gauge",
        "Time of the last delivery",
        each(&|e| seconds(&e.last_success)),
    );
    family(
        "kapgw_sync_last_error_timestamp_seconds",
        "gauge",
        "Time of the last failure",
        each(&|e| seconds(&e.last_error_at)),
    );
    out
}

/// The outbox gauges of the shared `/metrics` endpoint (`kapgw_outbox_depth`, `kapgw_outbox_oldest_age_seconds`),
/// read from the outbox tables at each scrape.
pub struct MetricsSource {
    pub db: Db,
    /// The configured EHRs as `(name, base_url)`.
    pub ehrs: Vec<(String, String)>,
}

impl crate::metrics::OutboxSource for MetricsSource {
    fn stats(
        &self,
    ) -> futures_util::future::BoxFuture<'_, anyhow::Result<Vec<crate::metrics::OutboxStats>>> {
        Box::pin(async move {
            let status = status(&self.db, &self.ehrs, 0)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.outcome()))?;
            Ok(status
                .ehrs
                .into_iter()
                .map(|e| crate::metrics::OutboxStats {
                    ehr: e.name,
                    depth: e.pending,
                    oldest_age_secs: e.oldest_pending_age_secs.unwrap_or(0.0),
                })
                .collect())
        })
    }
}
