//! Bundles the server returns: searchset with paging links, history, batch/transaction responses
//! (https://hl7.org/fhir/R4/bundle.html), and the `_elements` / `_summary` views of a resource.

use serde_json::{Map, Value, json};

use crate::fhir::datetime::{format_instant, now_micros};
use crate::fhir::outcome::operation_outcome;
use crate::fhir::search::{Cursor, SearchQuery, Summary};
use crate::service::WriteOutcome;
use crate::store::search_sql::SearchPage;
use crate::store::{HistoryEntry, StoredResource};

fn query_string(params: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .finish()
}

fn link(relation: &str, url: String) -> Value {
    json!({ "relation": relation, "url": url })
}

/// `base/Type?params` (+ `_cursor`).
pub fn search_url(
    base: &str,
    resource_type: &str,
    params: &[(String, String)],
    cursor: Option<&Cursor>,
) -> String {
    let mut all: Vec<(String, String)> = params.to_vec();
    if let Some(c) = cursor {
        all.push(("_cursor".into(), c.encode()));
    }
    let qs = query_string(&all);
    if qs.is_empty() {
        format!("{base}/{resource_type}")
    } else {
        format!("{base}/{resource_type}?{qs}")
    }
}

/// Applies `_elements` (keeping mandatory `resourceType`, `id`, `meta`) and `_summary=data|text`, marking the
/// result SUBSETTED as the spec asks (https://hl7.org/fhir/R4/search.html#elements).
pub fn view(resource: Value, q: &SearchQuery) -> Value {
    let keep: Option<Vec<&str>> = match (&q.elements, q.summary) {
        (Some(list), _) => Some(list.iter().map(String::as_str).collect()),
        (None, Summary::Text) => Some(vec!["text"]),
        _ => None,
    };
    let mut resource = resource;
    let Some(obj) = resource.as_object_mut() else {
        return resource;
    };
    let mut changed = false;
    if let Some(keep) = keep {
        let before = obj.len();
        obj.retain(|k, _| {
            matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.contains(&k.as_str())
        });
        changed = obj.len() != before;
    } else if q.summary == Summary::Data {
        changed = obj.remove("text").is_some();
    }
    if changed {
        let meta = obj
            .entry("meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta
                .entry("tag")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": "subsetted"
                }));
            }
        }
    }
    resource
}

fn full_url(base: &str, r: &StoredResource) -> String {
    format!("{base}/{}/{}", r.res_type, r.id)
}

/// True when a search returns its resources exactly as stored (no `_elements` or `_summary` view).
fn stored_view(q: &SearchQuery) -> bool {
    q.elements.is_none() && !matches!(q.summary, Summary::Text | Summary::Data)
}

/// The searchset Bundle of [`searchset`] as JSON text, with each resource's stored text copied in as it is instead of
/// parsed and written out again (the bulk of a search's cost otherwise). Same members in the same order; falls back
/// to [`searchset`] when a view (`_elements`, `_summary`) has to change the resources.
pub fn searchset_text(base: &str, q: &SearchQuery, page: &SearchPage) -> String {
    if !stored_view(q) || q.summary == Summary::Count {
        return searchset(base, q, page).to_string();
    }
    let mut head = searchset(
        base,
        q,
        &SearchPage {
            matches: Vec::new(),
            includes: Vec::new(),
            total: page.total,
            next: page.next.clone(),
            prev: page.prev.clone(),
        },
    );
    // The warnings' OperationOutcome entry is the only entry built as a value.
    let outcome = head
        .as_object_mut()
        .and_then(|b| b.remove("entry"))
        .and_then(|e| match e {
            Value::Array(mut list) => list.pop(),
            _ => None,
        });
    let mut out = head.to_string();
    let stored: Vec<(&StoredResource, &str, &str)> = page
        .matches
        .iter()
        .map(|r| (r, "match"))
        .chain(page.includes.iter().map(|r| (r, "include")))
        .filter_map(|(r, mode)| r.content.as_deref().map(|c| (r, c, mode)))
        .collect();
    if stored.is_empty() && outcome.is_none() {
        return out;
    }
    // `head` is an object: its closing brace makes way for the entries.
    out.pop();
    out.reserve(
        stored
            .iter()
            .map(|(_, c, _)| c.len() + base.len() + 96)
            .sum(),
    );
    out.push_str(",\"entry\":[");
    for (i, (r, content, mode)) in stored.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"fullUrl\":");
        out.push_str(&Value::String(full_url(base, r)).to_string());
        out.push_str(",\"resource\":");
        out.push_str(content);
        out.push_str(",\"search\":{\"mode\":\"");
        out.push_str(mode);
        out.push_str("\"}}");
    }
    if let Some(outcome) = outcome {
        if !stored.is_empty() {
            out.push(',');
        }
        out.push_str(&outcome.to_string());
    }
    out.push_str("]}");
    out
}

/// A searchset Bundle for one page (https://hl7.org/fhir/R4/http.html#search).
pub fn searchset(base: &str, q: &SearchQuery, page: &SearchPage) -> Value {
    let mut links = vec![link(
        "self",
        search_url(base, &q.resource_type, &q.link_params, None),
    )];
    if let Some(next) = &page.next {
        links.push(link(
            "next",
            search_url(base, &q.resource_type, &q.link_params, Some(next)),
        ));
    }
    if let Some(prev) = &page.prev {
        links.push(link(
            "previous",
            search_url(base, &q.resource_type, &q.link_params, Some(prev)),
        ));
    }
    let mut entries: Vec<Value> = Vec::new();
    if q.summary != Summary::Count {
        for r in &page.matches {
            if let Some(json) = r.json() {
                entries.push(json!({
                    "fullUrl": full_url(base, r),
                    "resource": view(json, q),
                    "search": { "mode": "match" }
                }));
            }
        }
        for r in &page.includes {
            if let Some(json) = r.json() {
                entries.push(json!({
                    "fullUrl": full_url(base, r),
                    "resource": json,
                    "search": { "mode": "include" }
                }));
            }
        }
        if !q.warnings.is_empty() {
            entries.push(json!({
                "resource": operation_outcome(&q.warnings),
                "search": { "mode": "outcome" }
            }));
        }
    }
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert(
        "meta".into(),
        json!({ "lastUpdated": format_instant(now_micros()) }),
    );
    bundle.insert("type".into(), json!("searchset"));
    if let Some(total) = page.total {
        bundle.insert("total".into(), json!(total));
    }
    bundle.insert("link".into(), Value::Array(links));
    if !entries.is_empty() {
        bundle.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(bundle)
}

/// A history Bundle (https://hl7.org/fhir/R4/http.html#history), newest first.
pub fn history(
    base: &str,
    self_url: &str,
    entries: &[HistoryEntry],
    total: Option<i64>,
    next_url: Option<String>,
) -> Value {
    let mut links = vec![link("self", self_url.to_owned())];
    if let Some(n) = next_url {
        links.push(link("next", n));
    }
    let items: Vec<Value> = entries
        .iter()
        .map(|h| {
            let r = &h.resource;
            let url = match h.method.as_str() {
                "POST" => r.res_type.clone(),
                _ => format!("{}/{}", r.res_type, r.id),
            };
            let status = match (h.method.as_str(), r.version) {
                ("DELETE", _) => "204 No Content",
                (_, 1) => "201 Created",
                _ => "200 OK",
            };
            let mut entry = Map::new();
            entry.insert("fullUrl".into(), json!(full_url(base, r)));
            if let Some(json) = r.json() {
                entry.insert("resource".into(), json);
            }
            entry.insert("request".into(), json!({ "method": h.method, "url": url }));
            entry.insert(
                "response".into(),
                json!({
                    "status": status,
                    "etag": r.etag(),
                    "lastModified": r.last_modified_instant(),
                }),
            );
            Value::Object(entry)
        })
        .collect();
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert("type".into(), json!("history"));
    if let Some(total) = total {
        bundle.insert("total".into(), json!(total));
    }
    bundle.insert("link".into(), Value::Array(links));
    if !items.is_empty() {
        bundle.insert("entry".into(), Value::Array(items));
    }
    Value::Object(bundle)
}

/// A `batch-response` or `transaction-response` Bundle.
pub fn response_bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "entry": entries,
    })
}

/// The response entry of a create or update.
pub fn write_response_entry(base: &str, outcome: &WriteOutcome, with_resource: bool) -> Value {
    let r = &outcome.resource;
    let mut entry = Map::new();
    entry.insert("fullUrl".into(), json!(full_url(base, r)));
    if with_resource && let Some(json) = r.json() {
        entry.insert("resource".into(), json);
    }
    entry.insert(
        "response".into(),
        json!({
            "status": if outcome.created { "201 Created" } else { "200 OK" },
            "location": format!("{}/{}/_history/{}", r.res_type, r.id, r.version),
            "etag": r.etag(),
            "lastModified": r.last_modified_instant(),
        }),
    );
    Value::Object(entry)
}

/// The response entry of a read inside a batch or transaction.
pub fn read_response_entry(base: &str, r: &StoredResource) -> Value {
    json!({
        "fullUrl": full_url(base, r),
        "resource": r.json().unwrap_or(Value::Null),
        "response": {
            "status": "200 OK",
            "etag": r.etag(),
            "lastModified": r.last_modified_instant(),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fhir::search::{Direction, ParseOptions, parse};

    fn stored(res_type: &str, id: &str, content: Value) -> StoredResource {
        StoredResource {
            pk: 1,
            res_type: res_type.into(),
            id: id.into(),
            version: 1,
            last_updated: 0,
            deleted: false,
            content: Some(content.to_string()),
        }
    }

    fn query(params: &[(&str, &str)]) -> SearchQuery {
        let params: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let opts = ParseOptions {
            strict: false,
            base_url: "http://h/fhir",
        };
        parse("Observation", &params, opts).unwrap()
    }

    /// The spliced text and the built value agree member for member (the Bundle id and time differ per call).
    fn same_bundle(q: &SearchQuery, page: &SearchPage) {
        let mut text: Value =
            serde_json::from_str(&searchset_text("http://h/fhir", q, page)).unwrap();
        let mut value = searchset("http://h/fhir", q, page);
        for b in [&mut text, &mut value] {
            let obj = b.as_object_mut().unwrap();
            assert!(obj.remove("id").is_some());
            assert!(obj.remove("meta").is_some());
        }
        assert_eq!(text, value);
        assert_eq!(text.to_string(), value.to_string(), "member order");
    }

    #[test]
    fn a_searchset_spliced_from_stored_text_equals_the_one_built_as_a_value() {
        // Parsed from text: a decimal literal in `json!` would be an f64 (1.5).
        let obs = stored(
            "Observation",
            "o1",
            serde_json::from_str(
                r#"{"resourceType": "Observation", "id": "o1", "status": "final",
                "valueQuantity": {"value": 1.50, "unit": "mg"},
                "_status": {"extension": [{"url": "u", "valueString": "é \" \\ x"}]}}"#,
            )
            .unwrap(),
        );
        let pat = stored(
            "Patient",
            "p1",
            json!({"resourceType": "Patient", "id": "p1"}),
        );
        let cursor = Cursor {
            direction: Direction::Next,
            keys: Vec::new(),
            pk: 7,
        };
        let full = SearchPage {
            matches: vec![obs.clone(), obs.clone()],
            includes: vec![pat],
            total: Some(3),
            next: Some(cursor),
            prev: None,
        };
        // Plain, with a warning about an unknown parameter, and with nothing found.
        same_bundle(&query(&[("_include", "Observation:subject")]), &full);
        same_bundle(&query(&[("unknown-param", "x")]), &full);
        same_bundle(&query(&[("unknown-param", "x")]), &SearchPage::default());
        same_bundle(&query(&[]), &SearchPage::default());
        // Decimals keep their stored form in the text.
        let text = searchset_text("http://h/fhir", &query(&[]), &full);
        assert!(text.contains("\"value\":1.50"));
        // A view is still applied through the value path.
        let q = query(&[("_elements", "status")]);
        let text: Value =
            serde_json::from_str(&searchset_text("http://h/fhir", &q, &full)).unwrap();
        assert!(text["entry"][0]["resource"].get("valueQuantity").is_none());
        let q = query(&[("_summary", "count")]);
        let text: Value =
            serde_json::from_str(&searchset_text("http://h/fhir", &q, &full)).unwrap();
        assert!(text.get("entry").is_none());
    }
}
