//! Pull from an EHR: a patient found by identifier, and the resources the contraindication screen needs
//! (AllergyIntolerance, Condition, MedicationStatement), stored locally with their source recorded in
//! `meta.source` and in a Provenance; incremental with `_lastUpdated` (https://hl7.org/fhir/R4/search.html#lastUpdated).
//!
//! The local Patient keeps its own identifiers and profile; the EHR's demographics (name, telecom, gender, birth
//! date, address, …) replace ours, and the EHR's identifiers are added. Pulled clinical resources get a local id
//! derived from the EHR's (`<ehr>-<id>`), so pulling again updates them in place.

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::client::EhrClient;
use super::outbox;
use super::worker::Target;
use crate::auth::access::Access;
use crate::fhir::datetime::{format_instant, now_micros};
use crate::fhir::registry;
use crate::service::FhirService;
use crate::store::db::{Col, Sql};

/// Resource types pulled with a patient.
pub const PULLED_TYPES: &[&str] = &["AllergyIntolerance", "Condition", "MedicationStatement"];

/// Demographic elements taken from the EHR's Patient.
const DEMOGRAPHICS: &[&str] = &[
    "name",
    "telecom",
    "gender",
    "birthDate",
    "deceasedBoolean",
    "deceasedDateTime",
    "address",
    "maritalStatus",
    "communication",
];

/// What one pull did.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PullReport {
    pub ehr: String,
    pub identifier: String,
    /// `Patient/<local id>`.
    pub patient: Option<String>,
    /// Resources created or changed locally.
    pub written: Vec<String>,
    /// Types the EHR was not asked for because this server does not store them.
    pub skipped_types: Vec<String>,
    /// Resources the EHR sent that could not be stored, with the reason.
    pub errors: Vec<String>,
    /// The Provenance recording the pull, when something was written.
    pub provenance: Option<String>,
}

async fn get_json(client: &EhrClient, url: &str) -> Result<Value, String> {
    let r = client
        .send(Method::GET, url, None, &[])
        .await
        .map_err(|e| e.to_string())?;
    if !r.is_success() {
        return Err(format!(
            "GET {url}: HTTP {} {}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        ));
    }
    r.json()
        .ok_or_else(|| format!("GET {url}: the answer is not JSON"))
}

/// Every resource of a search, following `next` links (at most 50 pages).
async fn search_all(
    client: &EhrClient,
    first: String,
) -> Result<(Vec<Value>, Option<String>), String> {
    let mut out = Vec::new();
    let mut url = Some(first);
    let mut stamp = None;
    for _ in 0..50 {
        let Some(u) = url.take() else { break };
        let bundle = get_json(client, &u).await?;
        if stamp.is_none() {
            stamp = bundle
                .pointer("/meta/lastUpdated")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        for e in bundle
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let mode = e.pointer("/search/mode").and_then(Value::as_str);
            if (mode.is_none() || mode == Some("match"))
                && let Some(r) = e.get("resource")
            {
                out.push(r.clone());
            }
        }
        url = bundle
            .get("link")
            .and_then(Value::as_array)
            .and_then(|links| {
                links
                    .iter()
                    .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
            })
            .and_then(|l| l.get("url").and_then(Value::as_str))
            .map(str::to_owned);
    }
    Ok((out, stamp))
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A local id for an EHR's resource: `<ehr>-<id>`, cut to FHIR's 64 characters.
fn local_id(ehr: &str, remote: &str) -> String {
    let mut id: String = format!("{ehr}-{remote}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.truncate(64);
    id
}

fn strip_server_meta(resource: &mut Value, source: &str) {
    if let Some(obj) = resource.as_object_mut() {
        obj.remove("id");
        obj.remove("text");
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.remove("versionId");
            m.remove("lastUpdated");
            m.insert("source".into(), Value::String(source.to_owned()));
        }
    }
}

/// Makes the EHR's relative references absolute (they name EHR resources), except the patient's.
fn localize(v: &mut Value, base: &str, remote_patient: &str, local_patient: &str) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("reference") {
                let parts: Vec<&str> = r.split('/').collect();
                if parts.len() >= 2 && !r.contains(':') && !r.starts_with('#') {
                    if parts[0] == "Patient" && parts[1] == remote_patient {
                        *r = format!("Patient/{local_patient}");
                    } else {
                        *r = format!("{base}/{r}");
                    }
                }
            }
            for child in map.values_mut() {
                localize(child, base, remote_patient, local_patient);
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| localize(i, base, remote_patient, local_patient)),
        _ => {}
    }
}

/// Pulls one patient (by `system|value`) and their AllergyIntolerance, Condition and MedicationStatement
/// resources changed since the last pull.
pub async fn pull_patient(
    service: &FhirService,
    target: &Target,
    identifier: &str,
) -> Result<PullReport, String> {
    let client = &target.client;
    let ehr = &target.config.name;
    let access = Access::internal();
    let db = &service.store.db;
    let mut report = PullReport {
        ehr: ehr.clone(),
        identifier: identifier.to_owned(),
        ..PullReport::default()
    };
    if !identifier.contains('|') {
        return Err("the identifier must be system|value".into());
    }
    let started = now_micros();
    let since = pull_since(service, ehr, identifier).await?;
    let (patients, ehr_time) = search_all(
        client,
        client.url(&format!("Patient?{}", query(&[("identifier", identifier)]))),
    )
    .await?;
    let [remote] = patients.as_slice() else {
        return Err(format!(
            "the EHR has {} patients with identifier {identifier} (expected one)",
            patients.len()
        ));
    };
    let remote_id = remote
        .get("id")
        .and_then(Value::as_str)
        .ok_or("the EHR's Patient has no id")?
        .to_owned();
    let source = format!("{}/Patient/{remote_id}", client.base_url);

    // The local patient: ours with the EHR's demographics, or a new one.
    let q = service
        .parse_search(
            "Patient",
            &[("identifier".into(), identifier.into())],
            false,
        )
        .map_err(|e| e.to_string())?;
    let local = service
        .search(&access, &q)
        .await
        .map_err(|e| e.to_string())?
        .matches;
    let mut written = Vec::new();
    let patient_ref = match local.as_slice() {
        [one] => {
            let mut mine = one.json().ok_or("the local Patient is not valid JSON")?;
            for field in DEMOGRAPHICS {
                match remote.get(*field) {
                    Some(v) => {
                        mine[*field] = v.clone();
                    }
                    None => {
                        if let Some(o) = mine.as_object_mut() {
                            o.remove(*field);
                        }
                    }
                }
            }
            let mut ids = mine
                .get("identifier")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for i in remote
                .get("identifier")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let same = |a: &Value| {
                    a.get("system") == i.get("system") && a.get("value") == i.get("value")
                };
                if !ids.iter().any(same) {
                    ids.push(i.clone());
                }
            }
            mine["identifier"] = Value::Array(ids);
            mine["meta"]["source"] = Value::String(source.clone());
            let out = service
                .update(&access, "Patient", &one.id, mine, None)
                .await
                .map_err(|e| format!("cannot update the local Patient: {e}"))?;
            if out.resource.last_updated >= started {
                written.push(format!(
                    "Patient/{}/_history/{}",
                    one.id, out.resource.version
                ));
            }
            one.id.clone()
        }
        [] => {
            let mut copy = remote.clone();
            strip_server_meta(&mut copy, &source);
            let id = local_id(ehr, &remote_id);
            let out = service
                .update(&access, "Patient", &id, copy, None)
                .await
                .map_err(|e| format!("cannot store the EHR's Patient: {e}"))?;
            written.push(format!("Patient/{id}/_history/{}", out.resource.version));
            id
        }
        _ => {
            return Err(format!(
                "several local patients have identifier {identifier}; merge them first"
            ));
        }
    };
    report.patient = Some(format!("Patient/{patient_ref}"));

    for res_type in PULLED_TYPES {
        if !registry::is_supported_type(res_type) {
            report.skipped_types.push((*res_type).to_owned());
            continue;
        }
        let mut params = vec![("patient", remote_id.as_str()), ("_count", "100")];
        let gt;
        if let Some(s) = &since {
            gt = format!("gt{s}");
            params.push(("_lastUpdated", gt.as_str()));
        }
        let (found, _) = search_all(
            client,
            client.url(&format!("{res_type}?{}", query(&params))),
        )
        .await?;
        for mut r in found {
            let Some(rid) = r.get("id").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if r.get("resourceType").and_then(Value::as_str) != Some(res_type) {
                continue;
            }
            let source = format!("{}/{res_type}/{rid}", client.base_url);
            strip_server_meta(&mut r, &source);
            localize(&mut r, &client.base_url, &remote_id, &patient_ref);
            let id = local_id(ehr, &rid);
            if let Some(o) = r.as_object_mut() {
                o.insert("id".into(), Value::String(id.clone()));
            }
            match service.update(&access, res_type, &id, r, None).await {
                Ok(out) => {
                    // An update that changes nothing keeps its version and time: only real changes count.
                    if out.resource.last_updated >= started {
                        written.push(format!("{res_type}/{id}/_history/{}", out.resource.version));
                    }
                }
                Err(e) => report.errors.push(format!("{res_type}/{rid}: {e}")),
            }
        }
    }
    if !written.is_empty() {
        let provenance = json!({
            "resourceType": "Provenance",
            "target": written.iter().map(|r| json!({"reference": r})).collect::<Vec<_>>(),
            "recorded": format_instant(now_micros()),
            "activity": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                "code": "UPDATE", "display": "revise"}]},
            "agent": [{
                "type": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "assembler", "display": "Assembler"}]},
                "who": {"display": format!("kap-gateway sync from EHR {ehr}")}
            }],
            "entity": [{"role": "source", "what": {"reference": source, "display": format!("EHR {ehr}")}}]
        });
        let out = service
            .create(&access, "Provenance", provenance, None)
            .await
            .map_err(|e| format!("cannot record the Provenance: {e}"))?;
        report.provenance = Some(out.resource.reference());
    }
    report.written = written;
    let watermark = ehr_time.unwrap_or_else(|| format_instant(started - 60_000_000));
    save_since(service, ehr, identifier, &watermark).await?;
    outbox::record_pull(db, ehr)
        .await
        .map_err(|e| e.to_string())?;
    Ok(report)
}

async fn pull_since(
    service: &FhirService,
    ehr: &str,
    identifier: &str,
) -> Result<Option<String>, String> {
    let mut sql = Sql::new("SELECT since FROM sync_pull_state WHERE ehr = ");
    sql.bind(ehr).push(" AND identifier = ").bind(identifier);
    let rows = service
        .store
        .db
        .fetch(&sql, &[Col::OptText])
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.first().and_then(|r| r.opt_text(0)))
}

async fn save_since(
    service: &FhirService,
    ehr: &str,
    identifier: &str,
    since: &str,
) -> Result<(), String> {
    let db = &service.store.db;
    let mut tx = db.begin_write().await.map_err(|e| e.to_string())?;
    let mut sql =
        Sql::new("INSERT INTO sync_pull_state (ehr, identifier, since, pulled_at) VALUES (");
    sql.bind(ehr)
        .push(", ")
        .bind(identifier)
        .push(", ")
        .bind(since)
        .push(", ")
        .bind(now_micros())
        .push(") ON CONFLICT (ehr, identifier) DO UPDATE SET since = ")
        .bind(since)
        .push(", pulled_at = ")
        .bind(now_micros());
    tx.execute(&sql).await.map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Identifiers to pull from one EHR: those pulled before, and every local patient's identifier in the EHR's
/// patient identifier system.
pub async fn known_identifiers(
    service: &FhirService,
    target: &Target,
) -> Result<Vec<String>, String> {
    let mut sql = Sql::new("SELECT identifier FROM sync_pull_state WHERE ehr = ");
    sql.bind(target.config.name.as_str());
    let mut out: Vec<String> = service
        .store
        .db
        .fetch(&sql, &[Col::Text])
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.text(0))
        .collect();
    if let Some(system) = &target.config.patient_identifier_system {
        let mut q = service
            .parse_search(
                "Patient",
                &[("identifier".into(), format!("{system}|"))],
                false,
            )
            .map_err(|e| e.to_string())?;
        q.count = 1000;
        let page = service
            .search(&Access::internal(), &q)
            .await
            .map_err(|e| e.to_string())?;
        for p in page.matches {
            if let Some(json) = p.json() {
                for i in json
                    .get("identifier")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if i.get("system").and_then(Value::as_str) == Some(system.as_str())
                        && let Some(v) = i.get("value").and_then(Value::as_str)
                    {
                        out.push(format!("{system}|{v}"));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Pulls every known patient from each EHR that has a `pull_interval_secs`, until shutdown.
pub async fn run_periodic(
    service: FhirService,
    targets: Vec<Target>,
    mut shutdown: watch::Receiver<bool>,
) {
    let targets: Vec<Target> = targets
        .into_iter()
        .filter(|t| t.config.pull_interval_secs > 0)
        .collect();
    if targets.is_empty() {
        return;
    }
    let tick = targets
        .iter()
        .map(|t| t.config.pull_interval_secs)
        .min()
        .unwrap_or(60);
    let mut last: Vec<Option<std::time::Instant>> = vec![None; targets.len()];
    loop {
        for (i, t) in targets.iter().enumerate() {
            if *shutdown.borrow() {
                return;
            }
            if last[i]
                .is_some_and(|l| l.elapsed() < Duration::from_secs(t.config.pull_interval_secs))
            {
                continue;
            }
            last[i] = Some(std::time::Instant::now());
            match known_identifiers(&service, t).await {
                Ok(ids) => {
                    for id in ids {
                        if let Err(e) = pull_patient(&service, t, &id).await {
                            tracing::warn!(ehr = %t.config.name, error = %e, "pull failed");
                            let _ = outbox::record_ehr_error(
                                &service.store.db,
                                &t.config.name,
                                &format!("pull: {e}"),
                            )
                            .await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(ehr = %t.config.name, error = %e, "cannot list patients to pull")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(tick)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
