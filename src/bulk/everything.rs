//! `GET /fhir/Patient/{id}/$everything` (https://hl7.org/fhir/R4/operation-patient-everything.html): the patient's
//! compartment, type by type, each type searched exactly as `GET /fhir/{type}` by the same token would be, with
//! `_since`, `_type` and `_count`, paged by an opaque cursor (type position and last key).

use serde_json::{Map, Value, json};

use crate::auth::access::Access;
use crate::auth::scopes::Op;
use crate::error::{Error, Result};
use crate::fhir::datetime::{format_instant, now_micros, parse_range};
use crate::fhir::search::{Cursor, DEFAULT_COUNT, Direction, MAX_COUNT};
use crate::service::FhirService;
use crate::store::StoredResource;

use super::compartment_types;
use super::worker::type_query;

/// The parameters of one `$everything` request.
#[derive(Debug, Clone, Default)]
pub struct EverythingParams {
    pub since: Option<String>,
    pub types: Option<Vec<String>>,
    pub count: Option<usize>,
    /// `typeIndex.pk` of the last resource of the previous page.
    pub cursor: Option<String>,
}

impl EverythingParams {
    pub fn parse(pairs: &[(String, String)]) -> Result<EverythingParams> {
        let mut p = EverythingParams::default();
        for (k, v) in pairs {
            match k.as_str() {
                "_since" if parse_range(v).is_none() => {
                    return Err(Error::invalid_at(
                        "invalid",
                        format!("{k} '{v}' is not a valid instant"),
                        k.clone(),
                    ));
                }
                "_since" => p.since = Some(v.clone()),
                "_type" => {
                    let list: Vec<String> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    p.types.get_or_insert_with(Vec::new).extend(list);
                }
                "_count" => {
                    let n: usize = v.parse().map_err(|_| {
                        Error::invalid_at(
                            "invalid",
                            format!("_count '{v}' is not a number"),
                            "_count",
                        )
                    })?;
                    p.count = Some(n.clamp(1, MAX_COUNT));
                }
                "_cursor" => p.cursor = Some(v.clone()),
                _ => {}
            }
        }
        Ok(p)
    }
}

/// One page of a patient's everything, and the cursor of the next one.
pub struct EverythingPage {
    pub resources: Vec<StoredResource>,
    pub next: Option<String>,
}

/// The types of `$everything`: `_type` (each must be in the patient compartment) or all of them.
pub fn everything_types(types: Option<&[String]>) -> Result<Vec<String>> {
    let all = compartment_types();
    match types {
        None => Ok(all.into_iter().map(str::to_owned).collect()),
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for t in list {
                if !all.contains(&t.as_str()) {
                    return Err(Error::invalid_at(
                        "not-supported",
                        format!(
                            "'{t}' is not a resource type of the patient compartment on this server"
                        ),
                        "_type",
                    ));
                }
                if !out.contains(t) {
                    out.push(t.clone());
                }
            }
            Ok(out)
        }
    }
}

/// Runs one page of `$everything` for `patient_id`.
pub async fn everything(
    fhir: &FhirService,
    access: &Access,
    patient_id: &str,
    p: &EverythingParams,
) -> Result<EverythingPage> {
    // The patient must exist and be visible to the token (404 otherwise, as for a read).
    fhir.read(access, "Patient", patient_id).await?;
    let types = everything_types(p.types.as_deref())?;
    let count = p.count.unwrap_or(DEFAULT_COUNT);
    let (start_type, start_pk) = match &p.cursor {
        None => (0usize, 0i64),
        Some(c) => parse_cursor(c).ok_or_else(|| {
            Error::invalid_at(
                "invalid",
                "The paging cursor is not valid; start again",
                "_cursor",
            )
        })?,
    };
    let mut out: Vec<StoredResource> = Vec::new();
    let mut next = None;
    for (ti, res_type) in types.iter().enumerate().skip(start_type) {
        let Ok(permit) = access.permit(res_type, Op::Search) else {
            continue;
        };
        // A patient-context token sees only its own patient's compartment: never another patient's through this one.
        if permit
            .compartment
            .as_deref()
            .is_some_and(|c| c != patient_id)
        {
            continue;
        }
        let mut q = type_query(fhir, res_type, None, p.since.as_deref())?;
        q.compartment = Some(patient_id.to_owned());
        let mut after = if ti == start_type { start_pk } else { 0 };
        loop {
            let remaining = count - out.len();
            q.count = remaining;
            q.cursor = Some(Cursor {
                direction: Direction::Next,
                keys: Vec::new(),
                pk: after,
            });
            let page = fhir.search(access, &q).await?;
            let more = page.next.is_some();
            if let Some(last) = page.matches.last() {
                after = last.pk;
            }
            out.extend(page.matches);
            if out.len() >= count {
                if more {
                    next = Some(format!("{ti}.{after}"));
                } else if ti + 1 < types.len() {
                    next = Some(format!("{}.0", ti + 1));
                }
                break;
            }
            if !more {
                break;
            }
        }
        if next.is_some() {
            break;
        }
    }
    Ok(EverythingPage {
        resources: out,
        next,
    })
}

fn parse_cursor(c: &str) -> Option<(usize, i64)> {
    let (t, pk) = c.split_once('.')?;
    Some((t.parse().ok()?, pk.parse().ok()?))
}

/// The searchset Bundle of one page.
pub fn bundle(base: &str, patient_id: &str, p: &EverythingParams, page: &EverythingPage) -> Value {
    let mut params: Vec<(String, String)> = Vec::new();
    if let Some(s) = &p.since {
        params.push(("_since".into(), s.clone()));
    }
    if let Some(t) = &p.types {
        params.push(("_type".into(), t.join(",")));
    }
    if let Some(c) = p.count {
        params.push(("_count".into(), c.to_string()));
    }
    let url = |cursor: Option<&str>| {
        let mut all = params.clone();
        if let Some(c) = cursor {
            all.push(("_cursor".into(), c.to_owned()));
        }
        let qs: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(all)
            .finish();
        let path = format!("{base}/Patient/{patient_id}/$everything");
        if qs.is_empty() {
            path
        } else {
            format!("{path}?{qs}")
        }
    };
    let mut links = vec![json!({"relation": "self", "url": url(p.cursor.as_deref())})];
    if let Some(n) = &page.next {
        links.push(json!({"relation": "next", "url": url(Some(n))}));
    }
    let entries: Vec<Value> = page
        .resources
        .iter()
        .filter_map(|r| {
            r.json().map(|j| {
                json!({
                    "fullUrl": format!("{base}/{}/{}", r.res_type, r.id),
                    "resource": j,
                    "search": {"mode": "match"}
                })
            })
        })
        .collect();
    let mut b = Map::new();
    b.insert("resourceType".into(), json!("Bundle"));
    b.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    b.insert(
        "meta".into(),
        json!({"lastUpdated": format_instant(now_micros())}),
    );
    b.insert("type".into(), json!("searchset"));
    b.insert("link".into(), Value::Array(links));
    if !entries.is_empty() {
        b.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(b)
}
