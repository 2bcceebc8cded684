//! The delivery worker: a step function (`run_once`: claim due rows, deliver them, record the outcome) and a loop
//! around it that stops cleanly on shutdown, finishing the deliveries in flight.
//!
//! Delivery of an upsert is a conditional update on the business identifier
//! (`PUT [base]/[type]?identifier=urn:kap-gateway:<kind>|<value>`, https://hl7.org/fhir/R4/http.html#cond-update),
//! so a redelivery after a crash or a lost answer updates the same EHR resource instead of creating a second one.
//! A Patient is sent as a conditional create (`If-None-Exist` on the EHR's patient identifier when it has one): the
//! EHR stays the owner of demographics it already holds. A deletion is a conditional delete on the identifier;
//! Patient deletions are not sent. Outcomes: 2xx → delivered; network errors, 408, 429, 5xx (and a 401 that a
//! fresh token did not cure) → retried with exponential backoff and jitter, or after `Retry-After`; any other
//! 4xx → dead letter with the EHR's OperationOutcome.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderName;
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::client::{CallError, EhrClient, EhrResponse, parse_retry_after, traceparent};
use super::config::{EhrConfig, SyncConfig};
use super::outbox::{self, Claimed};
use super::{SyncOp, kap_identity};
use crate::error::Result;
use crate::fhir::datetime::now_micros;
use crate::store::Store;
use crate::store::db::Db;

/// One EHR as the worker sees it.
#[derive(Debug, Clone)]
pub struct Target {
    pub config: EhrConfig,
    pub client: EhrClient,
}

/// The worker of one gateway process. Several processes (on PostgreSQL) share the outbox safely.
#[derive(Debug, Clone)]
pub struct Worker {
    db: Db,
    targets: Vec<Target>,
    settings: SyncConfig,
    /// Identifies this worker's claims.
    owner: String,
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    pub claimed: usize,
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
    pub withheld: usize,
}

enum Verdict {
    Delivered(Option<String>),
    Retry {
        delay: Duration,
        status: Option<u16>,
        error: String,
    },
    Dead {
        status: Option<u16>,
        error: String,
        outcome: Option<Value>,
    },
    Withheld(String),
}

impl Worker {
    /// Builds the worker for the configured EHRs (fails on a bad key or token setting).
    pub fn new(
        db: Db,
        ehrs: &[EhrConfig],
        settings: SyncConfig,
    ) -> std::result::Result<Worker, String> {
        super::config::check_all(ehrs)?;
        let targets = ehrs
            .iter()
            .map(|c| {
                Ok(Target {
                    config: c.clone(),
                    client: EhrClient::new(c)?,
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Worker {
            db,
            targets,
            settings,
            owner: format!("worker-{}", uuid::Uuid::new_v4().simple()),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// One step: for each EHR, claim up to `batch` due rows (one per patient) and deliver them concurrently.
    pub async fn run_once(&self) -> Result<StepReport> {
        let mut report = StepReport::default();
        for target in &self.targets {
            let claimed = outbox::claim(
                &self.db,
                &target.config.name,
                &self.owner,
                self.settings.lease_secs,
                self.settings.batch,
            )
            .await?;
            report.claimed += claimed.len();
            let results = futures_util::future::join_all(
                claimed.iter().map(|c| self.deliver_traced(target, c)),
            )
            .await;
            // A row whose delivery could not even be attempted (database error) keeps its lease and is taken
            // up again when the lease expires.
            let mut failure = None;
            let mut done = Vec::with_capacity(claimed.len());
            for (c, r) in claimed.iter().zip(results) {
                match r {
                    Ok(v) => {
                        match &v {
                            Verdict::Delivered(_) => report.delivered += 1,
                            Verdict::Retry { .. } => report.retried += 1,
                            Verdict::Dead { .. } => report.dead += 1,
                            Verdict::Withheld(_) => report.withheld += 1,
                        }
                        done.push((c, v));
                    }
                    Err(e) => failure = Some(e),
                }
            }
            self.record(&target.config.name, &done).await?;
            if let Some(e) = failure {
                return Err(e);
            }
        }
        Ok(report)
    }

    /// Runs steps until `shutdown` turns true; the step in progress finishes first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let idle = Duration::from_millis(self.settings.poll_interval_ms.max(10));
        let mut errors = 0u32;
        tracing::info!(owner = %self.owner, ehrs = self.targets.len(), "sync worker started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let pause = match self.run_once().await {
                Ok(r) if r.claimed > 0 => {
                    errors = 0;
                    continue;
                }
                Ok(_) => {
                    errors = 0;
                    idle
                }
                Err(e) => {
                    errors = errors.saturating_add(1);
                    tracing::warn!(error = %e, "sync step failed");
                    idle.saturating_mul(errors.min(30))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(owner = %self.owner, "sync worker stopped");
    }

    /// Delivers one row inside its `sync.deliver` span.
    async fn deliver_traced(&self, target: &Target, c: &Claimed) -> Result<Verdict> {
        let span = tracing::info_span!(
            "sync.deliver",
            ehr = %c.ehr,
            seq = c.seq,
            resource = %format!("{}/{}", c.res_type, c.res_id),
            version = c.version,
            op = c.op.as_str(),
            attempt = c.attempts,
            trace_id = tracing::field::Empty,
            status = tracing::field::Empty,
        );
        async {
            let verdict = self.deliver(target, c).await?;
            match &verdict {
                Verdict::Delivered(_) => tracing::info!("delivered"),
                Verdict::Retry { delay, error, .. } => tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    error = %error,
                    "delivery failed; will retry"
                ),
                Verdict::Dead { error, .. } => {
                    tracing::warn!(error = %error, "delivery refused by the EHR; dead letter")
                }
                Verdict::Withheld(why) => tracing::info!(reason = %why, "withheld"),
            }
            Ok(verdict)
        }
        .instrument(span)
        .await
    }

    /// Records the outcomes of one step (one EHR's rows) in one write transaction: one commit per step.
    async fn record(&self, ehr: &str, done: &[(&Claimed, Verdict)]) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await?;
        let delivered: Vec<(&Claimed, Option<&str>)> = done
            .iter()
            .filter_map(|(c, v)| match v {
                Verdict::Delivered(remote) => Some((*c, remote.as_deref())),
                _ => None,
            })
            .collect();
        let n = outbox::delivered(&mut tx, &self.owner, &delivered).await?;
        let mut last_error = None;
        for (c, verdict) in done {
            match verdict {
                Verdict::Delivered(_) => {}
                Verdict::Retry {
                    delay,
                    status,
                    error,
                } => {
                    let next = now_micros()
                        .saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX / 2));
                    outbox::retry_later(&mut tx, c, &self.owner, next, *status, error).await?;
                    last_error = Some(error.as_str());
                }
                Verdict::Dead {
                    status,
                    error,
                    outcome,
                } => {
                    outbox::finish_failed(
                        &mut tx,
                        c,
                        &self.owner,
                        outbox::DEAD,
                        *status,
                        error,
                        outcome.as_ref(),
                    )
                    .await?;
                    last_error = Some(error.as_str());
                }
                Verdict::Withheld(why) => {
                    outbox::finish_failed(
                        &mut tx,
                        c,
                        &self.owner,
                        outbox::WITHHELD,
                        None,
                        why,
                        None,
                    )
                    .await?;
                }
            }
        }
        outbox::ehr_status(&mut tx, ehr, n, last_error).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn deliver(&self, target: &Target, c: &Claimed) -> Result<Verdict> {
        if c.psychotherapy {
            let patient = c.lane.strip_prefix("Patient/").unwrap_or("");
            if patient.is_empty()
                || !outbox::disclosure_authorized(&self.db, patient, &c.ehr).await?
            {
                return Ok(Verdict::Withheld(
                    "psychotherapy note: no authorization to disclose it to this EHR is recorded for the patient"
                        .into(),
                ));
            }
        }
        if c.op == SyncOp::Delete && c.res_type == "Patient" {
            // The EHR owns its patient records: a local deletion is not a reason to delete one there.
            return Ok(Verdict::Delivered(None));
        }
        let client = &target.client;
        let traceparent = traceparent(&tracing::Span::current());
        let mut headers = vec![(HeaderName::from_static("traceparent"), traceparent)];
        let criteria = |system: &str, value: &str| {
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("identifier", &format!("{system}|{value}"))
                .finish()
        };
        let result = match c.op {
            SyncOp::Delete => {
                let url = client.url(&format!(
                    "{}?{}",
                    c.res_type,
                    criteria(&c.id_system, &c.id_value)
                ));
                client.send(Method::DELETE, &url, None, &headers).await
            }
            SyncOp::Upsert => {
                let Some(text) = outbox::content(&self.db, c).await? else {
                    return Ok(Verdict::Dead {
                        status: None,
                        error: format!("version {} is no longer stored", c.version),
                        outcome: None,
                    });
                };
                let Ok(mut resource) = serde_json::from_str::<Value>(&text) else {
                    return Ok(Verdict::Dead {
                        status: None,
                        error: "the stored resource is not valid JSON".into(),
                        outcome: None,
                    });
                };
                self.prepare_body(target, &mut resource).await?;
                let body = serde_json::to_vec(&resource)?;
                if c.res_type == "Patient" {
                    let (system, value) = patient_match(&target.config, &resource)
                        .unwrap_or_else(|| (c.id_system.clone(), c.id_value.clone()));
                    headers.push((
                        HeaderName::from_static("if-none-exist"),
                        criteria(&system, &value),
                    ));
                    client
                        .send(Method::POST, &client.url("Patient"), Some(body), &headers)
                        .await
                } else {
                    let url = client.url(&format!(
                        "{}?{}",
                        c.res_type,
                        criteria(&c.id_system, &c.id_value)
                    ));
                    client.send(Method::PUT, &url, Some(body), &headers).await
                }
            }
        };
        Ok(self.judge(c, result))
    }

    fn judge(&self, c: &Claimed, result: std::result::Result<EhrResponse, CallError>) -> Verdict {
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                return Verdict::Retry {
                    delay: self.backoff(c.attempts),
                    status: None,
                    error: e.to_string(),
                };
            }
        };
        tracing::Span::current().record("status", response.status);
        let status = response.status;
        if response.is_success() || (c.op == SyncOp::Delete && matches!(status, 404 | 410)) {
            return Verdict::Delivered(remote_id_of(&response, &c.res_type));
        }
        let outcome = response
            .json()
            .filter(|v| v.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome"));
        let summary = outcome
            .as_ref()
            .and_then(|o| o.pointer("/issue/0/diagnostics").and_then(Value::as_str))
            .map(str::to_owned)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned()
            });
        let error = format!("HTTP {status}: {summary}");
        if matches!(status, 401 | 408 | 429) || status >= 500 {
            let delay = match response
                .header("retry-after")
                .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
            {
                Some(d) => d.min(Duration::from_secs(3600)),
                None => self.backoff(c.attempts),
            };
            Verdict::Retry {
                delay,
                status: Some(status),
                error,
            }
        } else {
            Verdict::Dead {
                status: Some(status),
                error,
                outcome,
            }
        }
    }

    /// Exponential backoff with jitter: base·2^(attempt−1), capped, then scaled by a random factor in [0.5, 1).
    pub fn backoff(&self, attempt: i64) -> Duration {
        backoff(
            Duration::from_millis(self.settings.backoff_base_ms),
            Duration::from_secs(self.settings.backoff_max_secs),
            attempt,
        )
    }

    /// Makes a stored resource fit to send: server-owned fields dropped, local references rewritten to the EHR's
    /// ids (when a delivery told us) or to conditional references on a business identifier.
    async fn prepare_body(&self, target: &Target, resource: &mut Value) -> Result<()> {
        if let Some(obj) = resource.as_object_mut() {
            obj.remove("id");
            let drop_meta = obj
                .get_mut("meta")
                .and_then(Value::as_object_mut)
                .map(|m| {
                    m.remove("versionId");
                    m.remove("lastUpdated");
                    m.is_empty()
                })
                .unwrap_or(false);
            if drop_meta {
                obj.remove("meta");
            }
        }
        let mut refs = Vec::new();
        collect_references(resource, &mut refs);
        let mut resolved: HashMap<String, Rewritten> = HashMap::new();
        for r in refs {
            if resolved.contains_key(&r) {
                continue;
            }
            let rewritten = self.resolve(target, &r).await?;
            resolved.insert(r, rewritten);
        }
        rewrite_references(resource, &resolved);
        Ok(())
    }

    async fn resolve(&self, target: &Target, reference: &str) -> Result<Rewritten> {
        let mut parts = reference.split('/');
        let (Some(res_type), Some(id)) = (parts.next(), parts.next()) else {
            return Ok(Rewritten::Keep);
        };
        if let Some(remote) = outbox::remote_id(&self.db, &target.config.name, res_type, id).await?
        {
            return Ok(Rewritten::Reference(format!("{res_type}/{remote}")));
        }
        let store = Store::new(self.db.clone());
        let Some(local) = store.current_direct(res_type, id).await? else {
            return Ok(Rewritten::DisplayOnly);
        };
        let Some(json) = local.json() else {
            return Ok(Rewritten::DisplayOnly);
        };
        let identifier = if res_type == "Patient" {
            patient_match(&target.config, &json)
        } else {
            None
        }
        .or_else(|| kap_identity(&json).map(|(_, s, v)| (s, v)))
        .or_else(|| {
            json.get("identifier")
                .and_then(Value::as_array)
                .and_then(|ids| {
                    ids.iter().find_map(|i| {
                        Some((
                            i.get("system")?.as_str()?.to_owned(),
                            i.get("value")?.as_str()?.to_owned(),
                        ))
                    })
                })
        });
        Ok(match identifier {
            Some((system, value)) => Rewritten::Conditional {
                reference: format!(
                    "{res_type}?{}",
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("identifier", &format!("{system}|{value}"))
                        .finish()
                ),
                system,
                value,
            },
            None => Rewritten::DisplayOnly,
        })
    }
}

/// Exponential backoff with jitter.
pub fn backoff(base: Duration, max: Duration, attempt: i64) -> Duration {
    let exp = u32::try_from(attempt.clamp(1, 31) - 1).unwrap_or(0);
    let raw = base.saturating_mul(2u32.saturating_pow(exp)).min(max);
    // Jitter spreads retries of many rows (and replicas) after an outage.
    let r = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    raw.mul_f64(0.5 + r * 0.5)
}

/// The EHR's id of what it stored: `Location` (…/Type/id/_history/n) or the body's `id`.
fn remote_id_of(response: &EhrResponse, res_type: &str) -> Option<String> {
    if let Some(loc) = response
        .header("location")
        .or_else(|| response.header("content-location"))
    {
        let segs: Vec<&str> = loc.split('?').next().unwrap_or("").split('/').collect();
        if let Some(pos) = segs.iter().rposition(|s| *s == res_type)
            && let Some(id) = segs.get(pos + 1)
            && !id.is_empty()
        {
            return Some((*id).to_owned());
        }
    }
    response
        .json()
        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
}

/// The identifier an EHR matches a Patient on: one in its `patient_identifier_system`.
fn patient_match(cfg: &EhrConfig, patient: &Value) -> Option<(String, String)> {
    let system = cfg.patient_identifier_system.as_deref()?;
    patient
        .get("identifier")
        .and_then(Value::as_array)?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(system))
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .map(|v| (system.to_owned(), v.to_owned()))
}

enum Rewritten {
    Keep,
    Reference(String),
    Conditional {
        reference: String,
        system: String,
        value: String,
    },
    DisplayOnly,
}

/// Local relative references (`Type/id`, `Type/id/_history/n`), normalised to `Type/id`.
fn local_reference(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split('/').collect();
    let ok_type = |t: &str| t.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    match parts.as_slice() {
        [t, id] | [t, id, "_history", _] if ok_type(t) && !id.is_empty() && !id.contains('?') => {
            Some(format!("{t}/{id}"))
        }
        _ => None,
    }
}

fn collect_references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(r) = map.get("reference").and_then(Value::as_str)
                && let Some(local) = local_reference(r)
            {
                out.push(local);
            }
            for child in map.values() {
                collect_references(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_references(i, out)),
        _ => {}
    }
}

fn rewrite_references(v: &mut Value, resolved: &HashMap<String, Rewritten>) {
    match v {
        Value::Object(map) => {
            let local = map
                .get("reference")
                .and_then(Value::as_str)
                .and_then(local_reference);
            if let Some(local) = local {
                match resolved.get(&local) {
                    Some(Rewritten::Reference(r)) => {
                        map.insert("reference".into(), Value::String(r.clone()));
                    }
                    Some(Rewritten::Conditional {
                        reference,
                        system,
                        value,
                    }) => {
                        map.insert("reference".into(), Value::String(reference.clone()));
                        if !map.contains_key("identifier") {
                            map.insert(
                                "identifier".into(),
                                serde_json::json!({"system": system, "value": value}),
                            );
                        }
                    }
                    Some(Rewritten::DisplayOnly) => {
                        map.remove("reference");
                        if !map.contains_key("display") {
                            map.insert("display".into(), Value::String(local.clone()));
                        }
                    }
                    Some(Rewritten::Keep) | None => {}
                }
            }
            for child in map.values_mut() {
                rewrite_references(child, resolved);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| rewrite_references(i, resolved)),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_below_the_nominal_delay() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (attempt, nominal) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = backoff(base, max, attempt).as_millis() as u64;
            assert!(
                d >= nominal / 2 && d <= nominal,
                "attempt {attempt}: {d} ms"
            );
        }
    }

    #[test]
    fn only_local_relative_references_are_rewritten() {
        assert_eq!(local_reference("Patient/p1"), Some("Patient/p1".into()));
        assert_eq!(
            local_reference("Observation/o1/_history/2"),
            Some("Observation/o1".into())
        );
        assert_eq!(
            local_reference("https://other.example/fhir/Patient/x"),
            None
        );
        assert_eq!(local_reference("urn:uuid:1234"), None);
        assert_eq!(local_reference("#contained"), None);
    }

    #[test]
    fn references_are_replaced_by_remote_ids_conditional_references_or_their_display() {
        let mut v = serde_json::json!({
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
            "performer": [{"reference": "Practitioner/dr", "display": "Dr. Lee"}],
        });
        let mut resolved = HashMap::new();
        resolved.insert(
            "Patient/p1".to_owned(),
            Rewritten::Reference("Patient/R9".into()),
        );
        resolved.insert(
            "Encounter/e1".to_owned(),
            Rewritten::Conditional {
                reference: "Encounter?identifier=urn%3Akap-gateway%3Asession%7Cs1".into(),
                system: "urn:kap-gateway:session".into(),
                value: "s1".into(),
            },
        );
        resolved.insert("Practitioner/dr".to_owned(), Rewritten::DisplayOnly);
        rewrite_references(&mut v, &resolved);
        assert_eq!(v["subject"]["reference"], "Patient/R9");
        assert_eq!(
            v["encounter"]["identifier"]["system"],
            "urn:kap-gateway:session"
        );
        assert!(v["performer"][0].get("reference").is_none());
        assert_eq!(v["performer"][0]["display"], "Dr. Lee");
    }
}
