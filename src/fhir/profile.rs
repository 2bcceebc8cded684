//! Validation against the kap-gateway profiles in `profiles/` (https://hl7.org/fhir/R4/profiling.html,
//! https://hl7.org/fhir/R4/validation.html#profile), from each StructureDefinition's snapshot.
//!
//! The conformance resources are embedded in the binary, so a running server always checks against the
//! definitions it was built with and serves exactly those. What a profile check covers:
//!
//! - cardinality of every element of the snapshot, nested elements only under a present parent, counted over
//!   array elements; choice elements (`value[x]`) by name prefix and type suffix, restricted to the types the
//!   profile allows;
//! - `fixed[x]` (exact equality) and `pattern[x]` (the instance contains the pattern: every property of the
//!   pattern is present, every array entry of the pattern matches some entry of the instance);
//! - required bindings to the value sets defined in `profiles/` (see [`Library::value_set`]);
//! - the resource type of references whose element names target profiles (a kap profile means its base type);
//! - slices by `url` (extensions, then checked against the extension's own definition) or by a pattern on a
//!   child (`component.code`): slice cardinality, closed slicing, and each slice's own constraints;
//! - the `kap-*` invariants, each by a hand-written check (FHIRPath is not evaluated in general).
//!
//! Not covered: FHIRPath constraints other than `kap-*` (the base `ele-1`, `obs-6`, …), bindings other than
//! required ones or to value sets defined elsewhere, whether a referenced resource itself conforms to the
//! target profile (that needs the store), slices discriminated by type, profile or existence, and profiles
//! defined outside `profiles/`. Pure: no HTTP, no database.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::fhir::validate::{IssueKind, ValidationIssue};

/// The canonical base of every conformance resource of the project.
pub const KAP_CANONICAL_BASE: &str = "http://kap-gateway.org/fhir/";

/// The conformance resource types the server serves, read-only, from `profiles/`.
pub const CONFORMANCE_TYPES: &[&str] = &["StructureDefinition", "CodeSystem", "ValueSet"];

/// Canonical URLs of core R4 definitions start with this; the rest is the type name.
const CORE_SD_BASE: &str = "http://hl7.org/fhir/StructureDefinition/";

/// Beyond this, more issues only bury the first ones.
const MAX_ISSUES: usize = 100;

/// Longest rendering of a JSON value inside a message.
const MAX_SHOWN_CHARS: usize = 120;

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../profiles/", $name)))),*]
    };
}

/// Every top-level JSON file of `profiles/`, by file name. A unit test fails when one is missing.
const SOURCES: &[(&str, &str)] = embedded![
    "CodeSystem-kap.json",
    "StructureDefinition-kap-adverse-event.json",
    "StructureDefinition-kap-body-weight-used.json",
    "StructureDefinition-kap-component-note.json",
    "StructureDefinition-kap-contraindication-screen.json",
    "StructureDefinition-kap-course-decision.json",
    "StructureDefinition-kap-course-reference.json",
    "StructureDefinition-kap-diagnosis.json",
    "StructureDefinition-kap-discharge.json",
    "StructureDefinition-kap-dose-per-kg.json",
    "StructureDefinition-kap-eligibility.json",
    "StructureDefinition-kap-goal.json",
    "StructureDefinition-kap-informed-consent.json",
    "StructureDefinition-kap-integration-note.json",
    "StructureDefinition-kap-ketamine-administration.json",
    "StructureDefinition-kap-patient.json",
    "StructureDefinition-kap-preparation-topics.json",
    "StructureDefinition-kap-provenance.json",
    "StructureDefinition-kap-score.json",
    "StructureDefinition-kap-session.json",
    "StructureDefinition-kap-set-and-setting.json",
    "StructureDefinition-kap-treatment-course.json",
    "StructureDefinition-kap-treatment-response.json",
    "StructureDefinition-kap-vital-sign.json",
    "ValueSet-kap-adverse-event-kinds.json",
    "ValueSet-kap-contraindication-items.json",
    "ValueSet-kap-course-decisions.json",
    "ValueSet-kap-discharge-components.json",
    "ValueSet-kap-eligibility.json",
    "ValueSet-kap-integration-note-components.json",
    "ValueSet-kap-ketamine-medications.json",
    "ValueSet-kap-ketamine-routes.json",
    "ValueSet-kap-preparation-topics.json",
    "ValueSet-kap-provenance-activities.json",
    "ValueSet-kap-score-instruments.json",
    "ValueSet-kap-session-kinds.json",
    "ValueSet-kap-set-and-setting-components.json",
    "ValueSet-kap-vital-signs.json",
];

// ---------------------------------------------------------------------------------------------
// Public interface

/// Checks `resource` against the profile with canonical `profile_url` (optionally `url|version`) and returns
/// every issue found, each with the FHIRPath of the element concerned. An unknown profile, an extension
/// definition or a profile of another resource type is itself an issue.
pub fn validate_against_profile(
    resource: &Value,
    profile_url: &str,
) -> Result<(), Vec<ValidationIssue>> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource");
    let claim = claim_path(resource, resource_type, profile_url);
    let mut walker = Walker {
        root: resource,
        issues: Vec::new(),
    };
    match LIBRARY.profile(profile_url) {
        None => walker.push(
            IssueKind::NotSupported,
            claim,
            format!(
                "Profile {profile_url} is not one of the kap-gateway profiles known to this server"
            ),
        ),
        Some(p) if p.kind != "resource" => walker.push(
            IssueKind::Invalid,
            claim,
            if p.type_name == "Extension" {
                format!("{profile_url} defines an extension, not a resource profile")
            } else {
                format!(
                    "{profile_url} defines {} {}, not a resource profile",
                    article(&p.type_name),
                    p.type_name
                )
            },
        ),
        Some(p) if p.type_name != resource_type => walker.push(
            IssueKind::Invalid,
            claim,
            format!(
                "Profile {} applies to {} resources, not to {resource_type}",
                p.id, p.type_name
            ),
        ),
        Some(p) => match p.root {
            Some(root) => walker.item(
                p,
                root,
                Item {
                    value: Some(resource),
                    type_code: None,
                    path: resource_type.to_owned(),
                },
            ),
            None => walker.push(
                IssueKind::NotSupported,
                claim,
                format!("Profile {} has no root element in its snapshot", p.id),
            ),
        },
    }
    walker.finish()
}

/// The entries of `meta.profile` under the kap canonical base, in order and without repeats. Unknown kap
/// profile URLs are included: checking them reports them as issues.
pub fn claimed_kap_profiles(resource: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let claims = resource
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array);
    for url in claims.into_iter().flatten().filter_map(Value::as_str) {
        if url.starts_with(KAP_CANONICAL_BASE) && !out.contains(&url) {
            out.push(url);
        }
    }
    out
}

/// Checks `resource` against every kap profile it claims in `meta.profile`; a resource that claims none
/// passes. Profiles of other publishers are not checked (they are not defined here).
pub fn validate_claimed_profiles(resource: &Value) -> Result<(), Vec<ValidationIssue>> {
    let mut issues = Vec::new();
    for url in claimed_kap_profiles(resource) {
        if let Err(found) = validate_against_profile(resource, url) {
            issues.extend(found);
        }
    }
    issues.truncate(MAX_ISSUES);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

/// Every embedded conformance resource (StructureDefinitions, the CodeSystem, ValueSets), as served.
pub fn conformance_resources() -> impl Iterator<Item = &'static Value> {
    LIBRARY.resources.iter()
}

/// The resource profiles (not the extensions): (base resource type, canonical URL), in file order.
pub fn resource_profiles() -> impl Iterator<Item = (&'static str, &'static str)> {
    LIBRARY
        .profile_order
        .iter()
        .filter_map(|i| LIBRARY.profiles.get(i))
        .filter(|p| p.kind == "resource")
        .map(|p| (p.type_name.as_str(), p.url.as_str()))
}

/// Problems met while loading the embedded files (empty when all is well; a unit test makes sure).
pub fn load_problems() -> &'static [String] {
    &LIBRARY.problems
}

// ---------------------------------------------------------------------------------------------
// The loaded library

static LIBRARY: LazyLock<Library> = LazyLock::new(Library::load);

#[derive(Default)]
struct Library {
    resources: Vec<Value>,
    /// `url` and `url|version` → index into `resources`.
    canonical: HashMap<String, usize>,
    /// StructureDefinitions by index into `resources`.
    profiles: HashMap<usize, Profile>,
    profile_order: Vec<usize>,
    /// Expanded value sets by index into `resources`; `None` when the compose cannot be expanded here.
    value_sets: HashMap<usize, Option<HashSet<(String, String)>>>,
    problems: Vec<String>,
}

struct Profile {
    id: String,
    url: String,
    kind: String,
    type_name: String,
    elements: Vec<ElementDef>,
    /// Parent element id → its child elements (slices included), in snapshot order.
    children: HashMap<String, Vec<usize>>,
    by_id: HashMap<String, usize>,
    root: Option<usize>,
}

struct ElementDef {
    id: String,
    /// The last path segment without slice name: `value[x]`, `extension`, `code`.
    name: String,
    slice: Option<String>,
    min: u64,
    /// `None` is `*`.
    max: Option<u64>,
    types: Vec<TypeDef>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    /// The value set of a required binding.
    required_vs: Option<String>,
    slicing: Option<Slicing>,
    /// `kap-*` invariants: (key, human description).
    invariants: Vec<(String, String)>,
}

struct TypeDef {
    code: String,
    target_profiles: Vec<String>,
    profiles: Vec<String>,
}

struct Slicing {
    /// (type, path) of each discriminator.
    discriminators: Vec<(String, String)>,
    closed: bool,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn without_version(canonical: &str) -> &str {
    canonical.split('|').next().unwrap_or(canonical)
}

impl Library {
    fn load() -> Library {
        let mut lib = Library::default();
        for (name, source) in SOURCES {
            match serde_json::from_str::<Value>(source) {
                Ok(v) => lib.resources.push(v),
                Err(e) => lib.problems.push(format!("{name} is not valid JSON: {e}")),
            }
        }
        for (i, r) in lib.resources.iter().enumerate() {
            let Some(url) = text(r, "url") else {
                lib.problems.push(format!(
                    "{}/{} has no url",
                    text(r, "resourceType").unwrap_or("?"),
                    text(r, "id").unwrap_or("?")
                ));
                continue;
            };
            lib.canonical.insert(url.to_owned(), i);
            if let Some(version) = text(r, "version") {
                lib.canonical.insert(format!("{url}|{version}"), i);
            }
        }
        let mut profiles = HashMap::new();
        let mut value_sets = HashMap::new();
        for (i, r) in lib.resources.iter().enumerate() {
            match text(r, "resourceType") {
                Some("StructureDefinition") => match Profile::parse(r) {
                    Ok(p) => {
                        profiles.insert(i, p);
                        lib.profile_order.push(i);
                    }
                    Err(why) => lib.problems.push(why),
                },
                Some("ValueSet") => {
                    value_sets.insert(i, lib.expand(r));
                }
                _ => {}
            }
        }
        lib.profiles = profiles;
        lib.value_sets = value_sets;
        lib
    }

    fn resolve(&self, canonical: &str) -> Option<usize> {
        self.canonical.get(canonical).copied()
    }

    fn profile(&self, canonical: &str) -> Option<&Profile> {
        self.resolve(canonical).and_then(|i| self.profiles.get(&i))
    }

    /// The codes of a value set defined in `profiles/`, with its id for messages. `None` for a value set defined
    /// elsewhere (such as the R4 `adverse-event-severity`), or one whose compose cannot be expanded here (filters,
    /// imported value sets, whole external code systems): bindings to those are not checked.
    fn value_set(&self, canonical: &str) -> Option<(&str, &HashSet<(String, String)>)> {
        let i = self
            .resolve(canonical)
            .or_else(|| self.resolve(without_version(canonical)))?;
        let codes = self.value_sets.get(&i)?.as_ref()?;
        let id = self
            .resources
            .get(i)
            .and_then(|r| text(r, "id"))
            .unwrap_or("(without id)");
        Some((id, codes))
    }

    /// Expands `compose`: explicit concept lists as (system, code); a whole-system include only for a code system
    /// defined here (the kap one); excludes with concept lists are removed.
    fn expand(&self, vs: &Value) -> Option<HashSet<(String, String)>> {
        let compose = vs.get("compose")?;
        let mut codes = HashSet::new();
        for include in compose.get("include")?.as_array()? {
            if include.get("filter").is_some() || include.get("valueSet").is_some() {
                return None;
            }
            let system = text(include, "system")?;
            match include.get("concept").and_then(Value::as_array) {
                Some(list) => {
                    for c in list {
                        codes.insert((system.to_owned(), text(c, "code")?.to_owned()));
                    }
                }
                None => {
                    let cs = self.resources.get(self.resolve(system)?)?;
                    if text(cs, "resourceType") != Some("CodeSystem") {
                        return None;
                    }
                    let mut all = Vec::new();
                    collect_concepts(cs.get("concept"), &mut all);
                    codes.extend(all.into_iter().map(|c| (system.to_owned(), c)));
                }
            }
        }
        for exclude in compose
            .get("exclude")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let system = text(exclude, "system")?;
            for c in exclude.get("concept")?.as_array()? {
                codes.remove(&(system.to_owned(), text(c, "code")?.to_owned()));
            }
        }
        Some(codes)
    }
}

/// Every code of a (possibly hierarchical) concept list.
fn collect_concepts(concepts: Option<&Value>, out: &mut Vec<String>) {
    for c in concepts.and_then(Value::as_array).into_iter().flatten() {
        if let Some(code) = text(c, "code") {
            out.push(code.to_owned());
        }
        collect_concepts(c.get("concept"), out);
    }
}

impl Profile {
    fn parse(sd: &Value) -> Result<Profile, String> {
        let id = text(sd, "id").unwrap_or("?").to_owned();
        let field = |key: &str| {
            text(sd, key)
                .map(str::to_owned)
                .ok_or_else(|| format!("StructureDefinition {id} has no {key}"))
        };
        let url = field("url")?;
        let kind = field("kind")?;
        let type_name = field("type")?;
        let snapshot = sd
            .get("snapshot")
            .and_then(|s| s.get("element"))
            .and_then(Value::as_array)
            .ok_or_else(|| format!("StructureDefinition {id} has no snapshot"))?;
        let mut elements = Vec::with_capacity(snapshot.len());
        for e in snapshot {
            elements.push(ElementDef::parse(e).map_err(|why| format!("{id}: {why}"))?);
        }
        let mut children: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_id = HashMap::new();
        let mut root = None;
        for (i, e) in elements.iter().enumerate() {
            by_id.insert(e.id.clone(), i);
            match e.id.rsplit_once('.') {
                Some((parent, _)) => children.entry(parent.to_owned()).or_default().push(i),
                None if e.id == type_name => root = Some(i),
                None => {}
            }
        }
        Ok(Profile {
            id,
            url,
            kind,
            type_name,
            elements,
            children,
            by_id,
            root,
        })
    }
}

impl ElementDef {
    fn parse(e: &Value) -> Result<ElementDef, String> {
        let id = text(e, "id").ok_or("an element has no id")?.to_owned();
        let last = id.rsplit('.').next().unwrap_or(&id);
        let (name, slice) = match last.split_once(':') {
            Some((n, s)) => (n.to_owned(), Some(s.to_owned())),
            None => (last.to_owned(), None),
        };
        let min = e.get("min").and_then(Value::as_u64).unwrap_or(0);
        let max = match text(e, "max") {
            None | Some("*") => None,
            Some(m) => Some(
                m.parse::<u64>()
                    .map_err(|_| format!("{id} has max '{m}', which is not a number or *"))?,
            ),
        };
        let types = e
            .get("type")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                Some(TypeDef {
                    code: text(t, "code")?.to_owned(),
                    target_profiles: strings(t.get("targetProfile")),
                    profiles: strings(t.get("profile")),
                })
            })
            .collect();
        let mut fixed = None;
        let mut pattern = None;
        if let Some(obj) = e.as_object() {
            for (k, v) in obj {
                if k.starts_with("fixed") {
                    fixed = Some(v.clone());
                } else if k.starts_with("pattern") {
                    pattern = Some(v.clone());
                }
            }
        }
        let required_vs = e
            .get("binding")
            .filter(|b| text(b, "strength") == Some("required"))
            .and_then(|b| text(b, "valueSet"))
            .map(str::to_owned);
        let slicing = e.get("slicing").map(|s| Slicing {
            discriminators: s
                .get("discriminator")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|d| Some((text(d, "type")?.to_owned(), text(d, "path")?.to_owned())))
                .collect(),
            closed: text(s, "rules") == Some("closed"),
        });
        let invariants = e
            .get("constraint")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let key = text(c, "key")?;
                key.starts_with("kap-")
                    .then(|| (key.to_owned(), text(c, "human").unwrap_or("").to_owned()))
            })
            .collect();
        Ok(ElementDef {
            id,
            name,
            slice,
            min,
            max,
            types,
            fixed,
            pattern,
            required_vs,
            slicing,
            invariants,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The walk

/// One occurrence of an element in the instance.
struct Item<'r> {
    /// `None` for a primitive that has only its `_name` extension part.
    value: Option<&'r Value>,
    /// The FHIR type of the occurrence when known (the choice suffix, or the element's only type).
    type_code: Option<&'static str>,
    path: String,
}

struct Walker<'r> {
    /// The whole resource, to resolve `#id` references to contained resources.
    root: &'r Value,
    issues: Vec<ValidationIssue>,
}

impl<'r> Walker<'r> {
    fn push(&mut self, kind: IssueKind, expression: String, message: String) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(ValidationIssue {
                kind,
                expression,
                message,
            });
        }
    }

    fn finish(self) -> Result<(), Vec<ValidationIssue>> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(self.issues)
        }
    }

    /// Checks the children of element `id` against the JSON object that holds them.
    fn node(&mut self, p: &'static Profile, id: &str, obj: &'r Map<String, Value>, path: &str) {
        let Some(kids) = p.children.get(id) else {
            return;
        };
        let names: HashSet<&str> = kids
            .iter()
            .filter_map(|&k| p.elements.get(k))
            .map(|e| e.name.as_str())
            .collect();
        for &k in kids {
            let Some(e) = p.elements.get(k) else {
                continue;
            };
            if e.slice.is_some() {
                continue;
            }
            let slices: Vec<usize> = kids
                .iter()
                .copied()
                .filter(|&s| {
                    p.elements
                        .get(s)
                        .is_some_and(|se| se.name == e.name && se.slice.is_some())
                })
                .collect();
            self.element(p, k, &slices, obj, path, &names);
            if self.issues.len() >= MAX_ISSUES {
                return;
            }
        }
    }

    /// One element of the snapshot (with its slices) against its occurrences in `obj`.
    fn element(
        &mut self,
        p: &'static Profile,
        idx: usize,
        slices: &[usize],
        obj: &'r Map<String, Value>,
        path: &str,
        siblings: &HashSet<&str>,
    ) {
        let Some(e) = p.elements.get(idx) else {
            return;
        };
        let mut items: Vec<Item<'r>> = Vec::new();
        let shown: String;
        let count: usize;
        if let Some(stem) = e.name.strip_suffix("[x]") {
            shown = format!("{path}.{stem}");
            let mut keys: Vec<&str> = Vec::new();
            for k in obj.keys() {
                let bare = k.strip_prefix('_').unwrap_or(k);
                let is_choice = bare
                    .strip_prefix(stem)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()));
                if is_choice && !siblings.contains(bare) && !keys.contains(&bare) {
                    keys.push(bare);
                }
            }
            count = keys.len();
            for key in keys {
                let suffix = key.get(stem.len()..).unwrap_or("");
                let item_path = format!("{path}.{key}");
                match e.types.iter().find(|t| type_suffix(&t.code) == suffix) {
                    Some(t) => items.push(Item {
                        value: obj.get(key).filter(|v| !v.is_null()),
                        type_code: Some(t.code.as_str()),
                        path: item_path,
                    }),
                    None => {
                        let allowed: Vec<&str> = e.types.iter().map(|t| t.code.as_str()).collect();
                        self.push(
                            IssueKind::Structure,
                            item_path.clone(),
                            format!(
                                "{item_path} is not allowed by profile {}: {} may only be {}",
                                p.id,
                                e.name,
                                allowed.join(" or ")
                            ),
                        );
                    }
                }
            }
        } else {
            shown = format!("{path}.{}", e.name);
            let type_code = match e.types.as_slice() {
                [only] => Some(only.code.as_str()),
                _ => None,
            };
            match obj.get(&e.name) {
                Some(Value::Array(a)) => {
                    for (i, v) in a.iter().enumerate() {
                        items.push(Item {
                            value: (!v.is_null()).then_some(v),
                            type_code,
                            path: format!("{shown}[{i}]"),
                        });
                    }
                }
                Some(v) if !v.is_null() => items.push(Item {
                    value: Some(v),
                    type_code,
                    path: shown.clone(),
                }),
                _ => match obj.get(&format!("_{}", e.name)) {
                    Some(Value::Array(a)) => {
                        for i in 0..a.len() {
                            items.push(Item {
                                value: None,
                                type_code,
                                path: format!("{shown}[{i}]"),
                            });
                        }
                    }
                    None | Some(Value::Null) => {}
                    Some(_) => items.push(Item {
                        value: None,
                        type_code,
                        path: shown.clone(),
                    }),
                },
            }
            count = items.len();
        }
        self.cardinality(p, e, &shown, count, None);
        match (&e.slicing, slices.is_empty()) {
            (Some(slicing), false) => self.sliced(p, idx, slicing, slices, items, &shown),
            _ => {
                for item in items {
                    self.item(p, idx, item);
                }
            }
        }
    }

    fn cardinality(
        &mut self,
        p: &Profile,
        e: &ElementDef,
        shown: &str,
        count: usize,
        slice: Option<&str>,
    ) {
        let what = match slice {
            Some(s) => format!("{shown} (slice {s})"),
            None => shown.to_owned(),
        };
        let n = count as u64;
        if n < e.min {
            let message = if count == 0 {
                format!(
                    "{what} is required by profile {} (min {}) but is missing",
                    p.id, e.min
                )
            } else {
                format!(
                    "{what} has {count} element(s); profile {} requires at least {}",
                    p.id, e.min
                )
            };
            self.push(IssueKind::Required, shown.to_owned(), message);
        }
        if let Some(max) = e.max
            && n > max
        {
            let message = if max == 0 {
                format!("{what} is not allowed by profile {} (max 0)", p.id)
            } else {
                format!(
                    "{what} has {count} elements; profile {} allows at most {max}",
                    p.id
                )
            };
            self.push(IssueKind::Structure, shown.to_owned(), message);
        }
    }

    /// Assigns each occurrence to the first slice it matches, checks it against that slice (or the base element
    /// when it matches none), then each slice's cardinality.
    fn sliced(
        &mut self,
        p: &'static Profile,
        base: usize,
        slicing: &Slicing,
        slices: &[usize],
        items: Vec<Item<'r>>,
        shown: &str,
    ) {
        let mut counts = vec![0usize; slices.len()];
        for item in items {
            let which = item.value.and_then(|v| {
                slices.iter().position(|&s| {
                    p.elements
                        .get(s)
                        .is_some_and(|se| slice_matches(p, slicing, se, v))
                })
            });
            match which {
                Some(k) => {
                    if let Some(c) = counts.get_mut(k) {
                        *c += 1;
                    }
                    if let Some(&s) = slices.get(k) {
                        self.item(p, s, item);
                    }
                }
                None => {
                    if slicing.closed {
                        let names: Vec<&str> = slices
                            .iter()
                            .filter_map(|&s| p.elements.get(s).and_then(|se| se.slice.as_deref()))
                            .collect();
                        self.push(
                            IssueKind::Structure,
                            item.path.clone(),
                            format!(
                                "{} matches none of the slices {} of profile {}, whose slicing is closed",
                                item.path,
                                names.join(", "),
                                p.id
                            ),
                        );
                    }
                    self.item(p, base, item);
                }
            }
        }
        for (k, &s) in slices.iter().enumerate() {
            if let Some(se) = p.elements.get(s) {
                let n = counts.get(k).copied().unwrap_or(0);
                self.cardinality(p, se, shown, n, se.slice.as_deref());
            }
        }
    }

    /// One occurrence against its element definition: fixed, pattern, binding, reference type, extension
    /// definition, invariants, then its children.
    fn item(&mut self, p: &'static Profile, idx: usize, item: Item<'r>) {
        let Some(e) = p.elements.get(idx) else {
            return;
        };
        let Some(v) = item.value else {
            return;
        };
        let path = item.path.as_str();
        if let Some(fixed) = &e.fixed
            && !json_equal(v, fixed)
        {
            self.push(
                IssueKind::Value,
                path.to_owned(),
                format!(
                    "{path} is {} but profile {} fixes it to {}",
                    shown(v),
                    p.id,
                    shown(fixed)
                ),
            );
        }
        if let Some(pattern) = &e.pattern
            && let Some((at, what)) = first_mismatch(v, pattern, path)
        {
            self.push(
                IssueKind::Value,
                at.clone(),
                format!(
                    "{at} {what}: profile {} requires {path} to match {}",
                    p.id,
                    shown(pattern)
                ),
            );
        }
        self.binding(p, e, item.type_code, v, path);
        self.reference(p, e, item.type_code, v, path);
        self.invariants(p, e, v, path);
        if item.type_code == Some("Extension")
            && let Some(url) = e.types.first().and_then(|t| t.profiles.first())
            && let Some(ext) = LIBRARY.profile(url)
            && let Some(root) = ext.root
        {
            // Extensions defined elsewhere are not known here and stay unchecked.
            self.item(
                ext,
                root,
                Item {
                    value: Some(v),
                    type_code: None,
                    path: item.path.clone(),
                },
            );
        }
        if let Value::Object(obj) = v {
            self.node(p, &e.id, obj, path);
        }
    }

    fn binding(
        &mut self,
        p: &Profile,
        e: &ElementDef,
        type_code: Option<&str>,
        v: &Value,
        path: &str,
    ) {
        let Some(vs) = &e.required_vs else {
            return;
        };
        let Some((vs_id, codes)) = LIBRARY.value_set(vs) else {
            return;
        };
        match type_code {
            Some("code") => {
                if let Some(code) = v.as_str()
                    && !codes.iter().any(|(_, c)| c == code)
                {
                    self.push(
                        IssueKind::Value,
                        path.to_owned(),
                        format!(
                            "{path} is '{code}', which is not in value set {vs_id} (required binding of profile {})",
                            p.id
                        ),
                    );
                }
            }
            Some("Coding") if !coding_in(v, codes) => {
                self.push(
                    IssueKind::Value,
                    path.to_owned(),
                    format!(
                        "{path} ({}) is not in value set {vs_id} (required binding of profile {})",
                        describe_coding(v),
                        p.id
                    ),
                );
            }
            Some("CodeableConcept") => {
                let codings: Vec<&Value> = v
                    .get("coding")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().collect())
                    .unwrap_or_default();
                if !codings.iter().any(|c| coding_in(c, codes)) {
                    let at = if codings.len() == 1 {
                        format!("{path}.coding[0]")
                    } else {
                        path.to_owned()
                    };
                    let found = if codings.is_empty() {
                        "no coding".to_owned()
                    } else {
                        codings
                            .iter()
                            .map(|c| describe_coding(c))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    self.push(
                        IssueKind::Value,
                        at,
                        format!(
                            "{path} has no coding from value set {vs_id}, required by profile {} (found {found})",
                            p.id
                        ),
                    );
                }
            }
            // Bindings apply to coded types only; a valueString under a bound value[x] is not coded.
            _ => {}
        }
    }

    fn reference(
        &mut self,
        p: &Profile,
        e: &ElementDef,
        type_code: Option<&str>,
        v: &Value,
        path: &str,
    ) {
        if type_code != Some("Reference") {
            return;
        }
        let Some(t) = e.types.iter().find(|t| t.code == "Reference") else {
            return;
        };
        // (resource type, how the profile names it)
        let mut allowed: Vec<(&str, String)> = Vec::new();
        for target in &t.target_profiles {
            let target = without_version(target);
            if let Some(core) = target.strip_prefix(CORE_SD_BASE) {
                if core == "Resource" {
                    return;
                }
                allowed.push((core, core.to_owned()));
            } else if let Some(kp) = LIBRARY.profile(target) {
                allowed.push((
                    kp.type_name.as_str(),
                    format!("{} ({})", kp.type_name, kp.id),
                ));
            } else {
                // A profile defined elsewhere: its resource type is not known here.
                return;
            }
        }
        if allowed.is_empty() {
            return;
        }
        let from_reference = text(v, "reference").and_then(|r| referenced_type(self.root, r));
        let (actual, at) = match (from_reference, text(v, "type")) {
            (Some(t), _) => (t, format!("{path}.reference")),
            (None, Some(t)) => (t, format!("{path}.type")),
            (None, None) => return,
        };
        if !allowed.iter().any(|(t, _)| *t == actual) {
            let names: Vec<&str> = allowed.iter().map(|(_, n)| n.as_str()).collect();
            self.push(
                IssueKind::Value,
                at,
                format!(
                    "{path} refers to {} {actual}, but profile {} allows only {}",
                    article(actual),
                    p.id,
                    names.join(" or ")
                ),
            );
        }
    }

    fn invariants(&mut self, p: &Profile, e: &ElementDef, v: &Value, path: &str) {
        for (key, human) in &e.invariants {
            // An invariant without a check here is not evaluated.
            let Some(holds) = invariant_holds(key, v) else {
                continue;
            };
            if !holds {
                self.push(
                    IssueKind::Invalid,
                    path.to_owned(),
                    format!(
                        "{path} violates invariant {key} of profile {}: {human}",
                        p.id
                    ),
                );
            }
        }
    }
}

/// Whether occurrence `v` belongs to slice `se`: every discriminator (by value or pattern) finds at its path in
/// `v` the slice's fixed or pattern value. Extension slices name their url only through the extension's
/// profile, so a `url` discriminator without a fixed child falls back to that profile's canonical.
fn slice_matches(p: &Profile, slicing: &Slicing, se: &ElementDef, v: &Value) -> bool {
    !slicing.discriminators.is_empty()
        && slicing.discriminators.iter().all(|(kind, dpath)| {
            if kind != "value" && kind != "pattern" {
                return false;
            }
            let Some(actual) = value_at(v, dpath) else {
                return false;
            };
            let child = p
                .by_id
                .get(&format!("{}.{dpath}", se.id))
                .and_then(|&i| p.elements.get(i));
            if let Some(fixed) = child.and_then(|c| c.fixed.as_ref()) {
                return json_equal(actual, fixed);
            }
            if let Some(pattern) = child.and_then(|c| c.pattern.as_ref()) {
                return first_mismatch(actual, pattern, "").is_none();
            }
            if dpath == "url"
                && let Some(url) = se.types.first().and_then(|t| t.profiles.first())
            {
                return actual.as_str() == Some(url.as_str());
            }
            false
        })
}

fn value_at<'v>(v: &'v Value, dotted: &str) -> Option<&'v Value> {
    if dotted == "$this" {
        return Some(v);
    }
    dotted.split('.').try_fold(v, |cur, key| cur.get(key))
}

/// The hand-written checks of the `kap-*` invariants (their FHIRPath is in the profiles); `None` for a key
/// without one.
fn invariant_holds(key: &str, v: &Value) -> Option<bool> {
    Some(match key {
        "kap-int-1" => {
            has_security(
                v,
                "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                "R",
            ) && has_security(v, "http://terminology.hl7.org/CodeSystem/v3-ActCode", "PSY")
        }
        "kap-dose-1" => {
            !has_extension(
                v,
                "http://kap-gateway.org/fhir/StructureDefinition/kap-dose-per-kg",
            ) || has_extension(
                v,
                "http://kap-gateway.org/fhir/StructureDefinition/kap-body-weight-used",
            )
        }
        "kap-vs-1" => {
            has_choice(v, "value") || non_empty(v, "component") || non_empty(v, "dataAbsentReason")
        }
        "kap-vs-2" => {
            let panel = v
                .get("code")
                .and_then(|c| c.get("coding"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| {
                    text(c, "system") == Some("http://loinc.org")
                        && text(c, "code") == Some("85354-9")
                });
            !panel || (non_empty(v, "component") && !has_choice(v, "value"))
        }
        _ => return None,
    })
}

fn has_security(v: &Value, system: &str, code: &str) -> bool {
    v.get("meta")
        .and_then(|m| m.get("security"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| text(c, "system") == Some(system) && text(c, "code") == Some(code))
}

fn has_extension(v: &Value, url: &str) -> bool {
    v.get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|x| text(x, "url") == Some(url))
}

/// Whether a choice element `stem[x]` has a value (`valueQuantity`, …).
fn has_choice(v: &Value, stem: &str) -> bool {
    v.as_object().is_some_and(|o| {
        o.keys().any(|k| {
            k.strip_prefix(stem)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        })
    })
}

fn non_empty(v: &Value, key: &str) -> bool {
    match v.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// The resource type a reference points at: `Type/id`, `…/Type/id/_history/n`, an absolute URL ending so, a
/// conditional `Type?criteria`, or `#id` of a contained resource. `None` for `urn:` references (resolved later
/// in a transaction) and anything else that names no type.
fn referenced_type<'v>(root: &'v Value, reference: &'v str) -> Option<&'v str> {
    if let Some(local) = reference.strip_prefix('#') {
        return root
            .get("contained")
            .and_then(Value::as_array)?
            .iter()
            .find(|c| text(c, "id") == Some(local))
            .and_then(|c| text(c, "resourceType"));
    }
    if reference.starts_with("urn:") {
        return None;
    }
    let candidate = match reference.split_once('?') {
        Some((before, _)) => before.rsplit('/').next()?,
        None => {
            let segments: Vec<&str> = reference.split('/').filter(|s| !s.is_empty()).collect();
            let n = segments.len();
            if n >= 4 && segments.get(n - 2) == Some(&"_history") {
                segments.get(n - 4).copied()?
            } else if n >= 2 {
                segments.get(n - 2).copied()?
            } else {
                return None;
            }
        }
    };
    let looks_like_type = candidate.starts_with(|c: char| c.is_ascii_uppercase())
        && candidate.chars().all(|c| c.is_ascii_alphanumeric());
    looks_like_type.then_some(candidate)
}

fn coding_in(coding: &Value, codes: &HashSet<(String, String)>) -> bool {
    match (text(coding, "system"), text(coding, "code")) {
        (Some(s), Some(c)) => codes.contains(&(s.to_owned(), c.to_owned())),
        _ => false,
    }
}

fn describe_coding(c: &Value) -> String {
    format!(
        "{}#{}",
        text(c, "system").unwrap_or("(no system)"),
        text(c, "code").unwrap_or("(no code)")
    )
}

/// The first place where `value` does not contain `pattern`, as (FHIRPath, what is wrong), following FHIR
/// pattern semantics: every property of the pattern must be present with a matching value, and every entry of
/// a pattern array must match some entry of the instance array.
fn first_mismatch(value: &Value, pattern: &Value, path: &str) -> Option<(String, String)> {
    match pattern {
        Value::Object(expected) => {
            let Some(actual) = value.as_object() else {
                return Some((
                    path.to_owned(),
                    format!("is {}, not an object", shown(value)),
                ));
            };
            for (k, pv) in expected {
                let sub = format!("{path}.{k}");
                match actual.get(k) {
                    None => return Some((sub, format!("is missing (expected {})", shown(pv)))),
                    Some(av) => {
                        if let Some(m) = first_mismatch(av, pv, &sub) {
                            return Some(m);
                        }
                    }
                }
            }
            None
        }
        Value::Array(expected) => {
            let (entries, indexed): (Vec<&Value>, bool) = match value {
                Value::Array(a) => (a.iter().collect(), true),
                other => (vec![other], false),
            };
            for pe in expected {
                if entries.iter().any(|e| first_mismatch(e, pe, "").is_none()) {
                    continue;
                }
                // With a single entry, say exactly where it differs.
                if let [only] = entries.as_slice() {
                    let at = if indexed {
                        format!("{path}[0]")
                    } else {
                        path.to_owned()
                    };
                    return first_mismatch(only, pe, &at)
                        .or_else(|| Some((at, format!("does not match {}", shown(pe)))));
                }
                return Some((
                    path.to_owned(),
                    format!("has no entry matching {}", shown(pe)),
                ));
            }
            None
        }
        _ => (!json_equal(value, pattern)).then(|| {
            (
                path.to_owned(),
                format!("is {}, expected {}", shown(value), shown(pattern)),
            )
        }),
    }
}

/// JSON equality where numbers compare by value (`1.50` equals `1.5`), as FHIR decimals do.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, xv)| y.get(k).is_some_and(|yv| json_equal(xv, yv)))
        }
        _ => a == b,
    }
}

/// A short rendering of a JSON value for messages.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= MAX_SHOWN_CHARS {
        s
    } else {
        let cut: String = s.chars().take(MAX_SHOWN_CHARS).collect();
        format!("{cut}…")
    }
}

/// The suffix a type gives a choice element's name: `dateTime` → `DateTime`.
fn type_suffix(code: &str) -> String {
    let mut chars = code.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['A', 'E', 'I', 'O', 'U', 'a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Where a profile claim sits: `Type.meta.profile[i]` when the resource claims it, else the resource itself.
fn claim_path(resource: &Value, resource_type: &str, url: &str) -> String {
    resource
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .and_then(|a| a.iter().position(|p| p.as_str() == Some(url)))
        .map(|i| format!("{resource_type}.meta.profile[{i}]"))
        .unwrap_or_else(|| resource_type.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles");

    fn example(name: &str) -> Value {
        let path = format!("{DIR}/examples/{name}.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn kap(id: &str) -> String {
        format!("{KAP_CANONICAL_BASE}StructureDefinition/{id}")
    }

    /// Validates against the claimed profile and returns the issues (none → empty).
    fn issues(resource: &Value) -> Vec<ValidationIssue> {
        validate_claimed_profiles(resource)
            .err()
            .unwrap_or_default()
    }

    fn at<'a>(found: &'a [ValidationIssue], expression: &str) -> &'a ValidationIssue {
        found
            .iter()
            .find(|i| i.expression == expression)
            .unwrap_or_else(|| panic!("no issue at {expression}; got {found:#?}"))
    }

    #[test]
    fn every_top_level_json_file_of_profiles_is_embedded() {
        let mut on_disk: Vec<String> = std::fs::read_dir(DIR)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SOURCES.iter().map(|(n, _)| (*n).to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn the_embedded_conformance_resources_load_without_problems() {
        assert!(load_problems().is_empty(), "{:?}", load_problems());
        let count = |t: &str| {
            conformance_resources()
                .filter(|r| r["resourceType"] == t)
                .count()
        };
        assert_eq!(count("StructureDefinition"), 23);
        assert_eq!(count("ValueSet"), 14);
        assert_eq!(count("CodeSystem"), 1);
        assert_eq!(resource_profiles().count(), 19);
        assert!(resource_profiles().any(|(t, u)| t == "Encounter" && u == kap("kap-session")));
        for r in conformance_resources().filter(|r| r["resourceType"] == "ValueSet") {
            let url = r["url"].as_str().unwrap();
            let (_, codes) = LIBRARY
                .value_set(url)
                .unwrap_or_else(|| panic!("{url} cannot be expanded"));
            assert!(!codes.is_empty(), "{url} is empty");
        }
    }

    #[test]
    fn every_example_meets_the_profile_it_claims_and_base_r4() {
        let mut checked = 0;
        for entry in std::fs::read_dir(format!("{DIR}/examples")).unwrap() {
            let path = entry.unwrap().path();
            let resource: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(
                crate::fhir::validate::validate_resource(None, &resource),
                Ok(()),
                "{}",
                path.display()
            );
            let claims = claimed_kap_profiles(&resource);
            if claims.is_empty() {
                continue;
            }
            assert_eq!(
                validate_claimed_profiles(&resource),
                Ok(()),
                "{}",
                path.display()
            );
            checked += claims.len();
        }
        assert!(checked >= 25, "only {checked} examples checked");
    }

    #[test]
    fn a_missing_required_element_is_named_with_its_path() {
        let mut r = example("Observation-kap-example-phq9-baseline");
        r.as_object_mut().unwrap().remove("encounter");
        r.as_object_mut().unwrap().remove("identifier");
        let found = issues(&r);
        assert_eq!(found.len(), 2, "{found:#?}");
        let i = at(&found, "Observation.encounter");
        assert_eq!(i.kind, IssueKind::Required);
        assert!(i.message.contains("kap-score"), "{}", i.message);
        at(&found, "Observation.identifier");
    }

    #[test]
    fn a_missing_choice_element_is_named_without_its_type() {
        let mut r = example("Observation-kap-example-informed-consent");
        r.as_object_mut().unwrap().remove("effectiveDateTime");
        let found = issues(&r);
        assert_eq!(
            at(&found, "Observation.effective").kind,
            IssueKind::Required
        );
    }

    #[test]
    fn a_missing_element_under_a_present_parent_is_reported_but_not_under_an_absent_one() {
        let mut r = example("MedicationAdministration-kap-example-dose");
        r["dosage"].as_object_mut().unwrap().remove("route");
        let found = issues(&r);
        assert_eq!(found.len(), 1, "{found:#?}");
        at(&found, "MedicationAdministration.dosage.route");

        let mut course = example("CarePlan-kap-example-course");
        course["activity"][1]
            .as_object_mut()
            .unwrap()
            .remove("detail");
        let found = issues(&course);
        assert_eq!(found.len(), 1, "{found:#?}");
        at(&found, "CarePlan.activity[1].detail");

        let mut course = example("CarePlan-kap-example-course");
        course.as_object_mut().unwrap().remove("activity");
        assert_eq!(issues(&course), vec![]);
    }

    #[test]
    fn a_wrong_fixed_code_is_reported() {
        let mut r = example("CarePlan-kap-example-course");
        r["intent"] = json!("order");
        let found = issues(&r);
        let i = at(&found, "CarePlan.intent");
        assert_eq!(i.kind, IssueKind::Value);
        assert!(i.message.contains("\"plan\""), "{}", i.message);
    }

    #[test]
    fn a_code_that_breaks_a_pattern_is_reported_where_it_differs() {
        let mut r = example("Observation-kap-example-eligibility");
        r["code"]["coding"][0]["code"] = json!("eligible");
        let found = issues(&r);
        let i = at(&found, "Observation.code.coding[0].code");
        assert!(i.message.contains("kap-eligibility"), "{}", i.message);

        let mut r = example("Observation-kap-example-eligibility");
        r["code"]["coding"][0]["system"] = json!("http://example.org/codes");
        let found = issues(&r);
        at(&found, "Observation.code.coding[0].system");
    }

    #[test]
    fn a_pattern_on_a_coding_needs_only_its_own_properties() {
        let mut r = example("Encounter-kap-example-dosing");
        r["class"]["display"] = json!("anything at all");
        assert_eq!(issues(&r), vec![]);
        r["class"]["code"] = json!("IMP");
        at(&issues(&r), "Encounter.class.code");
    }

    #[test]
    fn a_code_outside_a_required_value_set_is_reported() {
        let mut r = example("Observation-kap-example-adverse-event");
        r["valueCodeableConcept"]["coding"][0]["code"] = json!("sneezing");
        let found = issues(&r);
        let i = at(&found, "Observation.valueCodeableConcept.coding[0]");
        assert!(
            i.message.contains("kap-adverse-event-kinds"),
            "{}",
            i.message
        );

        let mut r = example("MedicationAdministration-kap-example-dose");
        r["medicationCodeableConcept"]["coding"][0]["system"] = json!("http://snomed.info/sct");
        at(
            &issues(&r),
            "MedicationAdministration.medicationCodeableConcept.coding[0]",
        );
    }

    #[test]
    fn an_extra_coding_next_to_one_from_the_value_set_is_fine() {
        let mut r = example("Encounter-kap-example-evaluation");
        r["type"][0]["coding"]
            .as_array_mut()
            .unwrap()
            .push(json!({"system": "http://www.ama-assn.org/go/cpt", "code": "90792"}));
        assert_eq!(issues(&r), vec![]);
    }

    #[test]
    fn a_reference_to_the_wrong_resource_type_is_reported() {
        let mut r = example("Observation-kap-example-phq9-baseline");
        r["subject"]["reference"] = json!("Practitioner/kap-example-practitioner");
        let found = issues(&r);
        let i = at(&found, "Observation.subject.reference");
        assert!(i.message.contains("Patient (kap-patient)"), "{}", i.message);

        // Absolute, versioned and contained references name their type too.
        r["subject"]["reference"] = json!("https://ehr.example/fhir/Patient/p1/_history/2");
        assert_eq!(issues(&r), vec![]);
        r["subject"]["reference"] = json!("#g");
        r["contained"] =
            json!([{"resourceType": "Group", "id": "g", "type": "person", "actual": true}]);
        at(&issues(&r), "Observation.subject.reference");
    }

    #[test]
    fn too_many_repetitions_are_reported() {
        let mut r = example("Observation-kap-example-phq9-baseline");
        let extra = r["category"][0].clone();
        r["category"].as_array_mut().unwrap().push(extra);
        let found = issues(&r);
        let i = at(&found, "Observation.category");
        assert_eq!(i.kind, IssueKind::Structure);
        assert!(i.message.contains("at most 1"), "{}", i.message);
    }

    #[test]
    fn a_choice_type_the_profile_does_not_allow_is_reported() {
        let mut r = example("Observation-kap-example-adverse-event");
        r.as_object_mut().unwrap().remove("valueCodeableConcept");
        r["valueString"] = json!("nausea");
        let found = issues(&r);
        assert_eq!(
            at(&found, "Observation.valueString").kind,
            IssueKind::Structure
        );
    }

    #[test]
    fn slices_are_counted_and_a_closed_slicing_refuses_strangers() {
        let mut r = example("Observation-kap-example-treatment-response");
        let components = r["component"].as_array_mut().unwrap();
        components.retain(|c| c["code"]["coding"][0]["code"] != "remission");
        let found = issues(&r);
        let i = at(&found, "Observation.component");
        assert!(i.message.contains("slice remission"), "{}", i.message);

        let mut r = example("Observation-kap-example-adverse-event");
        r["component"].as_array_mut().unwrap().push(json!({
            "code": {"coding": [{"system": "http://kap-gateway.org/fhir/CodeSystem/kap", "code": "music"}]},
            "valueBoolean": true
        }));
        let found = issues(&r);
        assert!(
            at(&found, "Observation.component[2]")
                .message
                .contains("closed")
        );
    }

    #[test]
    fn a_slice_applies_its_own_value_type() {
        let mut r = example("Observation-kap-example-adverse-event");
        r["component"][1]
            .as_object_mut()
            .unwrap()
            .remove("valueString");
        r["component"][1]["valueBoolean"] = json!(true);
        let found = issues(&r);
        assert_eq!(found.len(), 1, "{found:#?}");
        at(&found, "Observation.component[1].valueBoolean");
    }

    #[test]
    fn an_extension_is_checked_against_its_own_definition() {
        let mut r = example("Encounter-kap-example-dosing");
        r["extension"][0] = json!({
            "url": "http://kap-gateway.org/fhir/StructureDefinition/kap-course-reference",
            "valueReference": {"reference": "Goal/kap-example-goal"}
        });
        let found = issues(&r);
        let i = at(&found, "Encounter.extension[0].valueReference.reference");
        assert!(i.message.contains("kap-course-reference"), "{}", i.message);

        let mut r = example("MedicationAdministration-kap-example-dose");
        r["dosage"]["extension"][0]["valueQuantity"]["code"] = json!("mg");
        at(
            &issues(&r),
            "MedicationAdministration.dosage.extension[0].valueQuantity.code",
        );

        let mut r = example("Encounter-kap-example-dosing");
        let ext = r["extension"][0].clone();
        r["extension"].as_array_mut().unwrap().push(ext);
        let i = at(&issues(&r), "Encounter.extension").message.clone();
        assert!(i.contains("slice course") && i.contains("at most 1"), "{i}");
    }

    #[test]
    fn the_kap_invariants_are_checked() {
        let mut r = example("MedicationAdministration-kap-example-dose");
        r["dosage"]["extension"].as_array_mut().unwrap().remove(1);
        let found = issues(&r);
        let i = at(&found, "MedicationAdministration.dosage");
        assert_eq!(i.kind, IssueKind::Invalid);
        assert!(i.message.contains("kap-dose-1"), "{}", i.message);

        let mut r = example("Observation-kap-example-integration-note");
        r["meta"]["security"].as_array_mut().unwrap().remove(1);
        let found = issues(&r);
        assert!(at(&found, "Observation").message.contains("kap-int-1"));

        let mut r = example("Observation-kap-example-blood-pressure");
        r["valueQuantity"] =
            json!({"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"});
        assert!(at(&issues(&r), "Observation").message.contains("kap-vs-2"));
    }

    #[test]
    fn an_unknown_kap_profile_is_an_issue_and_other_publishers_profiles_are_ignored() {
        let mut r = example("Patient-kap-example-patient");
        r["meta"]["profile"] = json!([
            "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient",
            kap("kap-nonexistent")
        ]);
        assert_eq!(claimed_kap_profiles(&r), vec![kap("kap-nonexistent")]);
        let found = issues(&r);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(
            at(&found, "Patient.meta.profile[1]").kind,
            IssueKind::NotSupported
        );
    }

    #[test]
    fn a_profile_of_another_type_or_an_extension_is_not_a_valid_claim() {
        let r = example("Patient-kap-example-patient");
        let found = validate_against_profile(&r, &kap("kap-session")).unwrap_err();
        assert!(
            found[0].message.contains("Encounter"),
            "{}",
            found[0].message
        );
        let found = validate_against_profile(&r, &kap("kap-dose-per-kg")).unwrap_err();
        assert!(
            found[0].message.contains("extension"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn a_versioned_canonical_resolves_only_to_its_version() {
        let r = example("Patient-kap-example-patient");
        assert_eq!(
            validate_against_profile(&r, &format!("{}|0.1.0", kap("kap-patient"))),
            Ok(())
        );
        assert!(validate_against_profile(&r, &format!("{}|9.9.9", kap("kap-patient"))).is_err());
    }

    #[test]
    fn every_problem_of_a_resource_is_listed_at_once() {
        let mut r = example("Observation-kap-example-phq9-baseline");
        r.as_object_mut().unwrap().remove("encounter");
        r["code"]["coding"][0]["code"] = json!("0000-0");
        r["subject"]["reference"] = json!("Group/g1");
        let found = issues(&r);
        assert_eq!(found.len(), 3, "{found:#?}");
    }

    #[test]
    fn references_name_their_type_in_every_form() {
        let root = json!({});
        assert_eq!(referenced_type(&root, "Patient/1"), Some("Patient"));
        assert_eq!(
            referenced_type(&root, "Patient/1/_history/3"),
            Some("Patient")
        );
        assert_eq!(
            referenced_type(&root, "http://x.org/fhir/Encounter/e"),
            Some("Encounter")
        );
        assert_eq!(
            referenced_type(&root, "Patient?identifier=a|b"),
            Some("Patient")
        );
        assert_eq!(referenced_type(&root, "urn:uuid:1234"), None);
        assert_eq!(referenced_type(&root, "#missing"), None);
    }
}
