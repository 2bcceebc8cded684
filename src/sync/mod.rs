//! EHR sync: a durable outbox, written in the same database transaction as every change to a KAP resource, that a
//! background worker delivers to each configured EHR as FHIR R4 (conditional update on the business identifier,
//! so a redelivery never duplicates), and a pull that brings an EHR's demographics and the resources the
//! contraindication screen needs back into the store.
//!
//! What is a *KAP resource*: a resource whose `meta.profile` names a profile under
//! [`KAP_PROFILE_PREFIX`] and that carries a business identifier `urn:kap-gateway:<kind>` (see
//! `profiles/README.md`). Its `<kind>` is what `[[ehr]].push` selects on. Other resources (Practitioners, a
//! Provenance without identifier, anything written without a KAP profile) stay local.

pub mod client;
pub mod config;
pub mod outbox;
pub mod pull;
pub mod worker;

use std::sync::Arc;

use serde_json::Value;

use crate::error::Result;
use crate::store::db::Tx;
use config::EhrConfig;

/// Profiles under this URL make a resource a KAP resource.
pub const KAP_PROFILE_PREFIX: &str = "http://kap-gateway.org/fhir/StructureDefinition/";
/// Business identifiers are `urn:kap-gateway:<kind>`.
pub const KAP_IDENTIFIER_PREFIX: &str = "urn:kap-gateway:";

/// What a change does on the EHR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOp {
    /// Conditional update (create or replace) on the business identifier.
    Upsert,
    /// Conditional delete on the business identifier.
    Delete,
}

impl SyncOp {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOp::Upsert => "upsert",
            SyncOp::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> SyncOp {
        if s == "delete" {
            SyncOp::Delete
        } else {
            SyncOp::Upsert
        }
    }
}

/// A KAP resource as the outbox sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub res_type: String,
    pub id: String,
    pub kind: String,
    pub id_system: String,
    pub id_value: String,
    /// Ordering lane: `Patient/<id>` of the patient it belongs to, or `<type>/<id>` when it has none.
    pub lane: String,
    pub psychotherapy: bool,
}

/// The kind and business identifier of a KAP resource, or `None` when it is not one.
pub fn kap_identity(resource: &Value) -> Option<(String, String, String)> {
    let profiled = resource
        .pointer("/meta/profile")
        .and_then(Value::as_array)
        .is_some_and(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .any(|u| u.starts_with(KAP_PROFILE_PREFIX))
        });
    if !profiled {
        return None;
    }
    resource
        .get("identifier")
        .and_then(Value::as_array)?
        .iter()
        .find_map(|i| {
            let system = i.get("system")?.as_str()?;
            let kind = system.strip_prefix(KAP_IDENTIFIER_PREFIX)?;
            let value = i.get("value")?.as_str()?;
            (!kind.is_empty() && !value.is_empty())
                .then(|| (kind.to_owned(), system.to_owned(), value.to_owned()))
        })
}

/// The local patient a resource belongs to (`subject`, `patient`, or itself for a Patient).
pub fn patient_of(res_type: &str, id: &str, resource: &Value) -> Option<String> {
    if res_type == "Patient" {
        return Some(id.to_owned());
    }
    ["subject", "patient", "beneficiary"].iter().find_map(|f| {
        resource
            .get(*f)?
            .get("reference")?
            .as_str()?
            .strip_prefix("Patient/")
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
    })
}

/// Describes a resource for the outbox, or `None` when it is not a KAP resource.
pub fn describe(res_type: &str, id: &str, resource: &Value) -> Option<Described> {
    let (kind, id_system, id_value) = kap_identity(resource)?;
    let lane = match patient_of(res_type, id, resource) {
        Some(p) => format!("Patient/{p}"),
        None => format!("{res_type}/{id}"),
    };
    Some(Described {
        res_type: res_type.to_owned(),
        id: id.to_owned(),
        kind,
        id_system,
        id_value,
        lane,
        psychotherapy: crate::fhir::labels::is_psychotherapy(resource),
    })
}

/// The enqueue side of the outbox, held by the FHIR service: which EHRs take which kinds. Cheap to clone; with
/// no EHR configured every call is a no-op.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    targets: Arc<Vec<(String, Vec<String>)>>,
}

impl Outbox {
    pub fn new(ehrs: &[EhrConfig]) -> Outbox {
        Outbox {
            targets: Arc::new(
                ehrs.iter()
                    .map(|e| (e.name.clone(), e.push.clone()))
                    .collect(),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Describes a resource about to be written, when some EHR may take it.
    pub fn describe(&self, res_type: &str, id: &str, resource: &Value) -> Option<Described> {
        if self.is_empty() {
            return None;
        }
        describe(res_type, id, resource)
    }

    /// Adds one outbox row per EHR that takes this kind, inside the write's transaction.
    pub async fn enqueue(
        &self,
        tx: &mut Tx,
        d: Option<&Described>,
        version: i64,
        op: SyncOp,
    ) -> Result<()> {
        let Some(d) = d else {
            return Ok(());
        };
        for (ehr, kinds) in self.targets.iter() {
            if kinds.iter().any(|k| k == "*" || *k == d.kind) {
                outbox::insert(tx, ehr, d, version, op).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_profiled_resource_with_a_business_identifier_is_a_kap_resource_in_its_patients_lane() {
        let obs = json!({
            "resourceType": "Observation",
            "meta": {"profile": ["http://kap-gateway.org/fhir/StructureDefinition/kap-score"]},
            "identifier": [{"system": "urn:kap-gateway:score", "value": "sc-1"}],
            "subject": {"reference": "Patient/p1"}
        });
        let d = describe("Observation", "o1", &obs).unwrap();
        assert_eq!(d.kind, "score");
        assert_eq!(d.id_value, "sc-1");
        assert_eq!(d.lane, "Patient/p1");
        assert!(!d.psychotherapy);
    }

    #[test]
    fn resources_without_a_kap_profile_or_identifier_stay_local() {
        let plain = json!({"resourceType": "Observation",
            "identifier": [{"system": "urn:kap-gateway:score", "value": "sc-1"}]});
        assert!(describe("Observation", "o1", &plain).is_none());
        let no_id = json!({"resourceType": "Provenance",
            "meta": {"profile": ["http://kap-gateway.org/fhir/StructureDefinition/kap-provenance"]}});
        assert!(describe("Provenance", "p", &no_id).is_none());
    }
}
