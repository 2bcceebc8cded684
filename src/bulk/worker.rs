//! The export worker: claims jobs, exports them page by page through the token's search rules, and the periodic
//! cleanup of expired files.

use std::collections::HashSet;
use std::time::Duration;

use crate::auth::access::Access;
use crate::auth::scopes::Op;
use crate::config::BulkConfig;
use crate::error::{Error, Result};
use crate::fhir::datetime::parse_range;
use crate::fhir::outcome::{Issue, Severity, operation_outcome};
use crate::fhir::registry;
use crate::fhir::search::{Cursor, Direction, SearchQuery, TotalMode};
use crate::service::{FhirService, parse_query_string};
use crate::store::StoredResource;
use crate::store::db::{Backend, Col, Sql};
use crate::workers::{Stage, Workers};

use super::jobs::{Job, Jobs, Level};

/// Starts the worker and the cleanup task on the runtime. Returns at once.
pub fn start(fhir: FhirService, config: BulkConfig, workers: &Workers) {
    let jobs = Jobs::new(fhir.store.db.clone());
    let cleanup_jobs = jobs.clone();
    let cleanup_every = Duration::from_secs(config.cleanup_secs.max(1));
    workers.spawn(
        "bulk-export-cleanup",
        Stage::Background,
        Some(cleanup_every * 3 + Duration::from_secs(60)),
        |w| async move {
            let mut tick = tokio::time::interval(cleanup_every);
            loop {
                tokio::select! {
                    _ = w.stopping() => return,
                    _ = tick.tick() => {}
                }
                match cleanup_jobs.expire().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(jobs = n, "deleted the files of expired exports"),
                    Err(e) => tracing::warn!(error = %e, "could not delete expired export files"),
                }
                w.beat();
            }
        },
    );
    if !config.worker {
        return;
    }
    workers.spawn("bulk-export", Stage::Background, None, |w| async move {
        let owner = uuid::Uuid::new_v4().to_string();
        // A single SQLite server is the only worker on its database: whatever it left running was interrupted.
        if jobs.db.backend() == Backend::Sqlite {
            match jobs.requeue_abandoned().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "resuming interrupted exports"),
                Err(e) => tracing::warn!(error = %e, "could not requeue interrupted exports"),
            }
        }
        let idle = Duration::from_millis(config.poll_ms.max(10));
        // On shutdown the job in hand runs on until the process exits; its lease then expires and the job
        // resumes from its last committed page on the next start (or on another replica).
        while !w.is_stopping() {
            match jobs.claim(&owner, config.lease_secs).await {
                Ok(Some(job)) => run_claimed(&fhir, &jobs, &owner, &config, job).await,
                Ok(None) => {
                    tokio::select! {
                        _ = w.stopping() => return,
                        _ = tokio::time::sleep(idle) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim an export job");
                    tokio::select! {
                        _ = w.stopping() => return,
                        _ = tokio::time::sleep(idle) => {}
                    }
                }
            }
        }
    });
}

async fn run_claimed(fhir: &FhirService, jobs: &Jobs, owner: &str, config: &BulkConfig, job: Job) {
    let id = job.id.clone();
    if job.attempts > config.max_attempts {
        let _ = jobs
            .release_after_error(
                &job,
                owner,
                config.max_attempts,
                "The export was interrupted too many times",
            )
            .await;
        return;
    }
    tracing::info!(job = %id, attempt = job.attempts, "export started");
    match export(fhir, jobs, owner, config, &job).await {
        Ok(true) => tracing::info!(job = %id, "export completed"),
        Ok(false) => tracing::info!(job = %id, "export stopped: cancelled or taken over"),
        Err(e) => {
            tracing::warn!(job = %id, error = %e, "export failed");
            let message = e
                .issues
                .first()
                .map(|i| i.diagnostics.clone())
                .unwrap_or_else(|| "The export failed".into());
            if let Err(e) = jobs
                .release_after_error(&job, owner, config.max_attempts, &message)
                .await
            {
                tracing::warn!(job = %id, error = %e, "could not record the failed export");
            }
        }
    }
}

/// A parsed `_typeFilter` for one type, plus `_since` as a `_lastUpdated` criterion when given.
pub fn type_query(
    fhir: &FhirService,
    res_type: &str,
    filter: Option<&str>,
    since: Option<&str>,
) -> Result<SearchQuery> {
    let mut params = filter.map(parse_query_string).unwrap_or_default();
    for (k, _) in &params {
        if k.starts_with('_')
            && !matches!(
                k.as_str(),
                "_id" | "_lastUpdated" | "_tag" | "_security" | "_profile" | "_source"
            )
        {
            return Err(Error::invalid_at(
                "not-supported",
                format!("_typeFilter for {res_type} may hold only search criteria, not '{k}'"),
                "_typeFilter",
            ));
        }
    }
    if let Some(s) = since {
        params.push(("_lastUpdated".into(), format!("ge{s}")));
    }
    let mut q = fhir.parse_search(res_type, &params, true)?;
    q.total = TotalMode::None;
    q.sort.clear();
    q.include.clear();
    q.revinclude.clear();
    Ok(q)
}

/// Runs (or resumes) a job to completion. Ok(false) when it stopped because it was cancelled or lost its lease.
async fn export(
    fhir: &FhirService,
    jobs: &Jobs,
    owner: &str,
    config: &BulkConfig,
    job: &Job,
) -> Result<bool> {
    let access = match job.access() {
        Ok(a) => a,
        Err(e) => {
            jobs.fail(&job.id, "The export's access context cannot be restored")
                .await?;
            return Err(e);
        }
    };
    let members: Option<HashSet<&str>> =
        (job.level == Level::Group).then(|| job.members.iter().map(String::as_str).collect());
    let since = job
        .since
        .as_deref()
        .and_then(parse_range)
        .map_or(i64::MIN, |r| r.lo);
    let mut errors: Vec<String> = Vec::new();
    let page_size = config.page_size.clamp(1, 10_000);
    let start = usize::try_from(job.type_index).unwrap_or(0);
    for (ti, res_type) in job.types.iter().enumerate() {
        if access.permit(res_type, Op::Search).is_err() {
            if job.explicit_types {
                errors.push(outcome_line(
                    Severity::Warning,
                    "forbidden",
                    format!(
                        "{res_type} was not exported: the access token does not allow reading it"
                    ),
                ));
            }
            continue;
        }
        if ti < start {
            continue;
        }
        let mut after_pk = if ti == start { job.after_pk } else { 0 };
        let filter = job.type_filters.get(res_type).map(String::as_str);
        // `_since` and the transaction time are checked here rather than in SQL: a condition on `last_updated` would
        // lead both planners to the (type, last_updated) index and a sort of every match for each page.
        let mut q = type_query(fhir, res_type, filter, None)?;
        q.count = page_size;
        let ti = ti as i64;
        let fetch = |after: i64| {
            let mut q = q.clone();
            q.cursor = Some(Cursor {
                direction: Direction::Next,
                keys: Vec::new(),
                pk: after,
            });
            let access = &access;
            async move { fhir.search(access, &q).await }
        };
        // The next page is read while the current one is written.
        let mut page = fetch(after_pk).await?;
        while let Some(last) = page.matches.last() {
            after_pk = last.pk;
            let more = page.next.is_some();
            let in_window = |r: &StoredResource| {
                r.last_updated >= since && r.last_updated <= job.transaction_time
            };
            let matches: Vec<StoredResource> = page.matches.into_iter().filter(in_window).collect();
            let kept = match job.level {
                Level::System => matches,
                Level::Patient | Level::Group => {
                    in_compartments(fhir, res_type, matches, members.as_ref()).await?
                }
            };
            let mut data = String::with_capacity(kept.iter().map(content_len).sum::<usize>());
            let mut lines = 0i64;
            for r in &kept {
                if let Some(c) = &r.content {
                    data.push_str(c);
                    data.push('\n');
                    lines += 1;
                }
            }
            drop(kept);
            let chunk = (lines > 0).then_some((res_type.as_str(), data.as_str(), lines));
            let write = jobs.write_progress(&job.id, owner, config.lease_secs, ti, after_pk, chunk);
            let (written, next) = if more {
                let (w, n) = tokio::join!(write, fetch(after_pk));
                (w, Some(n))
            } else {
                (write.await, None)
            };
            if !written? {
                return Ok(false);
            }
            match next {
                Some(n) => page = n?,
                None => break,
            }
        }
        if !jobs
            .write_progress(&job.id, owner, config.lease_secs, ti + 1, 0, None)
            .await?
        {
            return Ok(false);
        }
    }
    jobs.complete(job, owner, &errors, config.file_ttl_secs)
        .await
}

fn content_len(r: &StoredResource) -> usize {
    r.content.as_ref().map_or(0, |c| c.len() + 1)
}

/// One line of the error file.
pub fn outcome_line(severity: Severity, code: &'static str, message: String) -> String {
    operation_outcome(&[Issue::error(code, message).with_severity(severity)]).to_string()
}

/// Keeps the resources that belong to some patient's compartment (any patient, or one of `members`).
async fn in_compartments(
    fhir: &FhirService,
    res_type: &str,
    page: Vec<StoredResource>,
    members: Option<&HashSet<&str>>,
) -> Result<Vec<StoredResource>> {
    if res_type == "Patient" {
        return Ok(match members {
            None => page,
            Some(m) => page
                .into_iter()
                .filter(|r| m.contains(r.id.as_str()))
                .collect(),
        });
    }
    let params = registry::patient_compartment_params(res_type);
    if params.is_empty() || page.is_empty() {
        return Ok(Vec::new());
    }
    let pks: Vec<i64> = page.iter().map(|r| r.pk).collect();
    let mut sql = Sql::new(
        "SELECT px.res_pk, px.target_id FROM idx_reference px WHERE px.target_type = 'Patient' AND px.res_type = ",
    );
    sql.bind(res_type)
        .push(" AND px.param IN (")
        .bind_list(params)
        .push(") AND px.res_pk IN (")
        .bind_list(&pks)
        .push(")");
    let rows = fhir.store.db.fetch(&sql, &[Col::Int, Col::OptText]).await?;
    let keep: HashSet<i64> = rows
        .iter()
        .filter(|r| match (members, r.opt_text(1)) {
            (None, _) => true,
            (Some(m), Some(id)) => m.contains(id.as_str()),
            (Some(_), None) => false,
        })
        .map(|r| r.int(0))
        .collect();
    Ok(page.into_iter().filter(|r| keep.contains(&r.pk)).collect())
}

/// True if `access` may export at least one of `types`.
pub fn may_export_any(access: &Access, types: &[String]) -> bool {
    types.iter().any(|t| access.permit(t, Op::Search).is_ok())
}
