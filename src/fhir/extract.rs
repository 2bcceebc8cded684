//! Index values of a resource for its search parameters (https://hl7.org/fhir/R4/search.html).
//!
//! The registry's paths are walked through the resource JSON, through arrays at any level, and the
//! value at the end of each path is read according to its JSON shape and the parameter's kind.
//! Search parsing shares [`normalize_string`] and [`decimal_range`] so that both sides of a
//! comparison are computed the same way.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};

use serde_json::{Map, Value};

use crate::fhir::datetime::parse_range;
use crate::fhir::registry::{self, ParamKind, SearchParamDef};

/// One value a resource can be found by.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// A Coding (one per coding of a CodeableConcept; CodeableConcept.text is not a token), an
    /// Identifier (system|value), a ContactPoint (its value, system None) or a code, id, string or
    /// boolean primitive (the value itself, system None; booleans as "true"/"false").
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// `norm` is [`normalize_string`] of the value, `exact` the value as written. A HumanName gives
    /// its family, each given, prefix, suffix and text separately; an Address each line, city,
    /// district, state, postalCode, country and text.
    String {
        norm: String,
        exact: String,
    },
    /// A date, dateTime or instant as the range it covers; a Period from its start to its end, an
    /// open side extending to `i64::MIN` / `i64::MAX`; a Timing as each event and its bounds.
    Date {
        lo: i64,
        hi: i64,
    },
    /// A Reference by its `reference` string. `target_type`/`target_id` are filled for `Type/id`,
    /// `Type/id/_history/n` and absolute URLs ending in `/Type/id` (version dropped); `url` is the
    /// string as written. A canonical gives `url` only.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: String,
    },
    /// A Quantity with `[lo, hi]` the implicit precision range of its value
    /// (https://hl7.org/fhir/R4/search.html#quantity). A comparator opens the matching side to
    /// `f64::MIN` / `f64::MAX`; a Range spans its low to its high.
    Quantity {
        value: f64,
        lo: f64,
        hi: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// A decimal or integer with `[lo, hi]` its implicit precision range.
    Number {
        value: f64,
        lo: f64,
        hi: f64,
    },
    Uri {
        uri: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: &'static str,
    pub value: IndexValue,
}

/// Every index entry of a resource for its type's parameters and the common ones, without
/// duplicates. `_id` and `_lastUpdated` are left out because the store keeps both itself. An
/// unsupported type gets the common parameters only. Odd input yields fewer entries, never a panic.
pub fn extract(resource_type: &str, resource: &Value) -> Vec<IndexEntry> {
    extract_params(resource_type, resource, |_| true)
}

/// Like [`extract`], for only the parameters `wanted` accepts (e.g. the patient-compartment references), without
/// walking the paths of the others.
pub fn extract_params(
    resource_type: &str,
    resource: &Value,
    wanted: impl Fn(&str) -> bool,
) -> Vec<IndexEntry> {
    let own = registry::type_params(resource_type).unwrap_or_default();
    // Entries by the hash of their parameter and value; equal hashes are compared in full.
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut entries: Vec<IndexEntry> = Vec::new();
    for def in own.iter().chain(registry::common_params()) {
        if matches!(def.name, "_id" | "_lastUpdated") || !wanted(def.name) {
            continue;
        }
        for path in def.paths {
            let mut leaves = Vec::new();
            walk(resource, path, &mut leaves);
            let mut values = Vec::new();
            for leaf in leaves {
                values_of(def, path, leaf, &mut values);
            }
            for value in values {
                let same = seen.entry(entry_hash(def.name, &value)).or_default();
                if !same
                    .iter()
                    .any(|&i| entries[i].param == def.name && entries[i].value == value)
                {
                    same.push(entries.len());
                    entries.push(IndexEntry {
                        param: def.name,
                        value,
                    });
                }
            }
        }
    }
    entries
}

/// A hash of an index entry, for finding duplicates. Numbers are hashed by their bits: equal values have equal
/// bits, except 0.0 and -0.0, which then count as different values (as they print differently).
fn entry_hash(param: &str, value: &IndexValue) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    param.hash(&mut h);
    std::mem::discriminant(value).hash(&mut h);
    match value {
        IndexValue::Token { system, code } => (system, code).hash(&mut h),
        IndexValue::String { norm, exact } => (norm, exact).hash(&mut h),
        IndexValue::Date { lo, hi } => (lo, hi).hash(&mut h),
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => (target_type, target_id, url).hash(&mut h),
        IndexValue::Quantity {
            value,
            lo,
            hi,
            system,
            code,
            unit,
        } => {
            (value.to_bits(), lo.to_bits(), hi.to_bits()).hash(&mut h);
            (system, code, unit).hash(&mut h);
        }
        IndexValue::Number { value, lo, hi } => {
            (value.to_bits(), lo.to_bits(), hi.to_bits()).hash(&mut h)
        }
        IndexValue::Uri { uri } => uri.hash(&mut h),
    }
    h.finish()
}

/// The ids of the Patients that a resource's reference parameters `params` point at (`Patient/id`, or an absolute
/// URL ending in `/Patient/id`), sorted and without duplicates: its patient compartments, read the way the index
/// reads references, without building index entries (this runs for every resource of every response).
pub fn patient_references(resource_type: &str, resource: &Value, params: &[&str]) -> Vec<String> {
    let own = registry::type_params(resource_type).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for def in own.iter().chain(registry::common_params()) {
        if def.kind != ParamKind::Reference
            || !params.contains(&def.name)
            || !(def.targets.is_empty() || def.targets.contains(&"Patient"))
        {
            continue;
        }
        for path in def.paths {
            let mut leaves = Vec::new();
            walk(resource, path, &mut leaves);
            for leaf in leaves {
                let url = leaf.get("reference").and_then(Value::as_str).unwrap_or("");
                if url.starts_with('#') {
                    continue;
                }
                if let Some(("Patient", id)) = split_reference(url)
                    && !out.iter().any(|known| known == id)
                {
                    out.push(id.to_owned());
                }
            }
        }
    }
    out.sort();
    out
}

/// What string search compares: lower-case, accents and other non-ASCII letters transliterated to
/// ASCII, runs of whitespace collapsed to one space, no leading or trailing space
/// ("Ádám  Smith" → "adam smith"). Characters with no transliteration are kept as they are.
pub fn normalize_string(s: &str) -> String {
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        match deunicode::deunicode_char(c) {
            Some(t) if !c.is_ascii() => ascii.push_str(t),
            _ => ascii.push(c),
        }
    }
    ascii
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The implicit precision range of a decimal written as `text`, as `(value, lo, hi)`: half a unit
/// of the last written digit either side, so "5.40" gives 5.395..5.405 and "100" gives 99.5..100.5.
///
/// Exponent forms follow the same rule on the digits written ("1.5e2" gives 145..155, "1e2"
/// 50..150). The bounds are computed in decimal before conversion so that they are the doubles
/// nearest the exact bounds. None for anything that is not a finite FHIR decimal.
pub fn decimal_range(text: &str) -> Option<(f64, f64, f64)> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (text.get(..i)?, text.get(i + 1..)?.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (negative, unsigned) = match mantissa.as_bytes().first() {
        Some(b'-') => (true, mantissa.get(1..)?),
        Some(b'+') => (false, mantissa.get(1..)?),
        _ => (false, mantissa),
    };
    let (int_part, frac_part) = match unsigned.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return None,
        None => (unsigned, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty() || !all_digits(int_part) || !all_digits(frac_part) {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    // value = digits × 10^-scale; the bounds are (digits × 10 ∓ 5) × 10^-(scale + 1).
    let scale = i32::try_from(frac_part.len()).ok()?.checked_sub(exponent)?;
    let bound_exponent = scale.checked_add(1)?.checked_neg()?;
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let mantissa = match digits.len() {
        0 => Some(0),
        1..=36 => digits.parse::<i128>().ok(),
        _ => None,
    };
    let (lo, hi) = match mantissa {
        Some(m) => {
            let m = if negative { -m } else { m };
            let bound = |delta: i128| format!("{}e{bound_exponent}", m * 10 + delta).parse::<f64>();
            (bound(-5).ok()?, bound(5).ok()?)
        }
        // Too many digits for exact arithmetic: the half-unit is far below f64 resolution anyway.
        None => {
            let half = 0.5 * 10f64.powi(-scale);
            (value - half, value + half)
        }
    };
    (lo.is_finite() && hi.is_finite()).then_some((value, lo, hi))
}

/// Collects the values at the end of a dot-separated path, descending into every array met.
fn walk<'a>(value: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    if let Value::Array(items) = value {
        for item in items {
            walk(item, path, out);
        }
        return;
    }
    if path.is_empty() {
        out.push(value);
        return;
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    if let Some(child) = value.get(head) {
        walk(child, rest, out);
    }
}

fn values_of(def: &SearchParamDef, path: &str, leaf: &Value, out: &mut Vec<IndexValue>) {
    match def.kind {
        ParamKind::Token => token_values(def, path, leaf, out),
        ParamKind::String => string_values(leaf, out),
        ParamKind::Date => date_values(leaf, out),
        ParamKind::Reference => reference_values(def, leaf, out),
        ParamKind::Quantity => quantity_values(leaf, out),
        ParamKind::Number => {
            if let Value::Number(n) = leaf
                && let Some((value, lo, hi)) = decimal_range(&n.to_string())
            {
                out.push(IndexValue::Number { value, lo, hi });
            }
        }
        ParamKind::Uri => {
            if let Some(uri) = leaf.as_str().filter(|s| !s.is_empty()) {
                out.push(IndexValue::Uri {
                    uri: uri.to_owned(),
                });
            }
        }
    }
}

/// An array's items, or the value itself.
fn elements(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) => items,
        other => std::slice::from_ref(other),
    }
}

fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn token(system: Option<String>, code: Option<String>) -> Option<IndexValue> {
    (system.is_some() || code.is_some()).then_some(IndexValue::Token { system, code })
}

fn token_values(def: &SearchParamDef, path: &str, leaf: &Value, out: &mut Vec<IndexValue>) {
    // R4 defines Patient `deceased` as "deceased[x] exists and is not false": a death date means true.
    if def.name == "deceased" && path == "deceasedDateTime" {
        if leaf.is_string() {
            out.push(IndexValue::Token {
                system: None,
                code: Some("true".to_owned()),
            });
        }
        return;
    }
    let value = match leaf {
        Value::String(s) if !s.is_empty() => token(None, Some(s.clone())),
        Value::Bool(b) => token(None, Some(b.to_string())),
        Value::Number(n) => token(None, Some(n.to_string())),
        Value::Object(o) => {
            if let Some(codings) = o.get("coding") {
                for coding in elements(codings) {
                    if let Value::Object(c) = coding {
                        out.extend(token(text(c, "system"), text(c, "code")));
                    }
                }
                return;
            }
            if path.ends_with("telecom") {
                contact_point(def, o)
            } else if o.contains_key("code") || !o.contains_key("value") {
                token(text(o, "system"), text(o, "code"))
            } else {
                token(text(o, "system"), text(o, "value"))
            }
        }
        _ => None,
    };
    out.extend(value);
}

/// A ContactPoint indexes its value alone; `phone` and `email` only see their own kind of contact.
fn contact_point(def: &SearchParamDef, o: &Map<String, Value>) -> Option<IndexValue> {
    let wanted = match def.name {
        "phone" => Some("phone"),
        "email" => Some("email"),
        _ => None,
    };
    if wanted.is_some_and(|w| o.get("system").and_then(Value::as_str) != Some(w)) {
        return None;
    }
    token(None, text(o, "value"))
}

/// The parts of a HumanName and of an Address that string search looks at.
const STRING_PARTS: &[&str] = &[
    "family",
    "given",
    "prefix",
    "suffix",
    "text",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

fn string_values(leaf: &Value, out: &mut Vec<IndexValue>) {
    let mut push = |s: &str| {
        let norm = normalize_string(s);
        if !norm.is_empty() {
            out.push(IndexValue::String {
                norm,
                exact: s.to_owned(),
            });
        }
    };
    match leaf {
        Value::String(s) => push(s),
        Value::Object(o) => {
            for part in STRING_PARTS {
                for item in o.get(*part).map(elements).unwrap_or_default() {
                    if let Some(s) = item.as_str() {
                        push(s);
                    }
                }
            }
        }
        _ => {}
    }
}

fn date_values(leaf: &Value, out: &mut Vec<IndexValue>) {
    let mut push = |(lo, hi): (i64, i64)| out.push(IndexValue::Date { lo, hi });
    match leaf {
        Value::String(s) => {
            if let Some(r) = parse_range(s) {
                push((r.lo, r.hi));
            }
        }
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => {
            if let Some(range) = period(o) {
                push(range);
            }
        }
        Value::Object(o) => {
            // A Timing: only its explicit events and outer bounds are searchable, not the schedule.
            for event in o.get("event").map(elements).unwrap_or_default() {
                if let Some(r) = event.as_str().and_then(parse_range) {
                    push((r.lo, r.hi));
                }
            }
            let bounds = o.get("repeat").and_then(|r| r.get("boundsPeriod"));
            if let Some(range) = bounds.and_then(Value::as_object).and_then(period) {
                push(range);
            }
        }
        _ => {}
    }
}

fn period(o: &Map<String, Value>) -> Option<(i64, i64)> {
    let (start, end) = (o.get("start"), o.get("end"));
    if start.is_none() && end.is_none() {
        return None;
    }
    let lo = match start {
        Some(v) => parse_range(v.as_str()?)?.lo,
        None => i64::MIN,
    };
    let hi = match end {
        Some(v) => parse_range(v.as_str()?)?.hi,
        None => i64::MAX,
    };
    (lo <= hi).then_some((lo, hi))
}

fn reference_values(def: &SearchParamDef, leaf: &Value, out: &mut Vec<IndexValue>) {
    match leaf {
        Value::Object(o) => {
            let Some(url) = o.get("reference").and_then(Value::as_str) else {
                return;
            };
            if url.trim().is_empty() || url.starts_with('#') {
                return;
            }
            let (target_type, target_id) = match split_reference(url) {
                Some((t, id)) => (Some(t.to_owned()), Some(id.to_owned())),
                None => (None, None),
            };
            if let Some(t) = &target_type
                && !def.targets.is_empty()
                && !def.targets.contains(&t.as_str())
            {
                return;
            }
            out.push(IndexValue::Reference {
                target_type,
                target_id,
                url: url.to_owned(),
            });
        }
        Value::String(canonical) if !canonical.is_empty() => out.push(IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: canonical.clone(),
        }),
        _ => {}
    }
}

/// The type and id a literal reference points at, when it is `Type/id` or an absolute URL ending
/// in `/Type/id`, either optionally followed by `/_history/version`.
fn split_reference(url: &str) -> Option<(&str, &str)> {
    let segments: Vec<&str> = url.split('/').collect();
    let segments = match segments.as_slice() {
        [rest @ .., "_history", _] => rest,
        all => all,
    };
    let absolute = url.contains("://");
    let (t, id) = match segments {
        [t, id] if !absolute => (*t, *id),
        // scheme, empty authority separator, host, then at least Type and id.
        [_, _, _, .., t, id] if absolute => (*t, *id),
        _ => return None,
    };
    (is_type_name(t) && is_id(id)).then_some((t, id))
}

fn is_type_name(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
        && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The R4 id grammar: 1 to 64 letters, digits, '-' and '.'.
fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

struct Measured {
    value: f64,
    lo: f64,
    hi: f64,
    system: Option<String>,
    code: Option<String>,
    unit: Option<String>,
}

fn measured(o: &Map<String, Value>) -> Option<Measured> {
    let Some(Value::Number(n)) = o.get("value") else {
        return None;
    };
    let (value, mut lo, mut hi) = decimal_range(&n.to_string())?;
    match o.get("comparator").and_then(Value::as_str) {
        Some("<" | "<=") => lo = f64::MIN,
        Some(">" | ">=") => hi = f64::MAX,
        _ => {}
    }
    Some(Measured {
        value,
        lo,
        hi,
        system: text(o, "system"),
        code: text(o, "code"),
        unit: text(o, "unit"),
    })
}

fn quantity_values(leaf: &Value, out: &mut Vec<IndexValue>) {
    let Value::Object(o) = leaf else {
        return;
    };
    let q = if o.contains_key("value") {
        measured(o)
    } else {
        range(o)
    };
    if let Some(q) = q {
        out.push(IndexValue::Quantity {
            value: q.value,
            lo: q.lo,
            hi: q.hi,
            system: q.system,
            code: q.code,
            unit: q.unit,
        });
    }
}

/// A Range as one quantity spanning from its low to its high; the missing side is open.
fn range(o: &Map<String, Value>) -> Option<Measured> {
    let side = |key: &str| o.get(key).and_then(Value::as_object).and_then(measured);
    let (low, high) = (side("low"), side("high"));
    let first = low.as_ref().or(high.as_ref())?;
    Some(Measured {
        value: first.value,
        lo: low.as_ref().map_or(f64::MIN, |l| l.lo),
        hi: high.as_ref().map_or(f64::MAX, |h| h.hi),
        system: first.system.clone(),
        code: first.code.clone(),
        unit: first.unit.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::fhir::datetime::parse_range;
    use serde_json::json;
    use std::path::{Path, PathBuf};

    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/r4-examples")
    }

    fn fixture(relative: &str) -> Value {
        let text = std::fs::read_to_string(examples_dir().join(relative)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn values(entries: &[IndexEntry], param: &str) -> Vec<IndexValue> {
        entries
            .iter()
            .filter(|e| e.param == param)
            .map(|e| e.value.clone())
            .collect()
    }

    fn tok(system: Option<&str>, code: &str) -> IndexValue {
        IndexValue::Token {
            system: system.map(str::to_owned),
            code: Some(code.to_owned()),
        }
    }

    fn reference(t: &str, id: &str) -> IndexValue {
        IndexValue::Reference {
            target_type: Some(t.to_owned()),
            target_id: Some(id.to_owned()),
            url: format!("{t}/{id}"),
        }
    }

    fn string(exact: &str) -> IndexValue {
        IndexValue::String {
            norm: normalize_string(exact),
            exact: exact.to_owned(),
        }
    }

    fn date(lo: i64, hi: i64) -> IndexValue {
        IndexValue::Date { lo, hi }
    }

    fn day(s: &str) -> IndexValue {
        let r = parse_range(s).unwrap();
        date(r.lo, r.hi)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    struct Q {
        value: f64,
        lo: f64,
        hi: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    }

    /// The single quantity indexed for `param`.
    fn one_quantity(entries: &[IndexEntry], param: &str) -> Q {
        match values(entries, param).as_slice() {
            [
                IndexValue::Quantity {
                    value,
                    lo,
                    hi,
                    system,
                    code,
                    unit,
                },
            ] => Q {
                value: *value,
                lo: *lo,
                hi: *hi,
                system: system.clone(),
                code: code.clone(),
                unit: unit.clone(),
            },
            other => panic!("one quantity expected for {param}, got {other:?}"),
        }
    }

    #[test]
    fn token_search_indexes_every_coding_of_a_codeable_concept() {
        let entries = extract(
            "Observation",
            &fixture("Observation/Observation-example.json"),
        );
        assert_eq!(
            values(&entries, "code"),
            [
                tok(Some("http://loinc.org"), "29463-7"),
                tok(Some("http://loinc.org"), "3141-9"),
                tok(Some("http://snomed.info/sct"), "27113001"),
                tok(
                    Some("http://acme.org/devices/clinical-codes"),
                    "body-weight"
                ),
            ]
        );
        assert_eq!(
            values(&entries, "category"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/observation-category"),
                "vital-signs"
            )]
        );
        assert_eq!(values(&entries, "status"), [tok(None, "final")]);
        assert_eq!(values(&entries, "combo-code").len(), 4);
    }

    #[test]
    fn observation_value_quantity_keeps_unit_and_precision_range() {
        let entries = extract(
            "Observation",
            &fixture("Observation/Observation-example.json"),
        );
        let q = one_quantity(&entries, "value-quantity");
        assert!(close(q.value, 185.0) && close(q.lo, 184.5) && close(q.hi, 185.5));
        assert_eq!(q.system.as_deref(), Some("http://unitsofmeasure.org"));
        assert_eq!(q.code.as_deref(), Some("[lb_av]"));
        assert_eq!(q.unit.as_deref(), Some("lbs"));
    }

    #[test]
    fn observation_subject_date_and_encounter_are_indexed() {
        let entries = extract(
            "Observation",
            &fixture("Observation/Observation-example.json"),
        );
        assert_eq!(
            values(&entries, "subject"),
            [reference("Patient", "example")]
        );
        assert_eq!(
            values(&entries, "patient"),
            [reference("Patient", "example")]
        );
        assert_eq!(
            values(&entries, "encounter"),
            [reference("Encounter", "example")]
        );
        assert_eq!(values(&entries, "date"), [day("2016-03-28")]);
        assert!(
            entries
                .iter()
                .all(|e| e.param != "_id" && e.param != "_lastUpdated")
        );
    }

    #[test]
    fn observation_period_components_and_profiles_are_indexed() {
        let f003 = extract("Observation", &fixture("Observation/Observation-f003.json"));
        let start = parse_range("2013-04-02T10:30:10+01:00").unwrap().lo;
        let end = parse_range("2013-04-05T10:30:10+01:00").unwrap().hi;
        assert_eq!(values(&f003, "date"), [date(start, end)]);
        let q = one_quantity(&f003, "value-quantity");
        assert!(close(q.lo, 6.15) && close(q.hi, 6.25));

        let bp = extract(
            "Observation",
            &fixture("Observation/Observation-blood-pressure-dar.json"),
        );
        assert!(values(&bp, "component-code").contains(&tok(Some("http://loinc.org"), "8480-6")));
        assert!(values(&bp, "component-code").contains(&tok(Some("http://loinc.org"), "8462-4")));
        assert_eq!(values(&bp, "component-value-quantity").len(), 1);
        assert_eq!(
            values(&bp, "component-data-absent-reason"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/data-absent-reason"),
                "not-performed"
            )]
        );
        assert!(values(&bp, "data-absent-reason").is_empty());
        assert_eq!(
            values(&bp, "_profile"),
            [IndexValue::Uri {
                uri: "http://hl7.org/fhir/StructureDefinition/vitalsigns".to_owned()
            }]
        );
        assert_eq!(
            values(&bp, "identifier"),
            [tok(
                Some("urn:ietf:rfc:3986"),
                "urn:uuid:187e0c12-8dd2-67e2-99b2-bf273c878281"
            )]
        );
        assert_eq!(
            values(&bp, "performer"),
            [reference("Practitioner", "example")]
        );
    }

    #[test]
    fn patient_names_dates_identifiers_and_contacts_are_indexed() {
        let entries = extract("Patient", &fixture("Patient/Patient-f001.json"));
        assert_eq!(values(&entries, "family"), [string("van de Heuvel")]);
        assert_eq!(values(&entries, "given"), [string("Pieter")]);
        assert_eq!(
            values(&entries, "name"),
            [string("van de Heuvel"), string("Pieter"), string("MSc")]
        );
        assert_eq!(values(&entries, "birthdate"), [day("1944-11-17")]);
        assert_eq!(
            values(&entries, "identifier"),
            [
                tok(Some("urn:oid:2.16.840.1.113883.2.4.6.3"), "738472983"),
                IndexValue::Token {
                    system: Some("urn:oid:2.16.840.1.113883.2.4.6.3".to_owned()),
                    code: None
                },
            ]
        );
        assert_eq!(values(&entries, "phone"), [tok(None, "0648352638")]);
        assert_eq!(values(&entries, "email"), [tok(None, "p.heuvel@gmail.com")]);
        assert_eq!(
            values(&entries, "telecom"),
            [tok(None, "0648352638"), tok(None, "p.heuvel@gmail.com")]
        );
        assert_eq!(values(&entries, "gender"), [tok(None, "male")]);
        assert_eq!(values(&entries, "active"), [tok(None, "true")]);
        assert_eq!(values(&entries, "deceased"), [tok(None, "false")]);
        assert!(values(&entries, "death-date").is_empty());
        assert_eq!(values(&entries, "address-city"), [string("Amsterdam")]);
        assert_eq!(values(&entries, "address-postalcode"), [string("1024 RJ")]);
        assert_eq!(
            values(&entries, "address"),
            [
                string("Van Egmondkade 23"),
                string("Amsterdam"),
                string("1024 RJ"),
                string("NLD")
            ]
        );
        assert_eq!(values(&entries, "address-use"), [tok(None, "home")]);
        assert_eq!(
            values(&entries, "language"),
            [tok(Some("urn:ietf:bcp:47"), "nl")]
        );
        assert_eq!(
            values(&entries, "organization"),
            [reference("Organization", "f001")]
        );
    }

    #[test]
    fn a_death_date_marks_the_patient_deceased_and_is_searchable() {
        let patient = json!({
            "resourceType": "Patient",
            "name": [{"family": "Ádám", "given": ["Éva", "Mária"], "text": "Éva  Ádám"}],
            "deceasedDateTime": "2020-03-04T05:06:07Z",
            "link": [{"other": {"reference": "Patient/other"}, "type": "seealso"}],
            "generalPractitioner": [{"reference": "Location/not-a-gp"}, {"reference": "Practitioner/gp"}]
        });
        let entries = extract("Patient", &patient);
        assert_eq!(values(&entries, "deceased"), [tok(None, "true")]);
        assert_eq!(
            values(&entries, "death-date"),
            [day("2020-03-04T05:06:07Z")]
        );
        assert_eq!(
            values(&entries, "family"),
            [IndexValue::String {
                norm: "adam".to_owned(),
                exact: "Ádám".to_owned()
            }]
        );
        assert!(values(&entries, "name").contains(&IndexValue::String {
            norm: "eva adam".to_owned(),
            exact: "Éva  Ádám".to_owned()
        }));
        assert_eq!(values(&entries, "link"), [reference("Patient", "other")]);
        assert_eq!(
            values(&entries, "general-practitioner"),
            [reference("Practitioner", "gp")]
        );
    }

    #[test]
    fn medication_administration_skips_contained_references_and_keeps_open_periods() {
        let entries = extract(
            "MedicationAdministration",
            &fixture("MedicationAdministration/MedicationAdministration-medadmin0301.json"),
        );
        assert!(values(&entries, "medication").is_empty());
        assert!(values(&entries, "code").is_empty());
        assert_eq!(values(&entries, "patient"), [reference("Patient", "pat1")]);
        assert_eq!(
            values(&entries, "context"),
            [reference("Encounter", "f001")]
        );
        assert_eq!(
            values(&entries, "performer"),
            [reference("Practitioner", "f007")]
        );
        assert_eq!(
            values(&entries, "request"),
            [reference("MedicationRequest", "medrx0318")]
        );
        let start = parse_range("2015-01-15T14:30:00+01:00").unwrap().lo;
        assert_eq!(values(&entries, "effective-time"), [date(start, i64::MAX)]);
        assert_eq!(
            values(&entries, "reason-given"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/reason-medication-given"),
                "b"
            )]
        );
        assert_eq!(values(&entries, "status"), [tok(None, "in-progress")]);
    }

    #[test]
    fn medication_code_comes_from_medication_codeable_concept() {
        let admin = json!({
            "resourceType": "MedicationAdministration",
            "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6130"}]},
            "subject": {"reference": "Group/cohort"},
            "effectiveDateTime": "2024-05-06T10:00:00Z"
        });
        let entries = extract("MedicationAdministration", &admin);
        assert_eq!(
            values(&entries, "code"),
            [tok(
                Some("http://www.nlm.nih.gov/research/umls/rxnorm"),
                "6130"
            )]
        );
        assert!(values(&entries, "patient").is_empty());
        assert_eq!(values(&entries, "subject"), [reference("Group", "cohort")]);
    }

    #[test]
    fn encounter_class_period_and_participants_are_indexed() {
        let entries = extract("Encounter", &fixture("Encounter/Encounter-f001.json"));
        assert_eq!(
            values(&entries, "class"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"),
                "AMB"
            )]
        );
        assert_eq!(
            values(&entries, "practitioner"),
            [reference("Practitioner", "f002")]
        );
        assert_eq!(
            values(&entries, "participant"),
            [reference("Practitioner", "f002")]
        );
        assert_eq!(
            values(&entries, "service-provider"),
            [reference("Organization", "f001")]
        );
        assert_eq!(
            values(&entries, "identifier"),
            [tok(
                Some("http://www.amc.nl/zorgportal/identifiers/visits"),
                "v1451"
            )]
        );
        assert_eq!(
            values(&entries, "reason-code"),
            [tok(Some("http://snomed.info/sct"), "34068001")]
        );
        assert_eq!(values(&entries, "length").len(), 1);
        assert_eq!(values(&entries, "patient"), [reference("Patient", "f001")]);
    }

    #[test]
    fn condition_statuses_codes_and_onset_are_indexed() {
        let entries = extract("Condition", &fixture("Condition/Condition-example.json"));
        assert_eq!(
            values(&entries, "clinical-status"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/condition-clinical"),
                "active"
            )]
        );
        assert_eq!(
            values(&entries, "code"),
            [tok(Some("http://snomed.info/sct"), "39065001")]
        );
        assert_eq!(values(&entries, "category").len(), 2);
        assert_eq!(values(&entries, "onset-date"), [day("2012-05-24")]);
        assert_eq!(
            values(&entries, "body-site"),
            [tok(Some("http://snomed.info/sct"), "49521004")]
        );
    }

    #[test]
    fn condition_onset_age_ranges_span_low_to_high() {
        let condition = json!({
            "resourceType": "Condition",
            "subject": {"reference": "Patient/p"},
            "onsetRange": {"low": {"value": 20, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
                           "high": {"value": 30, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}},
            "abatementAge": {"value": 40, "comparator": ">", "code": "a"}
        });
        let entries = extract("Condition", &condition);
        let onset = one_quantity(&entries, "onset-age");
        assert!(close(onset.value, 20.0) && close(onset.lo, 19.5) && close(onset.hi, 30.5));
        assert_eq!(onset.code.as_deref(), Some("a"));
        let abatement = one_quantity(&entries, "abatement-age");
        assert!(close(abatement.lo, 39.5) && abatement.hi == f64::MAX);
    }

    #[test]
    fn careplan_activity_periods_and_contained_targets_are_handled() {
        let entries = extract("CarePlan", &fixture("CarePlan/CarePlan-integrate.json"));
        let start = parse_range("2012-09-10").unwrap().lo;
        let activity_dates = values(&entries, "activity-date");
        assert_eq!(activity_dates.len(), 4);
        assert!(activity_dates.contains(&date(start, i64::MAX)));
        assert!(
            activity_dates
                .iter()
                .all(|d| matches!(d, IndexValue::Date { hi: i64::MAX, .. }))
        );
        assert!(values(&entries, "condition").is_empty());
        assert!(values(&entries, "goal").is_empty());
        assert_eq!(values(&entries, "intent"), [tok(None, "plan")]);
        assert_eq!(values(&entries, "patient"), [reference("Patient", "1")]);
    }

    #[test]
    fn timings_index_each_event_and_their_bounds() {
        let plan = json!({
            "resourceType": "CarePlan",
            "activity": [{"detail": {"scheduledTiming": {
                "event": ["2024-05-06T10:00:00Z", "2024-05-07"],
                "repeat": {"boundsPeriod": {"start": "2024-05-01", "end": "2024-05-31"}}
            }}}],
            "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/ketamine|1.0"],
            "instantiatesUri": ["http://example.org/protocol"]
        });
        let entries = extract("CarePlan", &plan);
        let bounds = date(
            parse_range("2024-05-01").unwrap().lo,
            parse_range("2024-05-31").unwrap().hi,
        );
        assert_eq!(
            values(&entries, "activity-date"),
            [day("2024-05-06T10:00:00Z"), day("2024-05-07"), bounds]
        );
        assert_eq!(
            values(&entries, "instantiates-canonical"),
            [IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: "http://example.org/fhir/PlanDefinition/ketamine|1.0".to_owned()
            }]
        );
        assert_eq!(
            values(&entries, "instantiates-uri"),
            [IndexValue::Uri {
                uri: "http://example.org/protocol".to_owned()
            }]
        );
    }

    #[test]
    fn references_are_split_into_type_and_id_where_literal() {
        let obs = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Patient/123/_history/4"},
            "performer": [
                {"reference": "https://fhir.example.org/r4/Practitioner/abc"},
                {"reference": "urn:uuid:0b8e1a3c-1111-4c2b-9a60-1d0c5f9e2a11"},
                {"reference": "#contained"},
                {"identifier": {"system": "http://npi", "value": "1234"}},
                {"reference": ""},
                {"reference": "Patient?identifier=x|1"}
            ],
            "focus": [{"reference": "http://example.org/Patient"}],
            "hasMember": [{"reference": "Patient/not-a-member"}, {"reference": "Observation/m1"}]
        });
        let entries = extract("Observation", &obs);
        assert_eq!(
            values(&entries, "subject"),
            [IndexValue::Reference {
                target_type: Some("Patient".to_owned()),
                target_id: Some("123".to_owned()),
                url: "Patient/123/_history/4".to_owned()
            }]
        );
        assert_eq!(
            values(&entries, "performer"),
            [
                IndexValue::Reference {
                    target_type: Some("Practitioner".to_owned()),
                    target_id: Some("abc".to_owned()),
                    url: "https://fhir.example.org/r4/Practitioner/abc".to_owned()
                },
                IndexValue::Reference {
                    target_type: None,
                    target_id: None,
                    url: "urn:uuid:0b8e1a3c-1111-4c2b-9a60-1d0c5f9e2a11".to_owned()
                },
                IndexValue::Reference {
                    target_type: None,
                    target_id: None,
                    url: "Patient?identifier=x|1".to_owned()
                },
            ]
        );
        assert_eq!(
            values(&entries, "focus"),
            [IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: "http://example.org/Patient".to_owned()
            }]
        );
        assert_eq!(
            values(&entries, "has-member"),
            [reference("Observation", "m1")]
        );
    }

    #[test]
    fn a_subject_that_is_not_a_patient_is_not_indexed_as_patient() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Group/g1"}});
        let entries = extract("Observation", &obs);
        assert_eq!(values(&entries, "subject"), [reference("Group", "g1")]);
        assert!(values(&entries, "patient").is_empty());
    }

    #[test]
    fn meta_tags_security_labels_profiles_and_source_are_indexed() {
        let goal = json!({
            "resourceType": "Goal",
            "id": "g1",
            "meta": {
                "lastUpdated": "2024-05-06T10:00:00Z",
                "source": "#clinic-a",
                "profile": ["http://example.org/StructureDefinition/goal"],
                "tag": [{"system": "http://example.org/tags", "code": "kap"}],
                "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]
            },
            "lifecycleStatus": "active",
            "achievementStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/goal-achievement", "code": "improving"}]},
            "subject": {"reference": "Patient/p1"},
            "startDate": "2024-05-01",
            "target": [{"dueDate": "2024-08-01"}, {"dueDuration": {"value": 3, "unit": "months"}}]
        });
        let entries = extract("Goal", &goal);
        assert_eq!(
            values(&entries, "_tag"),
            [tok(Some("http://example.org/tags"), "kap")]
        );
        assert_eq!(
            values(&entries, "_security"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality"),
                "R"
            )]
        );
        assert_eq!(
            values(&entries, "_source"),
            [IndexValue::Uri {
                uri: "#clinic-a".to_owned()
            }]
        );
        assert_eq!(values(&entries, "_profile").len(), 1);
        assert!(values(&entries, "_id").is_empty());
        assert!(values(&entries, "_lastUpdated").is_empty());
        assert_eq!(values(&entries, "lifecycle-status"), [tok(None, "active")]);
        assert_eq!(values(&entries, "achievement-status").len(), 1);
        assert_eq!(values(&entries, "start-date"), [day("2024-05-01")]);
        assert_eq!(values(&entries, "target-date"), [day("2024-08-01")]);
        assert_eq!(values(&entries, "patient"), [reference("Patient", "p1")]);
    }

    #[test]
    fn group_members_characteristics_and_booleans_are_indexed() {
        let group = json!({
            "resourceType": "Group",
            "type": "person",
            "actual": true,
            "code": {"coding": [{"system": "http://example.org/cohorts", "code": "kap-2024"}]},
            "characteristic": [{
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]},
                "valueBoolean": true,
                "exclude": false
            }],
            "member": [{"entity": {"reference": "Patient/a"}}, {"entity": {"reference": "Patient/b"}}],
            "managingEntity": {"reference": "Organization/clinic"}
        });
        let entries = extract("Group", &group);
        assert_eq!(values(&entries, "actual"), [tok(None, "true")]);
        assert_eq!(values(&entries, "type"), [tok(None, "person")]);
        assert_eq!(
            values(&entries, "characteristic"),
            [tok(Some("http://snomed.info/sct"), "35489007")]
        );
        assert_eq!(values(&entries, "value"), [tok(None, "true")]);
        assert_eq!(values(&entries, "exclude"), [tok(None, "false")]);
        assert_eq!(
            values(&entries, "member"),
            [reference("Patient", "a"), reference("Patient", "b")]
        );
        assert_eq!(
            values(&entries, "managing-entity"),
            [reference("Organization", "clinic")]
        );
    }

    #[test]
    fn provenance_targets_agents_and_signatures_are_indexed() {
        let admin = fixture("MedicationAdministration/MedicationAdministration-medadmin0301.json");
        let provenance = admin["contained"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resourceType"] == "Provenance")
            .unwrap();
        let entries = extract("Provenance", provenance);
        assert_eq!(
            values(&entries, "target"),
            [reference("ServiceRequest", "physiotherapy")]
        );
        assert!(values(&entries, "patient").is_empty());
        assert_eq!(
            values(&entries, "agent"),
            [reference("Practitioner", "example")]
        );
        assert_eq!(values(&entries, "recorded"), [day("2017-02-01T17:23:07Z")]);
        assert_eq!(
            values(&entries, "signature-type"),
            [tok(
                Some("urn:iso-astm:E1762-95:2013"),
                "1.2.840.10065.1.12.1.1"
            )]
        );
        assert_eq!(
            values(&entries, "agent-role"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/v3-ParticipationType"),
                "AUT"
            )]
        );
    }

    #[test]
    fn audit_event_patient_comes_from_agents_and_entities() {
        let event = json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R",
            "recorded": "2024-05-06T10:00:00.123Z",
            "outcome": "0",
            "agent": [
                {"who": {"reference": "Practitioner/dr"}, "altId": "dr-login", "name": "Dr Who",
                 "requestor": true, "policy": ["http://example.org/policy/1"],
                 "network": {"address": "10.0.0.7", "type": "2"},
                 "role": [{"coding": [{"system": "http://example.org/roles", "code": "clinician"}]}]},
                {"who": {"reference": "Patient/p1"}, "requestor": false}
            ],
            "source": {"site": "clinic-a", "observer": {"reference": "Device/gw"}},
            "entity": [
                {"what": {"reference": "Patient/p2"}, "name": "Chart",
                 "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                 "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}},
                {"what": {"reference": "Observation/o1"}}
            ]
        });
        let entries = extract("AuditEvent", &event);
        assert_eq!(
            values(&entries, "patient"),
            [reference("Patient", "p1"), reference("Patient", "p2")]
        );
        assert_eq!(
            values(&entries, "agent"),
            [reference("Practitioner", "dr"), reference("Patient", "p1")]
        );
        assert_eq!(
            values(&entries, "entity"),
            [reference("Patient", "p2"), reference("Observation", "o1")]
        );
        assert_eq!(values(&entries, "date"), [day("2024-05-06T10:00:00.123Z")]);
        assert_eq!(values(&entries, "altid"), [tok(None, "dr-login")]);
        assert_eq!(values(&entries, "site"), [tok(None, "clinic-a")]);
        assert_eq!(values(&entries, "source"), [reference("Device", "gw")]);
        assert_eq!(values(&entries, "address"), [string("10.0.0.7")]);
        assert_eq!(values(&entries, "agent-name"), [string("Dr Who")]);
        assert_eq!(values(&entries, "entity-name"), [string("Chart")]);
        assert_eq!(values(&entries, "action"), [tok(None, "R")]);
        assert_eq!(values(&entries, "outcome"), [tok(None, "0")]);
        assert_eq!(
            values(&entries, "type"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/audit-event-type"),
                "rest"
            )]
        );
        assert_eq!(values(&entries, "subtype").len(), 1);
        assert_eq!(values(&entries, "entity-type").len(), 1);
        assert_eq!(values(&entries, "entity-role").len(), 1);
        assert_eq!(values(&entries, "agent-role").len(), 1);
        assert_eq!(
            values(&entries, "policy"),
            [IndexValue::Uri {
                uri: "http://example.org/policy/1".to_owned()
            }]
        );
    }

    #[test]
    fn organization_names_include_aliases() {
        let org = json!({
            "resourceType": "Organization",
            "active": true,
            "name": "Clínica Norte",
            "alias": ["North Clinic"],
            "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}],
            "partOf": {"reference": "Organization/network"},
            "address": [{"line": ["1 Main St"], "city": "Springfield"}]
        });
        let entries = extract("Organization", &org);
        assert_eq!(
            values(&entries, "name"),
            [
                IndexValue::String {
                    norm: "clinica norte".to_owned(),
                    exact: "Clínica Norte".to_owned()
                },
                string("North Clinic")
            ]
        );
        assert_eq!(
            values(&entries, "partof"),
            [reference("Organization", "network")]
        );
        assert_eq!(values(&entries, "address-city"), [string("Springfield")]);
        assert_eq!(values(&entries, "type").len(), 1);
    }

    #[test]
    fn duplicates_are_removed_but_each_param_keeps_its_own_entry() {
        let obs = json!({
            "resourceType": "Observation",
            "code": {"coding": [
                {"system": "http://loinc.org", "code": "8867-4"},
                {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}
            ]},
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}}]
        });
        let entries = extract("Observation", &obs);
        let heart_rate = tok(Some("http://loinc.org"), "8867-4");
        for param in ["code", "combo-code", "component-code"] {
            assert_eq!(values(&entries, param), std::slice::from_ref(&heart_rate));
        }
    }

    #[test]
    fn equal_quantities_are_one_entry_and_different_ones_stay() {
        // Parsed from text: 1.50 keeps its precision (a `json!` literal would not).
        let obs: Value = serde_json::from_str(
            r#"{"resourceType": "Observation",
                "valueQuantity": {"value": 1.50, "system": "http://unitsofmeasure.org", "code": "mg"},
                "component": [
                  {"valueQuantity": {"value": 1.50, "system": "http://unitsofmeasure.org", "code": "mg"}},
                  {"valueQuantity": {"value": 1.5, "system": "http://unitsofmeasure.org", "code": "mg"}},
                  {"valueQuantity": {"value": 2, "system": "http://unitsofmeasure.org", "code": "mg"}}]}"#,
        )
        .unwrap();
        let entries = extract("Observation", &obs);
        assert_eq!(values(&entries, "value-quantity").len(), 1);
        // 1.50 and 1.5 are the same number with different precision ranges: two entries, and 2 a third.
        assert_eq!(values(&entries, "component-value-quantity").len(), 3);
    }

    /// The patients of a resource as the index sees them: its compartment parameters' `Patient` references.
    fn patients_through_the_index(resource_type: &str, resource: &Value) -> Vec<String> {
        let params = registry::patient_compartment_params(resource_type);
        let mut out: Vec<String> = extract_params(resource_type, resource, |p| params.contains(&p))
            .into_iter()
            .filter_map(|e| match e.value {
                IndexValue::Reference {
                    target_type: Some(t),
                    target_id: Some(id),
                    ..
                } if t == "Patient" => Some(id),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn patient_references_agree_with_the_index_on_every_example_and_odd_references() {
        let mut resources: Vec<Value> = Vec::new();
        for dir in std::fs::read_dir(examples_dir()).unwrap() {
            for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
                let value: Value = serde_json::from_str(&text).unwrap();
                if let Some(entries) = value.get("entry").and_then(Value::as_array) {
                    resources.extend(entries.iter().filter_map(|e| e.get("resource").cloned()));
                }
                resources.push(value);
            }
        }
        let odd = [
            "Patient/p1",
            "Patient/p1/_history/3",
            "https://ehr.example.org/fhir/Patient/p2",
            "https://ehr.example.org/fhir/Patient/p2/_history/1",
            "#p3",
            "Patient",
            "Group/g1",
            "",
            "Patient/p1",
        ];
        let refs: Vec<Value> = odd.iter().map(|r| json!({"reference": r})).collect();
        for (t, member) in [
            (
                "Observation",
                json!({"subject": refs[0], "performer": refs}),
            ),
            ("CarePlan", json!({"subject": refs[2], "performer": refs})),
            (
                "Group",
                json!({"member": refs.iter().map(|r| json!({"entity": r})).collect::<Vec<_>>()}),
            ),
            (
                "MedicationAdministration",
                json!({"subject": "Patient/p9", "performer": [{"actor": refs[3]}]}),
            ),
            (
                "Condition",
                json!({"subject": {"reference": 7}, "asserter": refs[1]}),
            ),
        ] {
            let mut r = member;
            r["resourceType"] = json!(t);
            resources.push(r);
        }
        let mut with_patients = 0;
        for r in &resources {
            let t = r["resourceType"].as_str().unwrap_or_default();
            let expected = patients_through_the_index(t, r);
            let got = patient_references(t, r, registry::patient_compartment_params(t));
            assert_eq!(got, expected, "{t} {}", r.get("id").unwrap_or(&Value::Null));
            with_patients += usize::from(!got.is_empty());
        }
        assert!(
            resources.len() > 100 && with_patients > 20,
            "{} resources, {with_patients}",
            resources.len()
        );
        let observation = &resources[resources.len() - 5];
        assert_eq!(
            patient_references("Observation", observation, &["subject", "performer"]),
            ["p1", "p2"]
        );
    }

    #[test]
    fn odd_input_never_panics() {
        let odd = [
            json!(null),
            json!(42),
            json!("Patient"),
            json!([{"resourceType": "Patient"}]),
            json!({"name": "not-an-array", "birthDate": 1974, "telecom": [null, 3, {"value": 5}],
                   "identifier": [{"value": {"x": 1}}], "link": [{"other": "Patient/1"}],
                   "generalPractitioner": {"reference": 7}, "address": [[{"city": "Nested"}]],
                   "deceasedDateTime": "not-a-date", "meta": {"tag": "x", "profile": [1, null]}}),
            json!({"valueQuantity": {"value": "5.4"}, "effectivePeriod": {"start": null},
                   "effectiveTiming": {"event": [1, "bad"], "repeat": {"boundsPeriod": "x"}},
                   "component": [{"valueQuantity": {"value": 1e300}}, null],
                   "valueRange": {"low": {}}, "subject": {"reference": "//"}}),
        ];
        for t in registry::SUPPORTED_TYPES.iter().chain(&["Unknown"]) {
            for value in &odd {
                let _ = extract(t, value);
            }
        }
        let nested = json!({"address": [[{"city": "Nested"}]]});
        assert_eq!(
            values(&extract("Patient", &nested), "address-city"),
            [string("Nested")]
        );
    }

    #[test]
    fn unsupported_types_get_the_common_parameters_only() {
        let med = json!({
            "resourceType": "Medication",
            "meta": {"tag": [{"code": "x"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}
        });
        assert_eq!(
            extract("Medication", &med),
            [IndexEntry {
                param: "_tag",
                value: tok(None, "x")
            }]
        );
    }

    /// Every supported resource in the R4 examples: top-level files, Bundle entries and contained
    /// resources, each with where it came from and whether it is a file of its own.
    fn every_example_resource() -> Vec<(String, bool, Value)> {
        fn collect(
            origin: &str,
            top: bool,
            resource: &Value,
            out: &mut Vec<(String, bool, Value)>,
        ) {
            for entry in resource["entry"].as_array().into_iter().flatten() {
                collect(origin, false, &entry["resource"], out);
            }
            for contained in resource["contained"].as_array().into_iter().flatten() {
                collect(origin, false, contained, out);
            }
            if let Some(t) = resource["resourceType"].as_str()
                && registry::is_supported_type(t)
            {
                out.push((format!("{origin} ({t})"), top, resource.clone()));
            }
        }
        let mut out = Vec::new();
        for dir in std::fs::read_dir(examples_dir()).unwrap() {
            for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                let resource: Value = serde_json::from_str(&text).unwrap();
                collect(&path.display().to_string(), true, &resource, &mut out);
            }
        }
        out
    }

    #[test]
    fn extraction_over_every_example_of_a_supported_type_never_panics_and_yields_entries() {
        let examples = every_example_resource();
        assert!(
            examples.len() > 100,
            "only {} examples found",
            examples.len()
        );
        let mut empty_nested = 0;
        for (origin, top, resource) in &examples {
            let t = resource["resourceType"].as_str().unwrap();
            let entries = extract(t, resource);
            // Some Bundle entries are bare narrative-only stubs with nothing to index.
            if entries.is_empty() {
                assert!(!top, "{origin} yielded no entries");
                empty_nested += 1;
            }
            for entry in &entries {
                assert!(
                    registry::find(t, entry.param).is_some(),
                    "{origin}: {}",
                    entry.param
                );
                match &entry.value {
                    IndexValue::Date { lo, hi } => assert!(lo <= hi, "{origin}"),
                    IndexValue::Quantity { value, lo, hi, .. }
                    | IndexValue::Number { value, lo, hi } => {
                        assert!(lo <= value && value <= hi, "{origin}");
                    }
                    IndexValue::String { norm, .. } => assert!(!norm.is_empty(), "{origin}"),
                    _ => {}
                }
            }
        }
        assert!(
            empty_nested * 20 < examples.len(),
            "{empty_nested} resources yielded nothing"
        );
    }

    #[test]
    fn decimal_ranges_follow_the_precision_written() {
        let check = |text: &str, value: f64, lo: f64, hi: f64| {
            let (v, l, h) = decimal_range(text).unwrap();
            assert_eq!((v, l, h), (value, lo, hi), "{text}");
        };
        check("5.40", 5.4, 5.395, 5.405);
        check("100", 100.0, 99.5, 100.5);
        check("100.00", 100.0, 99.995, 100.005);
        check("0.1", 0.1, 0.05, 0.15);
        check("-5.40", -5.4, -5.405, -5.395);
        check("1.5e2", 150.0, 145.0, 155.0);
        check("1e2", 100.0, 50.0, 150.0);
        check("2.5E-3", 0.0025, 0.00245, 0.00255);
        check("0", 0.0, -0.5, 0.5);
        check("0.000", 0.0, -0.0005, 0.0005);
        check("+7", 7.0, 6.5, 7.5);
        // Finer than f64 can tell apart: the bounds collapse onto the value but stay ordered.
        let (v, l, h) = decimal_range("66.899999999999991").unwrap();
        assert!(l <= v && v <= h && h - l < 1e-13);
        let (v, l, h) = decimal_range("1234567890123456789012345678901234567890.5").unwrap();
        assert!(l <= v && v <= h);
    }

    #[test]
    fn malformed_decimals_have_no_range() {
        for bad in [
            "", "-", "abc", "1.", ".5", "1e", "e5", "--1", "1.2.3", "NaN", "inf", "1e400", " 1",
            "1,5",
        ] {
            assert!(decimal_range(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn normalized_strings_are_lower_case_accent_free_and_single_spaced() {
        assert_eq!(normalize_string("Ádám  Smith"), "adam smith");
        assert_eq!(normalize_string("  Müller\t\nStraße "), "muller strasse");
        assert_eq!(normalize_string("O'Brien-Lee"), "o'brien-lee");
        assert_eq!(normalize_string("Zoë Ñuñez"), "zoe nunez");
        assert_eq!(normalize_string(""), "");
    }
}
