//! The CapabilityStatement, generated from the registry and the server's interaction tables — never a
//! hand-written claim (https://hl7.org/fhir/R4/capabilitystatement.html).

use serde_json::{Value, json};

use crate::fhir::registry::{self, SUPPORTED_TYPES};

/// Type-level interactions the REST layer implements for every supported type (each has a route and a test).
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// System-level interactions.
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "history-system"];

/// What the running server adds to the statement beyond the registry.
#[derive(Debug, Clone, Default)]
pub struct CapabilityInput {
    pub base_url: String,
    pub software_version: String,
    /// Extra `rest.security` JSON (SMART), when the authorization layer provides it.
    pub security: Option<Value>,
    /// Operations per type: (type, name, canonical definition URL).
    pub type_operations: Vec<(String, String, String)>,
    /// System operations: (name, canonical definition URL).
    pub system_operations: Vec<(String, String)>,
    /// Profiles supported per type: (type, canonical URL).
    pub supported_profiles: Vec<(String, String)>,
    /// Read-only conformance resource types served in addition to SUPPORTED_TYPES.
    pub read_only_types: Vec<String>,
}

fn search_params(resource_type: &str) -> Vec<Value> {
    let mut out = vec![
        json!({"name": "_id", "type": "token", "documentation": "Logical id of the resource"}),
        json!({"name": "_lastUpdated", "type": "date", "documentation": "When the resource version last changed"}),
    ];
    for p in registry::common_params()
        .iter()
        .chain(registry::type_params(resource_type).unwrap_or(&[]).iter())
    {
        if p.name == "_id" || p.name == "_lastUpdated" {
            continue;
        }
        out.push(json!({
            "name": p.name,
            "definition": format!("http://hl7.org/fhir/SearchParameter/{}-{}", if p.name.starts_with('_') { "Resource" } else { resource_type }, p.name.trim_start_matches('_')),
            "type": p.kind.as_str(),
            "documentation": p.description,
        }));
    }
    out
}

/// AuditEvents are the server's append-only audit trail (`store::audit`): read, vread and search on the parameters
/// it keeps, nothing else.
fn audit_event_capability(r: &mut Value) {
    let Some(obj) = r.as_object_mut() else {
        return;
    };
    obj.insert(
        "interaction".into(),
        json!([{"code": "read"}, {"code": "vread"}, {"code": "search-type"}]),
    );
    for key in [
        "versioning",
        "updateCreate",
        "conditionalCreate",
        "conditionalUpdate",
        "conditionalDelete",
    ] {
        obj.remove(key);
    }
    obj.insert("readHistory".into(), json!(false));
    obj.insert("searchInclude".into(), json!([]));
    if let Some(Value::Array(params)) = obj.get_mut("searchParam") {
        params.retain(|p| {
            p["name"].as_str().is_some_and(|n| {
                n == "_id" || n == "_lastUpdated" || crate::store::audit::SEARCH_PARAMS.contains(&n)
            })
        });
    }
}

/// Builds the statement.
pub fn capability_statement(input: &CapabilityInput) -> Value {
    let mut resources: Vec<Value> = Vec::new();
    for t in SUPPORTED_TYPES {
        let mut includes: Vec<String> = registry::type_params(t)
            .unwrap_or(&[])
            .iter()
            .filter(|p| p.kind == registry::ParamKind::Reference)
            .map(|p| format!("{t}:{}", p.name))
            .collect();
        includes.sort();
        let revincludes: Vec<String> = SUPPORTED_TYPES
            .iter()
            // AuditEvents live in the audit trail, outside the resource store: they cannot be revincluded.
            .filter(|src| **src != "AuditEvent")
            .flat_map(|src| {
                registry::type_params(src)
                    .unwrap_or(&[])
                    .iter()
                    .filter(|p| {
                        p.kind == registry::ParamKind::Reference
                            && (p.targets.is_empty() || p.targets.contains(t))
                    })
                    .map(move |p| format!("{src}:{}", p.name))
            })
            .collect();
        let mut r = json!({
            "type": t,
            "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
            "interaction": TYPE_INTERACTIONS.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
            "versioning": "versioned-update",
            "readHistory": true,
            "updateCreate": true,
            "conditionalCreate": true,
            "conditionalRead": "not-supported",
            "conditionalUpdate": true,
            "conditionalDelete": "single",
            "referencePolicy": ["literal", "logical"],
            "searchInclude": includes,
            "searchRevInclude": revincludes,
            "searchParam": search_params(t),
        });
        if *t == "AuditEvent" {
            audit_event_capability(&mut r);
        }
        let profiles: Vec<&String> = input
            .supported_profiles
            .iter()
            .filter(|(ty, _)| ty == t)
            .map(|(_, url)| url)
            .collect();
        if let Some(obj) = r.as_object_mut() {
            if !profiles.is_empty() {
                obj.insert("supportedProfile".into(), json!(profiles));
            }
            let ops: Vec<Value> = input
                .type_operations
                .iter()
                .filter(|(ty, _, _)| ty == t)
                .map(|(_, name, def)| json!({"name": name, "definition": def}))
                .collect();
            if !ops.is_empty() {
                obj.insert("operation".into(), Value::Array(ops));
            }
        }
        resources.push(r);
    }
    for t in &input.read_only_types {
        resources.push(json!({
            "type": t,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": "url", "type": "uri"}],
        }));
    }
    let mut rest = json!({
        "mode": "server",
        "documentation": "FHIR R4 server of kap-gateway",
        "resource": resources,
        "interaction": SYSTEM_INTERACTIONS.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
    });
    if let Some(obj) = rest.as_object_mut() {
        if let Some(sec) = &input.security {
            obj.insert("security".into(), sec.clone());
        }
        if !input.system_operations.is_empty() {
            obj.insert(
                "operation".into(),
                Value::Array(
                    input
                        .system_operations
                        .iter()
                        .map(|(name, def)| json!({"name": name, "definition": def}))
                        .collect(),
                ),
            );
        }
    }
    let bulk = input
        .system_operations
        .iter()
        .any(|(name, _)| name == "export");
    let mut statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::fhir::datetime::format_instant(crate::fhir::datetime::now_micros()),
        "publisher": "kap-gateway",
        "kind": "instance",
        "software": { "name": "kap-gateway", "version": input.software_version },
        "implementation": { "description": "kap-gateway FHIR R4 server", "url": input.base_url },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [rest],
    });
    if bulk && let Some(obj) = statement.as_object_mut() {
        obj.insert(
            "instantiates".into(),
            json!(["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]),
        );
    }
    statement
}
