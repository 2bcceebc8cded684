//! Strict structural validation of FHIR R4 resources received in writes, against the official
//! R4 JSON Schema plus the JSON rules the schema cannot express
//! (https://hl7.org/fhir/R4/json.html, https://hl7.org/fhir/R4/validation.html).
//!
//! The FHIR model types are lenient (unknown elements are dropped, bad values swallowed), so a
//! write is checked here first and every problem is reported with its FHIRPath.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, OnceLock};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{Draft, JsonType, Registry, ValidationError, Validator};
use serde_json::{Map, Value, json};

/// The official R4 JSON Schema (draft-06), embedded so the binary needs no files at run time.
const SCHEMA_TEXT: &str = include_str!("../../schemas/fhir.schema.json");
const SCHEMA_ID: &str = "http://hl7.org/fhir/json-schema/4.0";
/// Beyond this, more issues only bury the first ones; the client has enough to fix.
const MAX_ISSUES: usize = 100;
/// Longest rendering of an offending value inside a message.
const MAX_VALUE_CHARS: usize = 60;
/// How many allowed codes an enum message lists before eliding the rest.
const MAX_LISTED_CODES: usize = 10;

/// Names of the FHIR primitive types, used to name what a malformed value should have been.
const PRIMITIVES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "xhtml",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    Structure,
    Required,
    Value,
    Invalid,
    NotSupported,
}

impl IssueKind {
    /// The OperationOutcome `issue.code` (http://hl7.org/fhir/R4/valueset-issue-type.html).
    pub fn code(&self) -> &'static str {
        match self {
            IssueKind::Structure => "structure",
            IssueKind::Required => "required",
            IssueKind::Value => "value",
            IssueKind::Invalid => "invalid",
            IssueKind::NotSupported => "not-supported",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidationIssue {
    pub kind: IssueKind,
    /// FHIRPath of the offending element, e.g. "Patient.name[0].given[1]",
    /// "Observation.valueQuantity.value"; for an unknown element, the path of that element
    /// ("Patient.foo"), not of its parent.
    pub expression: String,
    /// Plain-language message naming the element and what is wrong.
    pub message: String,
}

/// Checks a resource as received in a write: a JSON object; `resourceType` present, a string,
/// a known R4 resource type, and equal to `expected_type` when given; `id`, when present,
/// matching `[A-Za-z0-9\-\.]{1,64}`; then the JSON Schema definition of that type, the FHIR
/// JSON rules on null and empty values, and every contained or bundled resource against its
/// own type. Returns every issue (not only the first), deduplicated, at most 100.
pub fn validate_resource(
    expected_type: Option<&str>,
    resource: &Value,
) -> Result<(), Vec<ValidationIssue>> {
    let mut issues = Issues::default();
    match resource {
        Value::Object(_) => check_resource(resource, expected_type, None, &mut issues),
        other => issues.push(
            IssueKind::Structure,
            expected_type.unwrap_or("Resource").to_owned(),
            format!(
                "Expected a JSON object (a FHIR resource) but found {}",
                describe(other)
            ),
        ),
    }
    issues.finish()
}

/// True if `t` is a resource type defined by FHIR R4, supported by this server or not.
pub fn is_r4_resource_type(t: &str) -> bool {
    resource_type_mapping().is_some_and(|m| m.contains_key(t))
}

/// Compiles the validators of the given types ahead of first use, so the first write of each
/// type does not pay for schema compilation.
pub fn warm_up(types: &[&str]) {
    for t in types {
        if let Err(reason) = validator_for(t) {
            tracing::warn!(resource_type = %t, %reason, "no structural validator");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Schema loading and validator cache

static SCHEMA: LazyLock<Result<Value, String>> = LazyLock::new(load_schema);

static REGISTRY: LazyLock<Result<Registry<'static>, String>> = LazyLock::new(|| {
    let schema = SCHEMA.as_ref().map_err(Clone::clone)?;
    Registry::new()
        .add(SCHEMA_ID, schema)
        .and_then(|builder| builder.prepare())
        .map_err(|e| format!("cannot register the R4 JSON Schema: {e}"))
});

/// One cell per R4 resource type, so each type compiles once, on first use, without a lock
/// shared by all types.
static VALIDATORS: LazyLock<HashMap<&'static str, OnceLock<Result<Validator, String>>>> =
    LazyLock::new(|| {
        resource_type_mapping()
            .map(|m| m.keys().map(|k| (k.as_str(), OnceLock::new())).collect())
            .unwrap_or_default()
    });

fn load_schema() -> Result<Value, String> {
    let mut schema: Value = serde_json::from_str(SCHEMA_TEXT)
        .map_err(|e| format!("the embedded R4 JSON Schema is not JSON: {e}"))?;
    tighten(&mut schema);
    Ok(schema)
}

/// Adjusts the official schema where it is looser than FHIR or wrong for R4 4.0.1.
fn tighten(schema: &mut Value) {
    if let Some(defs) = schema.get_mut("definitions").and_then(Value::as_object_mut) {
        for def in defs.values_mut() {
            if let Some(def) = def.as_object_mut()
                && def.contains_key("properties")
            {
                // Complex types carry no "type", so a string where a HumanName belongs passes.
                def.insert("type".into(), json!("object"));
            }
        }
        // Embedded resources are a oneOf over every resource type: costly to compile and its
        // errors name no element. They are validated one by one against their own type instead.
        defs.insert("ResourceList".into(), json!({"type": "object"}));
        if let Some(xhtml) = defs.get_mut("xhtml").and_then(Value::as_object_mut) {
            xhtml.insert("type".into(), json!("string"));
        }
    }
    tighten_nodes(schema);
}

fn tighten_nodes(node: &mut Value) {
    match node {
        Value::Object(map) => {
            // Integer primitives are declared as "number" with a pattern, which JSON Schema only
            // applies to strings, so 1.5 or -3 would pass as a positiveInt.
            let minimum = match map.get("pattern").and_then(Value::as_str) {
                Some("^-?([0]|([1-9][0-9]*))$") => Some(json!(-2147483648_i64)),
                Some("^[1-9][0-9]*$") => Some(json!(1)),
                Some("^[0]|([1-9][0-9]*)$") => Some(json!(0)),
                _ => None,
            };
            if let Some(minimum) = minimum
                && map.get("type").and_then(Value::as_str) == Some("number")
            {
                map.insert("type".into(), json!("integer"));
                map.insert("minimum".into(), minimum);
                map.insert("maximum".into(), json!(2147483647_i64));
            }
            // A pattern on a boolean or number never applies, except to a string sent in its
            // place, where it would repeat the type error as a second issue.
            if map
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "string")
            {
                map.remove("pattern");
            }
            // The schema was generated before the 4.0.1 technical correction and lacks it.
            if let Some(Value::Array(codes)) = map.get_mut("enum")
                && codes.iter().any(|c| c == "4.0.0")
                && !codes.iter().any(|c| c == "4.0.1")
            {
                codes.push(json!("4.0.1"));
            }
            for child in map.values_mut() {
                tighten_nodes(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(tighten_nodes),
        _ => {}
    }
}

fn definitions() -> Option<&'static Map<String, Value>> {
    SCHEMA.as_ref().ok()?.get("definitions")?.as_object()
}

fn resource_type_mapping() -> Option<&'static Map<String, Value>> {
    SCHEMA
        .as_ref()
        .ok()?
        .get("discriminator")?
        .get("mapping")?
        .as_object()
}

fn compile(resource_type: &str) -> Result<Validator, String> {
    let registry = REGISTRY.as_ref().map_err(Clone::clone)?;
    let root = json!({"$ref": format!("{SCHEMA_ID}#/definitions/{resource_type}")});
    jsonschema::options()
        .with_draft(Draft::Draft6)
        .with_registry(registry)
        .build(&root)
        .map_err(|e| format!("cannot compile the schema of {resource_type}: {e}"))
}

fn validator_for(resource_type: &str) -> Result<&'static Validator, String> {
    let cell = VALIDATORS
        .get(resource_type)
        .ok_or_else(|| match &*SCHEMA {
            Err(reason) => reason.clone(),
            Ok(_) => format!("'{resource_type}' is not an R4 resource type"),
        })?;
    cell.get_or_init(|| compile(resource_type))
        .as_ref()
        .map_err(Clone::clone)
}

// ---------------------------------------------------------------------------------------------
// Issue collection

#[derive(Default)]
struct Issues {
    list: Vec<ValidationIssue>,
}

impl Issues {
    fn is_full(&self) -> bool {
        self.list.len() >= MAX_ISSUES
    }

    fn push(&mut self, kind: IssueKind, expression: String, message: String) {
        if self.is_full() {
            return;
        }
        let issue = ValidationIssue {
            kind,
            expression,
            message,
        };
        if !self.list.contains(&issue) {
            self.list.push(issue);
        }
    }

    fn finish(self) -> Result<(), Vec<ValidationIssue>> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.list)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Resources

/// Validates one resource, top-level (`path` is None) or embedded at `path`
/// (e.g. "Bundle.entry[0].resource").
fn check_resource(
    resource: &Value,
    expected_type: Option<&str>,
    path: Option<&str>,
    issues: &mut Issues,
) {
    let Some(object) = resource.as_object() else {
        return;
    };
    let declared = object.get("resourceType");
    let known = declared
        .and_then(Value::as_str)
        .filter(|t| is_r4_resource_type(t));
    let base = match (path, known) {
        (Some(p), _) => p.to_owned(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => expected_type.unwrap_or("Resource").to_owned(),
    };
    let type_path = format!("{base}.resourceType");
    match declared {
        None => issues.push(
            IssueKind::Required,
            type_path,
            format!("{base}: missing required element 'resourceType'"),
        ),
        Some(Value::String(t)) if known.is_none() => issues.push(
            IssueKind::Invalid,
            type_path,
            format!("'{}' is not a FHIR R4 resource type", shorten(t)),
        ),
        Some(Value::String(t)) => {
            check_required_primitives(t, object, &base, issues);
            if let Some(expected) = expected_type
                && expected != t
            {
                issues.push(
                    IssueKind::Invalid,
                    type_path,
                    format!("resourceType '{t}' does not match the expected type '{expected}'"),
                );
            }
        }
        Some(other) => issues.push(
            IssueKind::Structure,
            type_path,
            format!(
                "resourceType must be a string naming the resource type, but found {}",
                describe(other)
            ),
        ),
    }
    if path.is_none()
        && let Some(id) = object.get("id")
    {
        check_id(id, &base, issues);
    }
    let slot = match known {
        Some(t) => {
            check_schema(t, resource, &base, issues);
            definitions()
                .and_then(|defs| defs.get(t))
                .and_then(|def| def.get("properties"))
                .and_then(Value::as_object)
                .map_or(Slot::Unknown, Slot::Complex)
        }
        None => Slot::Unknown,
    };
    walk_object(object, slot, &base, issues);
}

/// The logical id is checked on its own, whatever the schema says, because the server relies on
/// it for URLs and storage keys.
fn check_id(id: &Value, base: &str, issues: &mut Issues) {
    let expression = format!("{base}.id");
    match id {
        Value::String(s) if s.is_empty() => {}
        Value::String(s) if !is_valid_id(s) => {
            let message = malformed_message(&expression, id, Some("id"));
            issues.push(IssueKind::Value, expression, message);
        }
        Value::String(_) | Value::Null => {}
        other => {
            let message = format!(
                "{expression}: expected a string (id) but found {}",
                describe(other)
            );
            issues.push(IssueKind::Structure, expression, message);
        }
    }
}

fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

// ---------------------------------------------------------------------------------------------
// JSON Schema errors → issues

fn check_schema(resource_type: &str, resource: &Value, base: &str, issues: &mut Issues) {
    let validator = match validator_for(resource_type) {
        Ok(v) => v,
        Err(reason) => {
            issues.push(
                IssueKind::NotSupported,
                base.to_owned(),
                format!("{resource_type} cannot be validated: {reason}"),
            );
            return;
        }
    };
    for error in validator.iter_errors(resource) {
        if issues.is_full() {
            return;
        }
        if is_left_to_walker(&error) {
            continue;
        }
        let path = fhir_path(base, resource, error.instance_path().as_str());
        report_schema_error(&error, path, issues);
    }
}

/// Nulls and empty strings are judged by the walker, which knows when FHIR allows a null
/// (aligning a primitive array with its `_` array) and says "empty" rather than "bad pattern".
fn is_left_to_walker(error: &ValidationError<'_>) -> bool {
    match error.instance().as_ref() {
        Value::Null => true,
        Value::String(s) if s.is_empty() => {
            !matches!(error.kind(), ValidationErrorKind::Type { .. })
        }
        _ => false,
    }
}

fn report_schema_error(error: &ValidationError<'_>, path: String, issues: &mut Issues) {
    let instance = error.instance().as_ref();
    let location = SchemaLocation::of(error);
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                let hint = location.unknown_element_hint(name);
                issues.push(
                    IssueKind::Structure,
                    format!("{path}.{name}"),
                    format!("Unknown element '{name}' in {path}{hint}"),
                );
            }
        }
        ValidationErrorKind::Type { kind } => {
            let message = format!(
                "{path}: expected {} but found {}",
                location.expected(kind),
                describe(instance)
            );
            issues.push(IssueKind::Structure, path, message);
        }
        ValidationErrorKind::Pattern { .. } => {
            let message = malformed_message(&path, instance, location.primitive());
            issues.push(IssueKind::Value, path, message);
        }
        ValidationErrorKind::Enum { options } => {
            let message = format!(
                "{path}: {} is not one of {}",
                render(instance),
                list_codes(options)
            );
            issues.push(IssueKind::Value, path, message);
        }
        ValidationErrorKind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            issues.push(
                IssueKind::Required,
                format!("{path}.{name}"),
                format!("{path}: missing required element '{name}'"),
            );
        }
        ValidationErrorKind::Minimum { limit } | ValidationErrorKind::Maximum { limit } => {
            let what = location.primitive().unwrap_or("number");
            let bound = if matches!(error.kind(), ValidationErrorKind::Minimum { .. }) {
                "below the minimum"
            } else {
                "above the maximum"
            };
            let message = format!(
                "{path}: {} is {bound} {limit} allowed for a {what}",
                render(instance)
            );
            issues.push(IssueKind::Value, path, message);
        }
        ValidationErrorKind::Constant { expected_value } => {
            let message = format!("{path}: must be {expected_value}");
            issues.push(IssueKind::Invalid, path, message);
        }
        _ => {
            let message = format!("{path}: {}", error.masked());
            issues.push(IssueKind::Invalid, path, message);
        }
    }
}

/// Where in the R4 schema a failing keyword sits, from the error's absolute keyword location
/// (".../4.0#/definitions/HumanName/properties/given/items/type").
struct SchemaLocation {
    /// The definition holding the keyword ("HumanName", or "date" for a primitive).
    definition: Option<String>,
    /// The property holding the keyword, when it is declared inline in a definition.
    property: Option<String>,
    /// The inline property schema itself, to tell arrays from single values.
    node: Option<&'static Value>,
}

impl SchemaLocation {
    fn of(error: &ValidationError<'_>) -> Self {
        let fragment = error
            .absolute_keyword_location()
            .and_then(|uri| uri.fragment().map(|f| f.as_str().to_owned()))
            .unwrap_or_default();
        let segments: Vec<&str> = fragment.split('/').skip(1).collect();
        let mut location = SchemaLocation {
            definition: None,
            property: None,
            node: None,
        };
        if let ["definitions", definition, rest @ ..] = segments.as_slice() {
            location.definition = Some((*definition).to_owned());
            if let ["properties", property, ..] = rest {
                location.property = Some((*property).to_owned());
                location.node = definitions()
                    .and_then(|defs| defs.get(*definition))
                    .and_then(|def| def.get("properties"))
                    .and_then(|props| props.get(*property));
            }
        }
        location
    }

    /// Points at the intended element for the two common slips: wrong letter case, and a
    /// choice element sent without its type suffix ("value" instead of "valueQuantity").
    fn unknown_element_hint(&self, name: &str) -> String {
        let Some(properties) = self
            .definition
            .as_deref()
            .and_then(|d| definitions()?.get(d)?.get("properties")?.as_object())
        else {
            return String::new();
        };
        if let Some(known) = properties.keys().find(|k| k.eq_ignore_ascii_case(name)) {
            return format!(" (did you mean '{known}'?)");
        }
        let choices: Vec<&str> = properties
            .keys()
            .filter(|k| {
                !name.is_empty()
                    && k.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
            })
            .map(String::as_str)
            .collect();
        match choices.as_slice() {
            [] => String::new(),
            [first, second, ..] if choices.len() > 2 => {
                format!(" ('{name}' is a choice element: add its type, e.g. {first}, {second}, …)")
            }
            _ => format!(
                " ('{name}' is a choice element: add its type, e.g. {})",
                choices.join(", ")
            ),
        }
    }

    /// The primitive type the failing value should have been, when known.
    fn primitive(&self) -> Option<&'static str> {
        match (&self.property, &self.definition) {
            (Some(property), _) => {
                if self.node.is_some_and(|n| n.get("enum").is_some()) {
                    Some("code")
                } else {
                    primitive_of_choice(property)
                }
            }
            (None, Some(definition)) => PRIMITIVES.iter().copied().find(|p| p == definition),
            (None, None) => None,
        }
    }

    fn expected(&self, kind: &TypeKind) -> String {
        let json_types = match kind {
            TypeKind::Single(t) => article(*t).to_owned(),
            TypeKind::Multiple(set) => set.iter().map(article).collect::<Vec<_>>().join(" or "),
        };
        let is_array = matches!(kind, TypeKind::Single(JsonType::Array));
        if is_array {
            return format!("{json_types} (the element repeats)");
        }
        let named = match (&self.property, &self.definition) {
            (None, Some(definition)) => Some(definition.as_str()),
            (Some(_), _) => self.primitive(),
            (None, None) => None,
        };
        match named {
            Some("ResourceList") => format!("{json_types} (a resource)"),
            Some("string" | "boolean" | "integer") | None => json_types,
            Some(name) => format!("{json_types} ({name})"),
        }
    }
}

fn article(t: JsonType) -> &'static str {
    match t {
        JsonType::Array => "an array",
        JsonType::Boolean => "a boolean",
        JsonType::Integer => "an integer",
        JsonType::Null => "null",
        JsonType::Number => "a number",
        JsonType::Object => "an object",
        JsonType::String => "a string",
    }
}

/// The primitive named by a choice element ("valueDateTime" → "dateTime"), whose schema is
/// inlined rather than a reference to the primitive's definition.
fn primitive_of_choice(property: &str) -> Option<&'static str> {
    property
        .char_indices()
        .filter(|(_, c)| c.is_ascii_uppercase())
        .find_map(|(i, _)| {
            let suffix = &property[i..];
            PRIMITIVES.iter().copied().find(|p| {
                p.len() == suffix.len()
                    && p[..1].eq_ignore_ascii_case(&suffix[..1])
                    && p[1..] == suffix[1..]
            })
        })
}

fn malformed_message(path: &str, value: &Value, primitive: Option<&str>) -> String {
    let Some(primitive) = primitive else {
        return format!("{path}: {} is not in the required format", render(value));
    };
    let hint = match primitive {
        "date" => " (expected YYYY, YYYY-MM or YYYY-MM-DD)",
        "dateTime" => {
            " (expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone)"
        }
        "instant" => " (expected YYYY-MM-DDThh:mm:ss with a time zone)",
        "time" => " (expected hh:mm:ss)",
        "id" => " (1 to 64 letters, digits, '-' or '.')",
        "code" => " (no leading, trailing or repeated whitespace)",
        "uri" | "url" | "canonical" => " (no whitespace)",
        "oid" => " (expected urn:oid:…)",
        "uuid" => " (expected urn:uuid: and a lower-case UUID)",
        _ => "",
    };
    format!("{path}: {} is not a valid {primitive}{hint}", render(value))
}

fn list_codes(options: &Value) -> String {
    let Some(codes) = options.as_array() else {
        return options.to_string();
    };
    let mut listed: Vec<String> = codes
        .iter()
        .take(MAX_LISTED_CODES)
        .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
        .collect();
    if codes.len() > MAX_LISTED_CODES {
        listed.push(format!("… ({} codes)", codes.len()));
    }
    listed.join("|")
}

/// Converts a JSON pointer into `resource` to a FHIRPath below `base`; the instance decides
/// whether a numeric segment is an array index or a property name.
fn fhir_path(base: &str, resource: &Value, pointer: &str) -> String {
    let mut path = base.to_owned();
    let mut current = Some(resource);
    for raw in pointer.split('/').skip(1) {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        if let Some(Value::Array(items)) = current
            && let Ok(index) = segment.parse::<usize>()
        {
            let _ = write!(path, "[{index}]");
            current = items.get(index);
        } else {
            path.push('.');
            path.push_str(&segment);
            current = current.and_then(|c| c.get(segment.as_str()));
        }
    }
    path
}

// ---------------------------------------------------------------------------------------------
// Walker: FHIR JSON rules outside the schema, and embedded resources

/// What the schema says an element is, as far as the walker needs to know.
#[derive(Clone, Copy)]
enum Slot {
    /// Not described by the schema (unknown element, or a resource of unknown type).
    Unknown,
    /// A complex type or resource, with its properties.
    Complex(&'static Map<String, Value>),
    Primitive(&'static str),
    /// A contained or bundled resource, validated against its own type.
    Resource,
}

impl Slot {
    fn child(self, key: &str) -> Slot {
        let Slot::Complex(properties) = self else {
            return Slot::Unknown;
        };
        let Some(property) = properties.get(key) else {
            return Slot::Unknown;
        };
        let item = property.get("items").unwrap_or(property);
        if let Some(target) = item
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/"))
        {
            if target == "ResourceList" {
                return Slot::Resource;
            }
            let Some(definition) = definitions().and_then(|defs| defs.get_key_value(target)) else {
                return Slot::Unknown;
            };
            return match definition.1.get("properties").and_then(Value::as_object) {
                Some(properties) => Slot::Complex(properties),
                None => Slot::Primitive(definition.0.as_str()),
            };
        }
        if item.get("enum").is_some() {
            return Slot::Primitive("code");
        }
        primitive_of_choice(key).map_or(Slot::Unknown, Slot::Primitive)
    }
}

fn walk_object(object: &Map<String, Value>, slot: Slot, path: &str, issues: &mut Issues) {
    if object.is_empty() {
        issues.push(
            IssueKind::Invalid,
            path.to_owned(),
            format!("{path}: empty object (elements must have a value or children)"),
        );
        return;
    }
    for (key, value) in object {
        if issues.is_full() {
            return;
        }
        let child = slot.child(key);
        let child_path = format!("{path}.{key}");
        match value {
            Value::Null => report_null(child_path, issues),
            Value::Array(items) => {
                if items.is_empty() {
                    let message = format!(
                        "{child_path}: empty array (elements must have a value or children)"
                    );
                    issues.push(IssueKind::Invalid, child_path, message);
                    continue;
                }
                for (index, item) in items.iter().enumerate() {
                    let item_path = format!("{child_path}[{index}]");
                    if item.is_null() {
                        if !is_alignment_null(object, slot, key, index) {
                            report_null(item_path, issues);
                        }
                    } else {
                        walk_value(item, child, &item_path, issues);
                    }
                }
            }
            _ => walk_value(value, child, &child_path, issues),
        }
    }
}

fn walk_value(value: &Value, slot: Slot, path: &str, issues: &mut Issues) {
    match value {
        Value::Object(_) if matches!(slot, Slot::Resource) => {
            check_resource(value, None, Some(path), issues);
        }
        Value::Object(object) => walk_object(object, slot, path, issues),
        Value::String(s) if s.is_empty() => issues.push(
            IssueKind::Value,
            path.to_owned(),
            format!("{path}: empty string (elements must have a value or children; omit it)"),
        ),
        Value::String(s) => {
            if let Slot::Primitive(primitive @ ("date" | "dateTime" | "instant")) = slot {
                check_calendar(s, primitive, path, issues);
            }
        }
        Value::Array(items) => {
            // Arrays of arrays are never FHIR; the schema reports the type, the walker only
            // keeps looking for nulls and empties inside.
            for (index, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{index}]");
                if item.is_null() {
                    report_null(item_path, issues);
                } else {
                    walk_value(item, Slot::Unknown, &item_path, issues);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn report_null(path: String, issues: &mut Issues) {
    let message = format!(
        "{path}: null is not allowed (omit the element; null only aligns a primitive array \
         with its '_' extension array)"
    );
    issues.push(IssueKind::Invalid, path, message);
}

/// In a repeating primitive, `"given": ["a", null], "_given": [null, {…}]` keeps values and
/// their extensions aligned; such a null is allowed when its partner array has something at
/// the same index.
fn is_alignment_null(object: &Map<String, Value>, slot: Slot, key: &str, index: usize) -> bool {
    let (primitive_key, partner_key) = match key.strip_prefix('_') {
        Some(stripped) => (stripped.to_owned(), stripped.to_owned()),
        None => (key.to_owned(), format!("_{key}")),
    };
    if !matches!(slot.child(&primitive_key), Slot::Primitive(_)) {
        return false;
    }
    match (object.get(key), object.get(&partner_key)) {
        (Some(Value::Array(own)), Some(Value::Array(partner))) => {
            own.len() == partner.len() && partner.get(index).is_some_and(|p| !p.is_null())
        }
        _ => false,
    }
}

/// The schema's date patterns accept any day 01-31 in any month; FHIR requires real dates.
fn check_calendar(value: &str, primitive: &str, path: &str, issues: &mut Issues) {
    let bytes = value.as_bytes();
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return;
    }
    let number = |range: std::ops::Range<usize>| value.get(range)?.parse::<u32>().ok();
    let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10)) else {
        return;
    };
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return,
    };
    if day > days {
        issues.push(
            IssueKind::Value,
            path.to_owned(),
            format!(
                "{path}: '{}' is not a valid {primitive} ({year:04}-{month:02} has {days} days)",
                shorten(value)
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering values in messages

fn describe(value: &Value) -> String {
    let what = match value {
        Value::Null => return "null".to_owned(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => return "an array".to_owned(),
        Value::Object(_) => return "an object".to_owned(),
    };
    format!("{what} ({})", render(value))
}

fn render(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{}'", shorten(s)),
        other => shorten(&other.to_string()),
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX_VALUE_CHARS).collect();
        format!("{head}…")
    }
}

/// Required (min 1) primitive elements of R4 resources, which the JSON Schema cannot demand because the value may
/// come only through its `_element` extension. Taken from the R4 StructureDefinitions of the types this server
/// stores; a primitive choice is listed by its prefix (`effective` covers every `effective[x]`).
const REQUIRED_PRIMITIVES: &[(&str, &[&str])] = &[
    ("AuditEvent", &["recorded"]),
    ("CarePlan", &["status", "intent"]),
    ("Encounter", &["status"]),
    ("Goal", &["lifecycleStatus"]),
    ("Group", &["type", "actual"]),
    ("MedicationAdministration", &["status", "effective"]),
    ("Observation", &["status"]),
    ("Provenance", &["recorded"]),
    ("Bundle", &["type"]),
];

fn check_required_primitives(
    resource_type: &str,
    object: &serde_json::Map<String, Value>,
    base: &str,
    issues: &mut Issues,
) {
    let Some((_, required)) = REQUIRED_PRIMITIVES
        .iter()
        .find(|(t, _)| *t == resource_type)
    else {
        return;
    };
    for name in *required {
        let present = object.keys().any(|k| {
            let k = k.strip_prefix('_').unwrap_or(k);
            k == *name
                || (k.starts_with(name)
                    && k[name.len()..].starts_with(|c: char| c.is_ascii_uppercase()))
        });
        if !present {
            issues.push(
                IssueKind::Required,
                format!("{base}.{name}"),
                format!("{base}: missing required element '{name}'"),
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn issues_of(expected: Option<&str>, resource: Value) -> Vec<ValidationIssue> {
        validate_resource(expected, &resource)
            .err()
            .unwrap_or_default()
    }

    fn has(issues: &[ValidationIssue], kind: IssueKind, expression: &str) -> bool {
        issues
            .iter()
            .any(|i| i.kind == kind && i.expression == expression)
    }

    fn patient(extra: Value) -> Value {
        let mut p = json!({"resourceType": "Patient", "id": "p1", "active": true});
        if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                p.insert(k.clone(), v.clone());
            }
        }
        p
    }

    #[test]
    fn the_embedded_schema_loads_and_knows_the_r4_resource_types() {
        assert!(SCHEMA.is_ok(), "{:?}", SCHEMA.as_ref().err());
        assert!(is_r4_resource_type("Patient"));
        assert!(is_r4_resource_type("CapabilityStatement"));
        assert!(!is_r4_resource_type("Resource"));
        assert!(!is_r4_resource_type("patient"));
        assert!(!is_r4_resource_type("Foo"));
        assert_eq!(resource_type_mapping().map(Map::len), Some(146));
    }

    fn examples() -> Vec<(String, PathBuf, Value)> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/r4-examples");
        let mut files = Vec::new();
        for dir in std::fs::read_dir(&root).unwrap() {
            let dir = dir.unwrap().path();
            let resource_type = dir.file_name().unwrap().to_string_lossy().into_owned();
            for file in std::fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                let text = std::fs::read_to_string(&file).unwrap();
                files.push((
                    resource_type.clone(),
                    file,
                    serde_json::from_str(&text).unwrap(),
                ));
            }
        }
        files.sort_by(|a, b| a.1.cmp(&b.1));
        files
    }

    #[test]
    fn every_official_example_passes_without_issues() {
        let examples = examples();
        assert!(
            examples.len() >= 80,
            "only {} examples found",
            examples.len()
        );
        let failures: Vec<String> = examples
            .iter()
            .filter_map(|(resource_type, file, resource)| {
                let issues = validate_resource(Some(resource_type), resource).err()?;
                Some(format!("{}: {issues:#?}", file.display()))
            })
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Validators are compiled by now, so these are steady-state timings.
        let mut per_type: Vec<(String, usize, Duration, Duration, usize)> = Vec::new();
        for (resource_type, _, resource) in &examples {
            let bytes = resource.to_string().len();
            let started = Instant::now();
            let _ = validate_resource(Some(resource_type), resource);
            let took = started.elapsed();
            match per_type.iter_mut().find(|t| &t.0 == resource_type) {
                Some(t) => {
                    t.1 += 1;
                    t.2 += took;
                    t.3 = t.3.max(took);
                    t.4 = t.4.max(bytes);
                }
                None => per_type.push((resource_type.clone(), 1, took, took, bytes)),
            }
        }
        for (resource_type, count, total, slowest, largest) in per_type {
            println!(
                "validate {resource_type}: {count} examples, mean {:?}, max {slowest:?} (largest {largest} bytes)",
                total / u32::try_from(count).unwrap()
            );
        }
    }

    #[test]
    fn schema_loading_and_compilation_times_are_reported() {
        let started = Instant::now();
        let schema = load_schema().unwrap();
        println!("parse and tighten the schema: {:?}", started.elapsed());
        let started = Instant::now();
        let registry = Registry::new()
            .add(SCHEMA_ID, &schema)
            .unwrap()
            .prepare()
            .unwrap();
        println!("register the schema: {:?}", started.elapsed());
        drop(registry);
        for t in [
            "Patient",
            "Observation",
            "Condition",
            "Encounter",
            "CarePlan",
            "MedicationAdministration",
            "Bundle",
        ] {
            let started = Instant::now();
            let validator = compile(t).unwrap();
            let compiled = started.elapsed();
            // A first validation shows whether any compilation was deferred to first use.
            let instance = json!({"resourceType": t, "id": "x"});
            let started = Instant::now();
            let _ = validator.iter_errors(&instance).count();
            let first = started.elapsed();
            let started = Instant::now();
            let _ = validator.iter_errors(&instance).count();
            println!(
                "compile {t}: {compiled:?}; first validation {first:?}, second {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn a_valid_minimal_patient_passes() {
        assert_eq!(
            validate_resource(Some("Patient"), &patient(json!({}))),
            Ok(())
        );
    }

    #[test]
    fn an_unknown_top_level_element_is_reported_at_its_own_path() {
        let issues = issues_of(Some("Patient"), patient(json!({"foo": 1})));
        assert_eq!(
            issues,
            vec![ValidationIssue {
                kind: IssueKind::Structure,
                expression: "Patient.foo".into(),
                message: "Unknown element 'foo' in Patient".into(),
            }]
        );
    }

    #[test]
    fn an_unknown_nested_element_is_reported_at_its_own_path() {
        let issues = issues_of(
            Some("Patient"),
            patient(json!({"name": [{"family": "Doe", "foo": "x"}]})),
        );
        assert!(
            has(&issues, IssueKind::Structure, "Patient.name[0].foo"),
            "{issues:#?}"
        );
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert!(issues[0].message.contains("'foo'"));
    }

    #[test]
    fn an_unknown_element_that_is_a_near_miss_gets_a_hint() {
        let issues = issues_of(Some("Patient"), patient(json!({"birthdate": "1980-01-01"})));
        assert!(
            issues[0].message.ends_with("(did you mean 'birthDate'?)"),
            "{issues:#?}"
        );
        let issues = issues_of(Some("Patient"), patient(json!({"deceased": true})));
        assert_eq!(
            issues[0].message,
            "Unknown element 'deceased' in Patient ('deceased' is a choice element: add its \
             type, e.g. deceasedBoolean, deceasedDateTime)"
        );
    }

    #[test]
    fn a_number_where_a_date_belongs_is_a_structure_issue() {
        let issues = issues_of(Some("Patient"), patient(json!({"birthDate": 1980})));
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Structure);
        assert_eq!(issues[0].expression, "Patient.birthDate");
        assert_eq!(
            issues[0].message,
            "Patient.birthDate: expected a string (date) but found a number (1980)"
        );
    }

    #[test]
    fn a_string_where_a_boolean_belongs_is_a_structure_issue() {
        let issues = issues_of(Some("Patient"), patient(json!({"active": "yes"})));
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert!(has(&issues, IssueKind::Structure, "Patient.active"));
        assert!(
            issues[0].message.contains("expected a boolean"),
            "{issues:#?}"
        );
    }

    #[test]
    fn a_string_where_a_complex_type_belongs_is_a_structure_issue() {
        let issues = issues_of(Some("Patient"), patient(json!({"name": ["Doe"]})));
        assert!(
            has(&issues, IssueKind::Structure, "Patient.name[0]"),
            "{issues:#?}"
        );
        assert!(
            issues[0].message.contains("an object (HumanName)"),
            "{issues:#?}"
        );
        let issues = issues_of(Some("Patient"), patient(json!({"name": {"family": "Doe"}})));
        assert!(
            has(&issues, IssueKind::Structure, "Patient.name"),
            "{issues:#?}"
        );
        assert!(issues[0].message.contains("repeats"), "{issues:#?}");
    }

    #[test]
    fn a_malformed_date_names_the_date_type() {
        let issues = issues_of(Some("Patient"), patient(json!({"birthDate": "1980-13-01"})));
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Value);
        assert_eq!(issues[0].expression, "Patient.birthDate");
        assert!(
            issues[0]
                .message
                .starts_with("Patient.birthDate: '1980-13-01' is not a valid date"),
            "{issues:#?}"
        );
    }

    #[test]
    fn a_day_that_does_not_exist_in_its_month_is_rejected() {
        let issues = issues_of(Some("Patient"), patient(json!({"birthDate": "1981-02-29"})));
        assert!(
            has(&issues, IssueKind::Value, "Patient.birthDate"),
            "{issues:#?}"
        );
        assert!(validate_resource(None, &patient(json!({"birthDate": "1980-02-29"}))).is_ok());
    }

    #[test]
    fn a_malformed_choice_type_value_names_its_primitive() {
        let issues = issues_of(
            Some("Patient"),
            patient(json!({"deceasedDateTime": "2020-01-01T10:00"})),
        );
        assert!(
            has(&issues, IssueKind::Value, "Patient.deceasedDateTime"),
            "{issues:#?}"
        );
        assert!(
            issues[0].message.contains("not a valid dateTime"),
            "{issues:#?}"
        );
    }

    #[test]
    fn a_bad_id_is_reported_once() {
        let issues = issues_of(Some("Patient"), patient(json!({"id": "has space"})));
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Value);
        assert_eq!(issues[0].expression, "Patient.id");
        assert!(issues[0].message.contains("not a valid id"), "{issues:#?}");
        let issues = issues_of(Some("Patient"), patient(json!({"id": 5})));
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Structure);
        let long = "a".repeat(65);
        assert!(has(
            &issues_of(Some("Patient"), patient(json!({"id": long}))),
            IssueKind::Value,
            "Patient.id"
        ));
    }

    #[test]
    fn a_resource_of_another_type_than_expected_is_rejected_naming_resource_type() {
        let observation =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
        let issues = issues_of(Some("Patient"), observation.clone());
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Invalid);
        assert_eq!(issues[0].expression, "Observation.resourceType");
        assert!(issues[0].message.contains("'Patient'"));
        assert!(validate_resource(Some("Observation"), &observation).is_ok());
    }

    #[test]
    fn an_unknown_or_missing_resource_type_is_rejected() {
        let issues = issues_of(None, json!({"resourceType": "Foo", "id": "1"}));
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Invalid);
        assert_eq!(issues[0].expression, "Resource.resourceType");
        let issues = issues_of(Some("Patient"), json!({"id": "1"}));
        assert!(
            has(&issues, IssueKind::Required, "Patient.resourceType"),
            "{issues:#?}"
        );
        let issues = issues_of(None, json!({"resourceType": 7}));
        assert!(
            has(&issues, IssueKind::Structure, "Resource.resourceType"),
            "{issues:#?}"
        );
        let issues = issues_of(Some("Patient"), json!(["Patient"]));
        assert!(has(&issues, IssueKind::Structure, "Patient"), "{issues:#?}");
    }

    #[test]
    fn a_code_outside_a_required_binding_lists_the_allowed_codes() {
        let issues = issues_of(Some("Patient"), patient(json!({"gender": "mal"})));
        assert_eq!(
            issues,
            vec![ValidationIssue {
                kind: IssueKind::Value,
                expression: "Patient.gender".into(),
                message: "Patient.gender: 'mal' is not one of male|female|other|unknown".into(),
            }]
        );
    }

    #[test]
    fn a_decimal_sent_as_a_string_is_rejected() {
        let observation = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "weight"},
            "valueQuantity": {"value": "80", "unit": "kg"}
        });
        let issues = issues_of(Some("Observation"), observation);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Structure);
        assert_eq!(issues[0].expression, "Observation.valueQuantity.value");
        assert!(
            issues[0].message.contains("expected a number (decimal)"),
            "{issues:#?}"
        );
    }

    #[test]
    fn integer_primitives_reject_fractions_and_out_of_range_values() {
        let issues = issues_of(
            Some("Patient"),
            patient(json!({"multipleBirthInteger": 1.5})),
        );
        assert!(
            has(
                &issues,
                IssueKind::Structure,
                "Patient.multipleBirthInteger"
            ),
            "{issues:#?}"
        );
        let observation = json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": 0, "data": "1 2"}
        });
        let issues = issues_of(Some("Observation"), observation);
        assert!(
            has(
                &issues,
                IssueKind::Value,
                "Observation.valueSampledData.dimensions"
            ),
            "{issues:#?}"
        );
    }

    #[test]
    fn empty_strings_arrays_and_objects_and_nulls_are_rejected() {
        let issues = issues_of(
            Some("Patient"),
            patient(json!({
                "gender": "",
                "name": [],
                "maritalStatus": {},
                "birthDate": null,
                "telecom": [{"system": "phone", "value": "1"}, null]
            })),
        );
        assert!(
            has(&issues, IssueKind::Value, "Patient.gender"),
            "{issues:#?}"
        );
        assert!(
            has(&issues, IssueKind::Invalid, "Patient.name"),
            "{issues:#?}"
        );
        assert!(
            has(&issues, IssueKind::Invalid, "Patient.maritalStatus"),
            "{issues:#?}"
        );
        assert!(
            has(&issues, IssueKind::Invalid, "Patient.birthDate"),
            "{issues:#?}"
        );
        assert!(
            has(&issues, IssueKind::Invalid, "Patient.telecom[1]"),
            "{issues:#?}"
        );
        assert_eq!(issues.len(), 5, "{issues:#?}");
    }

    #[test]
    fn nulls_that_align_a_primitive_array_with_its_extensions_are_allowed() {
        let aligned = patient(json!({"name": [{
            "given": ["Jim", null],
            "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}]
        }]}));
        assert_eq!(validate_resource(Some("Patient"), &aligned), Ok(()));
        let misaligned = patient(json!({"name": [{"given": ["Jim", null]}]}));
        let issues = issues_of(Some("Patient"), misaligned);
        assert!(
            has(&issues, IssueKind::Invalid, "Patient.name[0].given[1]"),
            "{issues:#?}"
        );
    }

    #[test]
    fn several_problems_give_several_issues() {
        let issues = issues_of(
            Some("Patient"),
            patient(json!({
                "foo": 1,
                "gender": "mal",
                "birthDate": "1980-13-01",
                "active": "yes",
                "name": [{"given": ["Jim", 3], "bar": true}]
            })),
        );
        for expression in [
            "Patient.foo",
            "Patient.gender",
            "Patient.birthDate",
            "Patient.active",
            "Patient.name[0].given[1]",
            "Patient.name[0].bar",
        ] {
            assert!(
                issues.iter().any(|i| i.expression == expression),
                "{expression}: {issues:#?}"
            );
        }
        assert_eq!(issues.len(), 6, "{issues:#?}");
    }

    #[test]
    fn contained_resources_are_validated_against_their_own_type() {
        let issues = issues_of(
            Some("Patient"),
            patient(json!({"contained": [
                {"resourceType": "Practitioner", "id": "pr1", "gender": "mal", "foo": 1},
                {"resourceType": "Nope"}
            ]})),
        );
        assert!(
            has(&issues, IssueKind::Value, "Patient.contained[0].gender"),
            "{issues:#?}"
        );
        assert!(
            has(&issues, IssueKind::Structure, "Patient.contained[0].foo"),
            "{issues:#?}"
        );
        assert!(
            has(
                &issues,
                IssueKind::Invalid,
                "Patient.contained[1].resourceType"
            ),
            "{issues:#?}"
        );
        assert_eq!(issues.len(), 3, "{issues:#?}");
    }

    #[test]
    fn bundle_entries_are_validated_against_their_own_type() {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": {"resourceType": "Patient", "birthDate": "1980-13-01"},
                 "request": {"method": "POST", "url": "Patient"}},
                {"resource": "not a resource", "request": {"method": "POST", "url": "Patient"}}
            ]
        });
        let issues = issues_of(Some("Bundle"), bundle);
        assert!(
            has(
                &issues,
                IssueKind::Value,
                "Bundle.entry[0].resource.birthDate"
            ),
            "{issues:#?}"
        );
        assert!(
            has(&issues, IssueKind::Structure, "Bundle.entry[1].resource"),
            "{issues:#?}"
        );
        assert_eq!(issues.len(), 2, "{issues:#?}");
    }

    #[test]
    fn a_missing_required_element_is_reported_at_its_path() {
        let observation = json!({"resourceType": "Observation", "status": "final"});
        let issues = issues_of(Some("Observation"), observation);
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].kind, IssueKind::Required);
        assert_eq!(issues[0].expression, "Observation.code");
        assert_eq!(
            issues[0].message,
            "Observation: missing required element 'code'"
        );
    }

    #[test]
    fn a_capability_statement_may_declare_fhir_version_4_0_1() {
        let capability = json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2024-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"]
        });
        assert_eq!(validate_resource(None, &capability), Ok(()));
    }

    #[test]
    fn the_number_of_issues_is_capped() {
        let unknown: Map<String, Value> = (0..300).map(|i| (format!("x{i}"), json!(1))).collect();
        let issues = issues_of(Some("Patient"), patient(Value::Object(unknown)));
        assert_eq!(issues.len(), MAX_ISSUES);
    }

    #[test]
    fn issue_kinds_map_to_operation_outcome_codes() {
        assert_eq!(IssueKind::Structure.code(), "structure");
        assert_eq!(IssueKind::Required.code(), "required");
        assert_eq!(IssueKind::Value.code(), "value");
        assert_eq!(IssueKind::Invalid.code(), "invalid");
        assert_eq!(IssueKind::NotSupported.code(), "not-supported");
    }

    #[test]
    fn a_missing_required_primitive_is_reported_unless_its_extension_stands_in() {
        let obs = serde_json::json!({"resourceType": "Observation", "code": {"text": "x"}});
        let issues = validate_resource(Some("Observation"), &obs).unwrap_err();
        assert!(
            issues
                .iter()
                .any(|i| i.expression == "Observation.status" && i.kind == IssueKind::Required)
        );
        let with_ext = serde_json::json!({"resourceType": "Observation", "code": {"text": "x"},
            "_status": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}});
        assert!(validate_resource(Some("Observation"), &with_ext).is_ok());
        let med = serde_json::json!({"resourceType": "MedicationAdministration", "status": "completed",
            "medicationCodeableConcept": {"text": "ketamine"}, "subject": {"reference": "Patient/1"},
            "effectiveDateTime": "2024-01-01"});
        assert!(validate_resource(Some("MedicationAdministration"), &med).is_ok());
    }
}
