//! The access context of a request — who, through which client, with which scopes, for which patient — and the
//! permission checks every interaction makes with it before touching data.

use crate::auth::scopes::{Grant, Op, ScopeSet};
use crate::error::{Error, ErrorKind};
use crate::fhir::outcome::Issue;

/// Scope that lets a token see psychotherapy notes (resources labelled with the v3-ActCode `PSY` sensitivity).
/// It is granted only to clients registered with it and, in user launches, only to users whose role is
/// `therapist` or `admin`.
pub const PSYCHOTHERAPY_SCOPE: &str = "kap/psychotherapy-notes.read";

/// Scope that opens `/admin/sync` (EHR sync status and repair) to a backend service or an administrator's app.
pub const SYNC_ADMIN_SCOPE: &str = "kap/sync.admin";

pub use crate::fhir::labels::{PSY_CODE, PSY_SYSTEM, is_psychotherapy};

/// Who is calling and what they may do.
#[derive(Debug, Clone)]
pub struct Access {
    pub client_id: String,
    /// The user's name for user tokens, the client id for backend services.
    pub subject: String,
    pub scopes: ScopeSet,
    /// Launch patient (patient-context scopes are limited to this patient's compartment).
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub fhir_user: Option<String>,
    /// May see resources labelled PSY.
    pub psychotherapy: bool,
    /// May read AuditEvents and use administrative endpoints.
    pub admin: bool,
    /// Token id (for audit and revocation), when the token has one.
    pub jti: Option<String>,
}

/// A permitted interaction on one type, with the restrictions that come with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// Only this patient's compartment.
    pub compartment: Option<String>,
    /// Granular restrictions (ORed search-parameter sets); empty = none.
    pub queries: Vec<Vec<(String, String)>>,
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "create",
        Op::Read => "read",
        Op::Update => "update",
        Op::Delete => "delete",
        Op::Search => "search",
    }
}

impl Access {
    /// Full access for the gateway's own work (start-up loading, tests of the store). Never built from a request.
    pub fn internal() -> Access {
        Access {
            client_id: "kap-gateway".into(),
            subject: "kap-gateway".into(),
            scopes: ScopeSet::parse(&format!(
                "system/*.cruds system/AuditEvent.rs {PSYCHOTHERAPY_SCOPE}"
            ))
            .unwrap_or_default(),
            patient: None,
            encounter: None,
            fhir_user: None,
            psychotherapy: true,
            admin: true,
            jti: None,
        }
    }

    /// What this token may do with `op` on `resource_type`, or 403.
    pub fn permit(&self, resource_type: &str, op: Op) -> Result<Permit, Error> {
        let denied = |why: String| {
            let mut e =
                Error::with_issues(ErrorKind::Forbidden, vec![Issue::error("forbidden", why)]);
            e.www_authenticate =
                Some("Bearer realm=\"kap-gateway\", error=\"insufficient_scope\"".into());
            e
        };
        // Audit trails are for auditors: a wildcard scope is not enough.
        if resource_type == "AuditEvent" && matches!(op, Op::Read | Op::Search) && !self.admin {
            let explicit = self.scopes.resource_scopes().any(|s| {
                s.context == crate::auth::scopes::ScopeContext::System
                    && s.resource_type.as_deref() == Some("AuditEvent")
                    && s.allows("AuditEvent", op)
            });
            if !explicit {
                return Err(denied(
                    "Reading AuditEvent requires system/AuditEvent.rs or an admin role".into(),
                ));
            }
        }
        let Grant {
            patient_only,
            queries,
        } = self.scopes.grant(resource_type, op).ok_or_else(|| {
            denied(format!(
                "The access token's scopes do not allow {} on {resource_type}",
                op_name(op)
            ))
        })?;
        let compartment = if patient_only {
            Some(self.patient.clone().ok_or_else(|| {
                denied("The token has patient-context scopes but no patient in context".into())
            })?)
        } else {
            None
        };
        Ok(Permit {
            compartment,
            queries,
        })
    }

    /// True if the token may see this resource's security labels (PSY needs the psychotherapy permission).
    pub fn may_see_labels(&self, resource: &serde_json::Value) -> bool {
        self.psychotherapy || !is_psychotherapy(resource)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn access(scopes: &str, patient: Option<&str>) -> Access {
        Access {
            client_id: "c".into(),
            subject: "u".into(),
            scopes: ScopeSet::parse(scopes).unwrap(),
            patient: patient.map(str::to_owned),
            encounter: None,
            fhir_user: None,
            psychotherapy: false,
            admin: false,
            jti: None,
        }
    }

    #[test]
    fn patient_scopes_permit_only_the_launch_patients_compartment() {
        let a = access("patient/Observation.rs", Some("p1"));
        assert_eq!(
            a.permit("Observation", Op::Read)
                .unwrap()
                .compartment
                .as_deref(),
            Some("p1")
        );
        assert_eq!(
            a.permit("Observation", Op::Create).unwrap_err().status(),
            403
        );
        let no_patient = access("patient/Observation.rs", None);
        assert_eq!(
            no_patient
                .permit("Observation", Op::Read)
                .unwrap_err()
                .status(),
            403
        );
    }

    #[test]
    fn audit_events_need_an_explicit_system_scope_or_admin() {
        assert!(
            access("system/*.rs", None)
                .permit("AuditEvent", Op::Search)
                .is_err()
        );
        assert!(
            access("system/AuditEvent.rs", None)
                .permit("AuditEvent", Op::Search)
                .is_ok()
        );
        let mut admin = access("user/*.rs", None);
        admin.admin = true;
        assert!(admin.permit("AuditEvent", Op::Read).is_ok());
    }

    #[test]
    fn psychotherapy_notes_are_recognised_by_their_label() {
        let note = serde_json::json!({"resourceType": "Observation", "meta": {"security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
            {"system": PSY_SYSTEM, "code": "PSY"}]}});
        assert!(is_psychotherapy(&note));
        assert!(!access("user/*.rs", None).may_see_labels(&note));
    }
}
