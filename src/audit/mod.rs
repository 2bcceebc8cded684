//! The audit trail: one AuditEvent per FHIR access and per token grant or refusal, in the style of IHE Basic Audit
//! Log Patterns (https://profiles.ihe.net/ITI/BALP/, https://hl7.org/fhir/R4/auditevent.html).
//!
//! Nothing is answered unaudited. Each request's event is made durable before its response leaves, in one of two
//! ways (setting `audit_journal`): written to the audit journal ([`journal`], the default beside a SQLite file),
//! which a background task imports into the database in large batches; or handed to a group-commit writer, the
//! request waiting until the database transaction holding it (shared by many concurrent requests) has committed.
//! Either way events end up in the audit trail's own append-only table (`store::audit`), not the resource store:
//! one row per event plus its patient, agent and entity references. Events never carry note text, search values or resource content: only who, which client,
//! which interaction on which resource type and id, which patients, and the HTTP status.

pub mod journal;

use std::sync::Arc;

use serde_json::Value;
#[cfg(test)]
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::auth::access::Access;
use crate::error::{Error, Result};
use crate::fhir::datetime::{format_instant, now_micros};
use crate::store::Store;
use crate::store::audit::AuditRow;

/// Largest number of events committed together.
const BATCH: usize = 256;

/// How long a writer waits for more events after the first of a batch.
const GATHER_MICROS: u64 = 500;

type Pending = (AuditRow, oneshot::Sender<std::result::Result<(), String>>);

/// Records events: into the journal, or through the group-commit writer task.
#[derive(Clone, Debug)]
pub struct AuditLog {
    sink: Sink,
}

#[derive(Clone, Debug)]
enum Sink {
    Journal(Arc<journal::Journal>),
    Commit(mpsc::Sender<Pending>),
}

/// What happened, in the terms of the FHIR restful-interaction code system.
#[derive(Debug, Clone)]
pub struct AuditRecord<'a> {
    /// `read`, `vread`, `search-type`, `create`, `update`, `patch`, `delete`, `history-*`, `transaction`, `batch`,
    /// or for the authorization server `token` / `authorize`.
    pub interaction: &'a str,
    pub resource_type: Option<&'a str>,
    pub id: Option<&'a str>,
    /// Patients whose data was touched (ids).
    pub patients: Vec<String>,
    /// Names (never values) of the search parameters used.
    pub parameter_names: Vec<String>,
    pub status: u16,
}

/// Codes of http://hl7.org/fhir/restful-interaction used here; anything else is an authentication event.
const REST_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search-type",
    "transaction",
    "batch",
    "operation",
];

/// Patients whose compartment a resource is in (its own id for a Patient).
pub fn patients_of(resource_type: &str, resource: &Value) -> Vec<String> {
    if resource_type == "Patient" {
        return resource
            .get("id")
            .and_then(Value::as_str)
            .map(|id| vec![id.to_owned()])
            .unwrap_or_default();
    }
    crate::fhir::extract::patient_references(
        resource_type,
        resource,
        crate::fhir::registry::patient_compartment_params(resource_type),
    )
}

/// Patients whose compartment a stored resource is in, from its JSON text. Only the top-level elements that the
/// compartment parameters read are parsed into values; the rest is skipped over, which costs a fraction of a full
/// parse (this runs for every resource of every response).
pub fn patients_of_text(resource_type: &str, text: &str) -> Vec<String> {
    let mut wanted: Vec<&str> = vec!["id"];
    for name in crate::fhir::registry::patient_compartment_params(resource_type) {
        if let Some(def) = crate::fhir::registry::find(resource_type, name) {
            wanted.extend(def.paths.iter().filter_map(|p| p.split('.').next()));
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match serde::de::DeserializeSeed::deserialize(TopLevel(&wanted), &mut de) {
        Ok(partial) => patients_of(resource_type, &partial),
        Err(_) => Vec::new(),
    }
}

/// Deserializes a JSON object keeping only the named members.
struct TopLevel<'a>(&'a [&'a str]);

impl<'de> serde::de::DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopLevel<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if self.0.contains(&key.as_ref()) {
                let value: Value = map.next_value()?;
                out.insert(key.into_owned(), value);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

fn action(interaction: &str) -> &'static str {
    match interaction {
        "create" => "C",
        "update" | "patch" => "U",
        "delete" => "D",
        "transaction" | "batch" | "operation" => "E",
        _ if !REST_INTERACTIONS.contains(&interaction) => "E",
        _ => "R",
    }
}

fn outcome(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

/// Builds the AuditEvent for one access as a JSON value: the reference [`audit_row`] is checked against in the tests
/// (the gateway writes its events with [`audit_row`]).
#[cfg(test)]
pub fn audit_event(
    access: Option<&Access>,
    client_hint: Option<&str>,
    record: &AuditRecord<'_>,
) -> Value {
    let rest = REST_INTERACTIONS.contains(&record.interaction);
    let mut agents = Vec::new();
    let client = access
        .map(|a| a.client_id.as_str())
        .or(client_hint)
        .unwrap_or("unknown");
    agents.push(json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
        "who": {"identifier": {"system": "urn:kap-gateway:client", "value": client}},
        "requestor": access.is_none_or(|a| a.subject == a.client_id),
    }));
    if let Some(a) = access
        && a.subject != a.client_id
    {
        let who = match &a.fhir_user {
            Some(fhir_user) => json!({"reference": fhir_user, "display": a.subject}),
            None => json!({"identifier": {"system": "urn:kap-gateway:user", "value": a.subject}}),
        };
        agents.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
            "who": who,
            "requestor": true,
        }));
    }
    let mut entities = Vec::new();
    if let (Some(t), Some(id)) = (record.resource_type, record.id) {
        entities.push(json!({
            "what": {"reference": format!("{t}/{id}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
        }));
    } else if let Some(t) = record.resource_type {
        let mut query = json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "description": format!("{} {t}", record.interaction),
        });
        if !record.parameter_names.is_empty()
            && let Some(obj) = query.as_object_mut()
        {
            obj.insert(
                "detail".into(),
                json!([{"type": "parameter-names", "valueString": record.parameter_names.join(",")}]),
            );
        }
        entities.push(query);
    }
    for patient in record.patients.iter().take(50) {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    let (type_coding, subtype) = if rest {
        (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": record.interaction}]),
        )
    } else {
        (
            json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"}),
            json!([{"system": "urn:kap-gateway:auth-event", "code": record.interaction}]),
        )
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": type_coding,
        "subtype": subtype,
        "action": action(record.interaction),
        "recorded": format_instant(now_micros()),
        "outcome": outcome(record.status),
        "outcomeDesc": format!("HTTP {}", record.status),
        "agent": agents,
        "source": {
            "observer": {"display": "kap-gateway"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
    });
    if !entities.is_empty()
        && let Some(obj) = event.as_object_mut()
    {
        obj.insert("entity".into(), Value::Array(entities));
    }
    event
}

/// The row of the AuditEvent for one access, written straight to its JSON text: this runs for every request, and
/// building the event as a `serde_json::Value` (a map per element, every string copied, then serialised) was a
/// noticeable share of a read's cost. A test checks it against the value-built event, `audit_event`, byte for byte.
pub fn audit_row(
    access: Option<&Access>,
    client_hint: Option<&str>,
    record: &AuditRecord<'_>,
) -> Result<AuditRow> {
    let recorded = now_micros();
    audit_row_at(
        access,
        client_hint,
        record,
        recorded,
        AuditRow::event_id(recorded),
    )
}

fn audit_row_at(
    access: Option<&Access>,
    client_hint: Option<&str>,
    record: &AuditRecord<'_>,
    recorded: i64,
    id: String,
) -> Result<AuditRow> {
    let rest = REST_INTERACTIONS.contains(&record.interaction);
    let client = access
        .map(|a| a.client_id.as_str())
        .or(client_hint)
        .unwrap_or("unknown");
    let mut refs = Vec::new();
    let mut agent = vec![ev::Agent {
        type_: ev::Concept {
            coding: [ev::Coding::shown(DCM, "110150", "Application")],
        },
        who: ev::Who::Identifier {
            identifier: ev::Identifier {
                system: "urn:kap-gateway:client",
                value: client,
            },
        },
        requestor: access.is_none_or(|a| a.subject == a.client_id),
    }];
    if let Some(a) = access
        && a.subject != a.client_id
    {
        let who = match &a.fhir_user {
            Some(fhir_user) => {
                AuditRow::add_ref(&mut refs, "agent", fhir_user.clone());
                ev::Who::Reference {
                    reference: fhir_user,
                    display: &a.subject,
                }
            }
            None => ev::Who::Identifier {
                identifier: ev::Identifier {
                    system: "urn:kap-gateway:user",
                    value: &a.subject,
                },
            },
        };
        agent.push(ev::Agent {
            type_: ev::Concept {
                coding: [ev::Coding::shown(
                    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                    "IRCP",
                    "information recipient",
                )],
            },
            who,
            requestor: true,
        });
    }
    let mut entity = Vec::new();
    if let (Some(t), Some(id)) = (record.resource_type, record.id) {
        let reference = format!("{t}/{id}");
        AuditRow::add_ref(&mut refs, "entity", reference.clone());
        entity.push(ev::Entity {
            what: Some(ev::Reference { reference }),
            type_: ev::Coding::shown(ENTITY_TYPE, "2", "System Object"),
            ..ev::Entity::default()
        });
    } else if let Some(t) = record.resource_type {
        entity.push(ev::Entity {
            role: Some(ev::Coding::shown(OBJECT_ROLE, "24", "Query")),
            description: Some(format!("{} {t}", record.interaction)),
            detail: (!record.parameter_names.is_empty()).then(|| {
                [ev::Detail {
                    type_: "parameter-names",
                    value_string: record.parameter_names.join(","),
                }]
            }),
            ..ev::Entity::system_object()
        });
    }
    for patient in record.patients.iter().take(50) {
        let reference = format!("Patient/{patient}");
        AuditRow::add_ref(&mut refs, "entity", reference.clone());
        entity.push(ev::Entity {
            what: Some(ev::Reference { reference }),
            type_: ev::Coding::shown(ENTITY_TYPE, "1", "Person"),
            role: Some(ev::Coding::shown(OBJECT_ROLE, "1", "Patient")),
            ..ev::Entity::default()
        });
    }
    refs.sort();
    refs.dedup();
    let (type_, subtype) = if rest {
        (
            ev::Coding::shown(
                "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "rest",
                "RESTful Operation",
            ),
            ev::Coding::plain(
                "http://hl7.org/fhir/restful-interaction",
                record.interaction,
            ),
        )
    } else {
        (
            ev::Coding::shown(DCM, "110114", "User Authentication"),
            ev::Coding::plain("urn:kap-gateway:auth-event", record.interaction),
        )
    };
    let instant = format_instant(recorded);
    let action = action(record.interaction);
    let outcome = outcome(record.status);
    let event = ev::Event {
        resource_type: "AuditEvent",
        id: &id,
        type_: type_.clone(),
        subtype: [subtype.clone()],
        action,
        recorded: &instant,
        outcome,
        outcome_desc: format!("HTTP {}", record.status),
        agent,
        source: ev::Source {
            observer: ev::Display {
                display: "kap-gateway",
            },
            type_: [ev::Coding::shown(
                "http://terminology.hl7.org/CodeSystem/security-source-type",
                "4",
                "Application Server",
            )],
        },
        entity,
        meta: ev::Meta {
            version_id: "1",
            last_updated: &instant,
        },
    };
    let content = serde_json::to_string(&event)?;
    Ok(AuditRow {
        id,
        recorded,
        type_system: Some(type_.system.to_owned()),
        type_code: Some(type_.code.to_owned()),
        subtype_system: Some(subtype.system.to_owned()),
        subtype_code: Some(subtype.code.to_owned()),
        action: Some(action.to_owned()),
        outcome: Some(outcome.to_owned()),
        refs,
        content,
    })
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The AuditEvent's elements, in the order they are written.
mod ev {
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct Event<'a> {
        #[serde(rename = "resourceType")]
        pub resource_type: &'static str,
        pub id: &'a str,
        #[serde(rename = "type")]
        pub type_: Coding<'a>,
        pub subtype: [Coding<'a>; 1],
        pub action: &'static str,
        pub recorded: &'a str,
        pub outcome: &'static str,
        #[serde(rename = "outcomeDesc")]
        pub outcome_desc: String,
        pub agent: Vec<Agent<'a>>,
        pub source: Source,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        pub entity: Vec<Entity<'a>>,
        pub meta: Meta<'a>,
    }

    #[derive(Serialize, Clone)]
    pub struct Coding<'a> {
        pub system: &'a str,
        pub code: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub display: Option<&'static str>,
    }

    impl<'a> Coding<'a> {
        pub fn shown(system: &'a str, code: &'a str, display: &'static str) -> Coding<'a> {
            Coding {
                system,
                code,
                display: Some(display),
            }
        }

        pub fn plain(system: &'a str, code: &'a str) -> Coding<'a> {
            Coding {
                system,
                code,
                display: None,
            }
        }
    }

    #[derive(Serialize)]
    pub struct Concept<'a> {
        pub coding: [Coding<'a>; 1],
    }

    #[derive(Serialize)]
    pub struct Identifier<'a> {
        pub system: &'static str,
        pub value: &'a str,
    }

    #[derive(Serialize)]
    #[serde(untagged)]
    pub enum Who<'a> {
        Reference {
            reference: &'a str,
            display: &'a str,
        },
        Identifier {
            identifier: Identifier<'a>,
        },
    }

    #[derive(Serialize)]
    pub struct Agent<'a> {
        #[serde(rename = "type")]
        pub type_: Concept<'a>,
        pub who: Who<'a>,
        pub requestor: bool,
    }

    #[derive(Serialize)]
    pub struct Display {
        pub display: &'static str,
    }

    #[derive(Serialize)]
    pub struct Source {
        pub observer: Display,
        #[serde(rename = "type")]
        pub type_: [Coding<'static>; 1],
    }

    #[derive(Serialize)]
    pub struct Reference {
        pub reference: String,
    }

    #[derive(Serialize)]
    pub struct Detail {
        #[serde(rename = "type")]
        pub type_: &'static str,
        #[serde(rename = "valueString")]
        pub value_string: String,
    }

    #[derive(Serialize)]
    pub struct Entity<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub what: Option<Reference>,
        #[serde(rename = "type")]
        pub type_: Coding<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub role: Option<Coding<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub detail: Option<[Detail; 1]>,
    }

    impl Entity<'_> {
        pub fn system_object() -> Entity<'static> {
            Entity {
                what: None,
                type_: Coding::shown(super::ENTITY_TYPE, "2", "System Object"),
                role: None,
                description: None,
                detail: None,
            }
        }
    }

    impl Default for Entity<'_> {
        fn default() -> Self {
            Entity::system_object()
        }
    }

    #[derive(Serialize)]
    pub struct Meta<'a> {
        #[serde(rename = "versionId")]
        pub version_id: &'static str,
        #[serde(rename = "lastUpdated")]
        pub last_updated: &'a str,
    }
}

impl AuditLog {
    /// Opens an audit journal under `root`, after importing the journals that earlier runs left behind (so the
    /// audit trail is complete before the first request), and starts its importer, registered with `workers`: on
    /// shutdown, once the HTTP server has stopped, it imports what is left and returns.
    pub async fn start_journal(
        store: Store,
        workers: &crate::workers::Workers,
        root: &std::path::Path,
    ) -> Result<AuditLog> {
        let imported = journal::adopt_orphans(root, None, &store).await?;
        if imported > 0 {
            tracing::info!(events = imported, journal = %root.display(), "audit events of an earlier run imported");
        }
        let journal = Arc::new(journal::Journal::create(root)?);
        let running = journal.clone();
        workers.spawn(
            "audit-importer",
            crate::workers::Stage::AfterRequests,
            // It beats after every import round (once a second): a minute of failed imports makes the instance
            // unready, since reads of the audit trail then fail too.
            Some(std::time::Duration::from_secs(60)),
            move |w| running.run_importer(store, w),
        );
        Ok(AuditLog {
            sink: Sink::Journal(journal),
        })
    }

    /// Waits until every event recorded so far can be read from the database (a no-op for the group-commit
    /// writer, whose events are committed when recorded). Readers of the audit trail call it first.
    pub async fn flush(&self) -> Result<()> {
        match &self.sink {
            Sink::Journal(j) => j.flush().await,
            Sink::Commit(_) => Ok(()),
        }
    }

    /// Starts the group-commit writer tasks on the current runtime, registered with `workers`: on shutdown, once
    /// the HTTP server has stopped, they write every event still queued and return.
    pub fn start(store: Store, workers: &crate::workers::Workers) -> AuditLog {
        let (tx, rx) = mpsc::channel::<Pending>(4096);
        // SQLite has one writer at a time anyway; PostgreSQL commits several batches side by side.
        let writers = match store.db.backend() {
            crate::store::db::Backend::Sqlite => 1,
            crate::store::db::Backend::Postgres => 4,
        };
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers {
            let (store, rx) = (store.clone(), rx.clone());
            workers.spawn(
                "audit-writer",
                crate::workers::Stage::AfterRequests,
                None,
                move |w| writer(store, rx, w),
            );
        }
        AuditLog {
            sink: Sink::Commit(tx),
        }
    }

    /// Records an event (see [`audit_row`]): returns once it is durable (written to the journal, or committed).
    pub async fn record(&self, row: AuditRow) -> Result<()> {
        let tx = match &self.sink {
            Sink::Journal(journal) => {
                journal.append(&row)?;
                return Ok(());
            }
            Sink::Commit(tx) => tx,
        };
        let (done, wait) = oneshot::channel();
        tx.send((row, done))
            .await
            .map_err(|_| Error::internal(anyhow::anyhow!("the audit writer has stopped")))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::internal(anyhow::anyhow!("audit write failed: {e}"))),
            Err(_) => Err(Error::internal(anyhow::anyhow!(
                "the audit writer has stopped"
            ))),
        }
    }
}

async fn writer(
    store: Store,
    rx: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>,
    worker: crate::workers::Worker,
) {
    loop {
        let batch = {
            let mut rx = tokio::select! {
                biased;
                rx = rx.lock() => rx,
                _ = worker.stopping() => return,
            };
            // Queued events come first: once told to stop, the writer returns only when the queue is empty.
            let first = tokio::select! {
                biased;
                first = rx.recv() => first,
                _ = worker.stopping() => None,
            };
            let Some(first) = first else {
                return;
            };
            // Requests released by the previous commit come back a moment later; a short wait lets them share
            // this transaction instead of each paying for its own.
            tokio::time::sleep(std::time::Duration::from_micros(GATHER_MICROS)).await;
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        let (rows, waiting): (Vec<AuditRow>, Vec<_>) = batch.into_iter().unzip();
        let result = write_batch(&store, &rows).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, events = rows.len(), "could not write audit events");
        }
        for done in waiting {
            let _ = done.send(result.clone().map_err(|e| e.to_string()));
        }
    }
}

async fn write_batch(store: &Store, rows: &[AuditRow]) -> std::result::Result<(), String> {
    let mut tx = store.begin_write().await.map_err(|e| e.to_string())?;
    if tx.backend() == crate::store::db::Backend::Postgres {
        // The commit is visible to every reader at once, but the disk flush happens with PostgreSQL's next WAL
        // write (within wal_writer_delay) instead of each request waiting for its own: a database crash could
        // lose the last fraction of a second of audit events, never clinical data.
        tx.execute(&crate::store::db::Sql::new(
            "SET LOCAL synchronous_commit TO OFF",
        ))
        .await
        .map_err(|e| e.to_string())?;
    }
    if let Err(e) = store.append_audit(&mut tx, rows).await {
        let _ = tx.rollback().await;
        return Err(e.to_string());
    }
    tx.commit().await.map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patients_from_the_json_text_match_those_from_the_parsed_resource() {
        let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "PHQ-9", "coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
            "subject": {"reference": "Patient/alice"},
            "performer": [{"reference": "Patient/bob"}, {"reference": "Practitioner/lee"}],
            "valueQuantity": {"value": 1.50}, "note": [{"text": "Patient/carol"}]});
        let text = obs.to_string();
        assert_eq!(patients_of_text("Observation", &text), ["alice", "bob"]);
        assert_eq!(
            patients_of_text("Observation", &text),
            patients_of("Observation", &obs)
        );
        let patient = json!({"resourceType": "Patient", "id": "dave", "link": [{"other": {"reference": "Patient/erin"}}]});
        assert_eq!(patients_of_text("Patient", &patient.to_string()), ["dave"]);
        assert!(patients_of_text("Observation", "not json").is_empty());
    }

    /// The row written straight to text is the row of the event [`audit_event`] builds, to the byte.
    #[test]
    fn audit_rows_are_the_rows_of_the_built_events() {
        let user = Access {
            subject: "dr-lee".into(),
            fhir_user: Some("Practitioner/lee".into()),
            ..Access::internal()
        };
        let anonymous_user = Access {
            subject: "nurse \"kim\"".into(),
            fhir_user: None,
            ..Access::internal()
        };
        let remote_user = Access {
            subject: "x".into(),
            fhir_user: Some("https://idp.example/Practitioner/9".into()),
            ..Access::internal()
        };
        let backend = Access::internal();
        let record =
            |interaction, resource_type, id, patients: &[&str], params: &[&str], status| {
                AuditRecord {
                    interaction,
                    resource_type,
                    id,
                    patients: patients.iter().map(|p| (*p).to_owned()).collect(),
                    parameter_names: params.iter().map(|p| (*p).to_owned()).collect(),
                    status,
                }
            };
        let many: Vec<String> = (0..60).map(|n| format!("p{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cases: Vec<(Option<&Access>, Option<&str>, AuditRecord<'_>)> = vec![
            (
                Some(&user),
                None,
                record(
                    "search-type",
                    Some("Observation"),
                    None,
                    &["alice"],
                    &["code", "patient"],
                    200,
                ),
            ),
            (
                Some(&backend),
                None,
                record("read", Some("Observation"), Some("o-1"), &["bob"], &[], 200),
            ),
            (
                Some(&anonymous_user),
                None,
                record("create", Some("Patient"), None, &[], &[], 500),
            ),
            (
                Some(&remote_user),
                None,
                record("history-type", Some("Encounter"), None, &[], &[], 200),
            ),
            (
                Some(&user),
                None,
                record(
                    "delete",
                    Some("Patient"),
                    Some("alice"),
                    &["alice"],
                    &[],
                    204,
                ),
            ),
            (
                Some(&user),
                None,
                record("transaction", None, None, &many, &[], 200),
            ),
            (
                None,
                Some("app-1"),
                record(
                    "token",
                    None,
                    None,
                    &[],
                    &["grant_type=client_credentials"],
                    401,
                ),
            ),
            (None, None, record("authorize", None, None, &[], &[], 302)),
            (
                Some(&backend),
                None,
                record("read", Some("Observation"), Some("a/b"), &[], &[], 404),
            ),
        ];
        for (n, (access, hint, record)) in cases.iter().enumerate() {
            let at = 1_767_323_045_123_456 + i64::try_from(n).unwrap() * 1000;
            let mut event = audit_event(*access, *hint, record);
            event["recorded"] = json!(format_instant(at));
            let built = AuditRow::new(event).unwrap();
            let written = audit_row_at(*access, *hint, record, at, built.id.clone()).unwrap();
            assert_eq!(format!("{written:?}"), format!("{built:?}"), "case {n}");
        }
    }

    #[test]
    fn an_audit_event_names_client_user_resource_and_patient_but_no_search_values() {
        let access = Access {
            subject: "dr-lee".into(),
            fhir_user: Some("Practitioner/lee".into()),
            ..Access::internal()
        };
        let e = audit_event(
            Some(&access),
            None,
            &AuditRecord {
                interaction: "search-type",
                resource_type: Some("Observation"),
                id: None,
                patients: vec!["alice".into()],
                parameter_names: vec!["code".into(), "patient".into()],
                status: 200,
            },
        );
        assert!(crate::fhir::validate::validate_resource(Some("AuditEvent"), &e).is_ok());
        assert_eq!(e["action"], "R");
        assert_eq!(e["outcome"], "0");
        assert_eq!(e["agent"][1]["who"]["reference"], "Practitioner/lee");
        assert_eq!(e["entity"][1]["what"]["reference"], "Patient/alice");
        assert_eq!(e["entity"][0]["detail"][0]["valueString"], "code,patient");
        let index = crate::fhir::extract::extract("AuditEvent", &e);
        assert!(index.iter().any(|i| i.param == "patient"));
    }
}
