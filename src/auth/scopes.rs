//! SMART on FHIR scopes, v1 (`patient/Observation.read`, `user/*.write`, `system/*.*`) and v2
//! (`patient/Observation.rs`, `.cruds`, granular `?category=…`), and what they permit
//! (https://hl7.org/fhir/smart-app-launch/STU2.2/scopes-and-launch-context.html).

use std::fmt;

/// Whose data a scope is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeContext {
    /// Only the launch patient's compartment.
    Patient,
    /// Whatever the signed-in user may see.
    User,
    /// A backend service acting for itself.
    System,
}

impl ScopeContext {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        }
    }
}

/// A FHIR operation class as SMART v2 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Op {
    fn letter(self) -> char {
        match self {
            Op::Create => 'c',
            Op::Read => 'r',
            Op::Update => 'u',
            Op::Delete => 'd',
            Op::Search => 's',
        }
    }
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: ScopeContext,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    /// Subset of "cruds", in that order.
    pub permissions: String,
    /// Granular restriction (`?category=…`), as search parameters.
    pub query: Vec<(String, String)>,
    /// The scope as it was written (v1 spelling is kept so it can be echoed back).
    pub text: String,
}

impl ResourceScope {
    pub fn allows(&self, resource_type: &str, op: Op) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|t| t == resource_type)
            && self.permissions.contains(op.letter())
    }

    /// True when `other` grants nothing beyond `self` (used to let a refresh or consent only narrow scopes).
    pub fn covers(&self, other: &ResourceScope) -> bool {
        self.context == other.context
            && (self.resource_type.is_none() || self.resource_type == other.resource_type)
            && other
                .permissions
                .chars()
                .all(|c| self.permissions.contains(c))
            && (self.query.is_empty() || self.query == other.query)
    }
}

/// Any scope: a resource scope or a bare one (`openid`, `fhirUser`, `launch/patient`, `offline_access`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Resource(ResourceScope),
    Other(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(r) => f.write_str(&r.text),
            Scope::Other(s) => f.write_str(s),
        }
    }
}

/// Why a scope string is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid SMART scope")]
pub struct InvalidScope(pub String);

fn v2_permissions(p: &str) -> Option<String> {
    if p.is_empty() {
        return None;
    }
    // Letters must appear in c r u d s order, each at most once.
    let order = "cruds";
    let mut last = None;
    for c in p.chars() {
        let pos = order.find(c)?;
        if last.is_some_and(|l| pos <= l) {
            return None;
        }
        last = Some(pos);
    }
    Some(p.to_owned())
}

/// Parses one scope token.
pub fn parse_scope(text: &str) -> Result<Scope, InvalidScope> {
    let invalid = || InvalidScope(text.to_owned());
    let Some((ctx, rest)) = text.split_once('/') else {
        return Ok(Scope::Other(text.to_owned()));
    };
    let context = match ctx {
        "patient" => ScopeContext::Patient,
        "user" => ScopeContext::User,
        "system" => ScopeContext::System,
        // launch/patient, launch/encounter and similar.
        _ => return Ok(Scope::Other(text.to_owned())),
    };
    let (body, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (ty, perm) = body.split_once('.').ok_or_else(invalid)?;
    if ty.is_empty() || !(ty == "*" || ty.chars().all(|c| c.is_ascii_alphanumeric())) {
        return Err(invalid());
    }
    let permissions = match perm {
        "read" => "rs".to_owned(),
        "write" => "cud".to_owned(),
        "*" => "cruds".to_owned(),
        other => v2_permissions(other).ok_or_else(invalid)?,
    };
    let query: Vec<(String, String)> = match query {
        Some(q) => url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect(),
        None => Vec::new(),
    };
    Ok(Scope::Resource(ResourceScope {
        context,
        resource_type: (ty != "*").then(|| ty.to_owned()),
        permissions,
        query,
        text: text.to_owned(),
    }))
}

/// A set of granted scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    pub scopes: Vec<Scope>,
}

/// What a token may do with one resource type and operation: unrestricted, or only within a patient's
/// compartment and/or only resources matching one of the granular queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// True when some granting scope is `patient/…` and none is `user/…` or `system/…`.
    pub patient_only: bool,
    /// Alternative granular restrictions (ORed); empty means none.
    pub queries: Vec<Vec<(String, String)>>,
}

impl ScopeSet {
    /// Parses a space-separated scope string; unknown bare scopes are kept, malformed resource scopes are errors.
    pub fn parse(s: &str) -> Result<ScopeSet, InvalidScope> {
        let mut scopes = Vec::new();
        for token in s.split_whitespace() {
            let scope = parse_scope(token)?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(ScopeSet { scopes })
    }

    pub fn contains(&self, bare: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| matches!(s, Scope::Other(o) if o == bare))
    }

    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.scopes.iter().filter_map(|s| match s {
            Scope::Resource(r) => Some(r),
            Scope::Other(_) => None,
        })
    }

    /// The grant for `op` on `resource_type`, or `None` when no scope allows it.
    pub fn grant(&self, resource_type: &str, op: Op) -> Option<Grant> {
        let granting: Vec<&ResourceScope> = self
            .resource_scopes()
            .filter(|s| s.allows(resource_type, op))
            .collect();
        if granting.is_empty() {
            return None;
        }
        let unrestricted_context = granting.iter().any(|s| s.context != ScopeContext::Patient);
        // An unfiltered scope in the winning context makes the granular ones irrelevant.
        let relevant: Vec<&&ResourceScope> = granting
            .iter()
            .filter(|s| !unrestricted_context || s.context != ScopeContext::Patient)
            .collect();
        let queries = if relevant.iter().any(|s| s.query.is_empty()) {
            Vec::new()
        } else {
            relevant.iter().map(|s| s.query.clone()).collect()
        };
        Some(Grant {
            patient_only: !unrestricted_context,
            queries,
        })
    }

    /// True if any resource scope is in patient context (the token then needs a patient).
    pub fn has_patient_context(&self) -> bool {
        self.resource_scopes()
            .any(|s| s.context == ScopeContext::Patient)
    }

    /// Keeps only the scopes that `allowed` covers (resource scopes) or lists (bare scopes).
    pub fn narrowed_to(&self, allowed: &ScopeSet) -> ScopeSet {
        let scopes = self
            .scopes
            .iter()
            .filter(|s| match s {
                Scope::Resource(r) => allowed.resource_scopes().any(|a| a.covers(r)),
                Scope::Other(o) => allowed.contains(o),
            })
            .cloned()
            .collect();
        ScopeSet { scopes }
    }

    /// True when every scope here is within `other` (refresh may only narrow).
    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.narrowed_to(other).scopes.len() == self.scopes.len()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.scopes.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn v1_read_and_write_map_to_v2_letters() {
        let s = ScopeSet::parse("patient/Observation.read user/*.write system/*.*").unwrap();
        assert!(s.grant("Observation", Op::Read).is_some());
        assert!(s.grant("Observation", Op::Search).is_some());
        assert!(s.grant("Patient", Op::Create).is_some());
        assert!(s.grant("Patient", Op::Delete).is_some());
    }

    #[test]
    fn v2_letters_must_be_in_order_and_known() {
        assert!(parse_scope("patient/Observation.rs").is_ok());
        assert!(parse_scope("patient/Observation.cruds").is_ok());
        assert!(parse_scope("patient/Observation.sr").is_err());
        assert!(parse_scope("patient/Observation.x").is_err());
        assert!(parse_scope("patient/Observation").is_err());
    }

    #[test]
    fn a_patient_scope_alone_restricts_to_the_compartment() {
        let s = ScopeSet::parse("patient/Observation.rs").unwrap();
        let g = s.grant("Observation", Op::Read).unwrap();
        assert!(g.patient_only);
        assert!(s.grant("Observation", Op::Create).is_none());
        assert!(s.grant("Condition", Op::Read).is_none());
        let both = ScopeSet::parse("patient/Observation.rs user/Observation.rs").unwrap();
        assert!(!both.grant("Observation", Op::Read).unwrap().patient_only);
    }

    #[test]
    fn granular_scopes_carry_their_query_unless_an_unfiltered_scope_also_grants() {
        let s = ScopeSet::parse(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
        )
        .unwrap();
        let g = s.grant("Observation", Op::Search).unwrap();
        assert_eq!(g.queries.len(), 1);
        assert_eq!(g.queries[0][0].0, "category");
        let wide =
            ScopeSet::parse("patient/Observation.rs?category=x patient/Observation.rs").unwrap();
        assert!(
            wide.grant("Observation", Op::Search)
                .unwrap()
                .queries
                .is_empty()
        );
    }

    #[test]
    fn narrowing_keeps_only_what_is_allowed() {
        let requested = ScopeSet::parse("patient/*.cruds openid fhirUser launch/patient").unwrap();
        let allowed = ScopeSet::parse("patient/*.rs openid launch/patient").unwrap();
        let granted = requested.narrowed_to(&allowed);
        assert_eq!(granted.to_string(), "openid launch/patient");
        let read = ScopeSet::parse("patient/Observation.rs").unwrap();
        assert_eq!(
            read.narrowed_to(&allowed).to_string(),
            "patient/Observation.rs"
        );
        assert!(read.is_subset_of(&allowed));
    }
}
