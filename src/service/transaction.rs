//! Batch and transaction Bundles (https://hl7.org/fhir/R4/http.html#transaction): a transaction runs in one
//! database transaction in the spec's order (DELETE, POST, PUT/PATCH, GET), resolves `urn:uuid:` full URLs and
//! conditional references, and writes nothing if any entry fails; a batch runs each entry on its own.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::{CreateError, FhirService, WriteOutcome, parse_etag, parse_query_string};
use crate::auth::access::Access;
use crate::auth::scopes::Op;
use crate::error::{Error, ErrorKind, Result};
use crate::fhir::outcome::Issue;
use crate::fhir::registry;
use crate::service::bundle;
use crate::store::db::Tx;
use crate::store::{Method, NewResource};

/// The parsed `request` of one entry.
#[derive(Debug, Clone)]
struct EntryRequest {
    index: usize,
    method: String,
    res_type: String,
    id: Option<String>,
    version: Option<String>,
    query: Option<Vec<(String, String)>>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<i64>,
    /// Validation already passed (done before the database transaction began, so it does not hold the lock).
    prevalidated: bool,
}

fn entry_path(index: usize) -> String {
    format!("Bundle.entry[{index}]")
}

fn bad_entry(index: usize, message: impl Into<String>) -> Error {
    Error::invalid_at("invalid", message, entry_path(index))
}

/// Type, id, version and search parameters named by an entry URL.
type EntryTarget = (
    String,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// Splits an entry URL (`Patient`, `Patient/1`, `Patient/1/_history/2`, `Patient?x=y`, or absolute on this server).
fn parse_entry_url(index: usize, url: &str, base: &str) -> Result<EntryTarget> {
    let local = url
        .strip_prefix(base.trim_end_matches('/'))
        .map(|s| s.trim_start_matches('/'))
        .unwrap_or(url);
    let (path, query) = match local.split_once('?') {
        Some((p, q)) => (p, Some(parse_query_string(q))),
        None => (local, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match parts.as_slice() {
        [t] => Ok(((*t).to_owned(), None, None, query)),
        [t, id] => Ok(((*t).to_owned(), Some((*id).to_owned()), None, query)),
        [t, id, "_history", v] => Ok((
            (*t).to_owned(),
            Some((*id).to_owned()),
            Some((*v).to_owned()),
            query,
        )),
        _ => Err(bad_entry(
            index,
            format!("Unsupported request URL '{url}' in Bundle.entry[{index}]"),
        )),
    }
}

fn parse_entries(bundle: &Value, base: &str) -> Result<Vec<EntryRequest>> {
    let entries = match bundle.get("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(Error::invalid_at(
                "structure",
                "Bundle.entry must be an array",
                "Bundle.entry",
            ));
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let request = entry
            .get("request")
            .ok_or_else(|| bad_entry(index, format!("Bundle.entry[{index}] has no request")))?;
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                bad_entry(
                    index,
                    format!("Bundle.entry[{index}].request.method is missing"),
                )
            })?
            .to_uppercase();
        let url = request.get("url").and_then(Value::as_str).ok_or_else(|| {
            bad_entry(
                index,
                format!("Bundle.entry[{index}].request.url is missing"),
            )
        })?;
        let (res_type, id, version, query) = parse_entry_url(index, url, base)?;
        let resource = entry.get("resource").cloned();
        if matches!(method.as_str(), "POST" | "PUT" | "PATCH") && resource.is_none() {
            return Err(bad_entry(
                index,
                format!("Bundle.entry[{index}] ({method}) has no resource"),
            ));
        }
        if !matches!(
            method.as_str(),
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE"
        ) {
            return Err(bad_entry(
                index,
                format!("Bundle.entry[{index}]: unsupported method {method}"),
            ));
        }
        out.push(EntryRequest {
            index,
            method,
            res_type,
            id,
            version,
            query,
            full_url: entry
                .get("fullUrl")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resource,
            if_none_exist: request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(str::to_owned),
            prevalidated: false,
            if_match: request
                .get("ifMatch")
                .and_then(Value::as_str)
                .and_then(parse_etag),
        });
    }
    Ok(out)
}

/// Replaces every `reference` string found in `map` (full URL → `Type/id`) anywhere in the resource.
fn rewrite_references(value: &mut Value, map: &HashMap<String, String>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = v
                    && let Some(new) = map.get(s.as_str())
                {
                    *s = new.clone();
                } else {
                    rewrite_references(v, map);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, map)),
        _ => {}
    }
}

/// Collects conditional references (`Patient?identifier=…`) found anywhere in the resource.
fn conditional_references(value: &Value, out: &mut HashSet<String>) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj {
                if k == "reference"
                    && let Value::String(s) = v
                    && s.contains('?')
                    && !s.contains("://")
                {
                    out.insert(s.clone());
                } else {
                    conditional_references(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| conditional_references(v, out)),
        _ => {}
    }
}

/// Whether an entry may be written in a multi-row batch: a plain create (POST without `ifNoneExist`, or PUT to an
/// id without `ifMatch`) of a validated resource.
fn bulk_candidate(e: &EntryRequest, existing: &HashSet<usize>) -> bool {
    let plain = match e.method.as_str() {
        "POST" => e.if_none_exist.is_none(),
        "PUT" => e.if_match.is_none(),
        _ => false,
    };
    plain
        && e.prevalidated
        && e.resource.is_some()
        && e.id.is_some()
        && !existing.contains(&e.index)
        && e.res_type != "AuditEvent"
}

/// Processing order of a transaction (https://hl7.org/fhir/R4/http.html#trules).
fn order_rank(method: &str) -> u8 {
    match method {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" | "PATCH" => 2,
        _ => 3,
    }
}

impl FhirService {
    /// Processes a `batch` or `transaction` Bundle and returns the response Bundle.
    pub async fn process_bundle(&self, access: &Access, bundle_json: Value) -> Result<Value> {
        if bundle_json.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(Error::invalid_at(
                "invalid",
                "POST to the base URL takes a Bundle of type batch or transaction",
                "resourceType",
            ));
        }
        let kind = bundle_json
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let entries = parse_entries(&bundle_json, &self.base_url)?;
        // Reads of the audit trail see the events of every request answered before this one.
        if let Some(e) = entries.iter().find(|e| e.res_type == "AuditEvent") {
            self.audit_visible(&e.res_type).await?;
        }
        match kind.as_str() {
            "transaction" => self.transaction(access, entries).await,
            "batch" => self.batch(access, entries).await,
            other => Err(Error::invalid_at(
                "invalid",
                format!("Bundle.type must be batch or transaction, not '{other}'"),
                "Bundle.type",
            )),
        }
    }

    async fn batch(&self, access: &Access, entries: Vec<EntryRequest>) -> Result<Value> {
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let index = entry.index;
            let mut tx = self.store.begin_write().await?;
            let result = self.execute_entry(&mut tx, access, entry).await;
            match result {
                Ok(resp) => {
                    tx.commit().await?;
                    responses.push(resp);
                }
                Err(e) => {
                    tx.rollback().await?;
                    if e.kind == ErrorKind::Internal {
                        tracing::error!(error = ?e, entry = index, "batch entry failed");
                    }
                    responses.push(json!({
                        "response": {
                            "status": format!("{}", e.status()),
                            "outcome": e.outcome(),
                        }
                    }));
                }
            }
        }
        Ok(bundle::response_bundle("batch-response", responses))
    }

    async fn transaction(&self, access: &Access, mut entries: Vec<EntryRequest>) -> Result<Value> {
        // The same resource may not be the target of two entries.
        let mut targets = HashSet::new();
        for e in &entries {
            if let Some(id) = &e.id
                && e.method != "GET"
                && e.method != "HEAD"
                && !targets.insert(format!("{}/{id}", e.res_type))
            {
                return Err(bad_entry(
                    e.index,
                    format!(
                        "{}/{id} is the target of more than one entry of the transaction",
                        e.res_type
                    ),
                ));
            }
        }
        for e in &entries {
            if !registry::is_supported_type(&e.res_type) {
                return Err(Error::with_issues(
                    ErrorKind::NotFound,
                    vec![
                        Issue::error(
                            "not-supported",
                            format!("Resource type '{}' is not supported", e.res_type),
                        )
                        .at(entry_path(e.index)),
                    ],
                ));
            }
        }

        // Validation is the costly part of a write: do it before taking the write lock.
        for e in entries.iter_mut() {
            if matches!(e.method.as_str(), "POST" | "PUT")
                && let Some(resource) = &e.resource
            {
                super::validate_for_write(&e.res_type, resource)
                    .map_err(|err| err.in_context(&entry_path(e.index)))?;
                e.prevalidated = true;
            }
        }
        let mut tx = self.store.begin_write().await?;
        let result = self.transaction_in(&mut tx, access, &mut entries).await;
        match result {
            Ok(responses) => {
                tx.commit().await?;
                Ok(bundle::response_bundle("transaction-response", responses))
            }
            Err(e) => {
                tx.rollback().await?;
                Err(e)
            }
        }
    }

    async fn transaction_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        entries: &mut [EntryRequest],
    ) -> Result<Vec<Value>> {
        // 1. Assign ids and resolve conditional creates/updates, so references can be rewritten before any write.
        let mut map: HashMap<String, String> = HashMap::new();
        let mut existing: HashSet<usize> = HashSet::new();
        for e in entries.iter_mut() {
            let ctx = entry_path(e.index);
            match e.method.as_str() {
                "POST" => {
                    let id = if let Some(criteria) = &e.if_none_exist {
                        let params = parse_query_string(criteria);
                        let permit = access
                            .permit(&e.res_type, Op::Create)
                            .map_err(|err| err.in_context(&ctx))?;
                        let found = self
                            .match_conditional(tx, access, &permit, &e.res_type, &params)
                            .await
                            .map_err(|err| err.in_context(&ctx))?;
                        match found.as_slice() {
                            [] => uuid::Uuid::new_v4().to_string(),
                            [one] => {
                                existing.insert(e.index);
                                one.id.clone()
                            }
                            _ => {
                                return Err(Error::precondition_failed(format!(
                                    "{ctx}: ifNoneExist matched several {} resources",
                                    e.res_type
                                )));
                            }
                        }
                    } else {
                        uuid::Uuid::new_v4().to_string()
                    };
                    e.id = Some(id);
                }
                "PUT" if e.id.is_none() => {
                    let params = e.query.clone().unwrap_or_default();
                    let permit = access
                        .permit(&e.res_type, Op::Update)
                        .map_err(|err| err.in_context(&ctx))?;
                    let found = self
                        .match_conditional(tx, access, &permit, &e.res_type, &params)
                        .await
                        .map_err(|err| err.in_context(&ctx))?;
                    let id = match found.as_slice() {
                        [] => e
                            .resource
                            .as_ref()
                            .and_then(|r| r.get("id"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                        [one] => one.id.clone(),
                        _ => {
                            return Err(Error::precondition_failed(format!(
                                "{ctx}: conditional update matched several {} resources",
                                e.res_type
                            )));
                        }
                    };
                    e.id = Some(id);
                }
                _ => {}
            }
            if let (Some(full), Some(id)) = (&e.full_url, &e.id) {
                map.insert(full.clone(), format!("{}/{id}", e.res_type));
            }
        }

        // 2. Conditional references resolve to exactly one match.
        let mut conditional = HashSet::new();
        for e in entries.iter() {
            if let Some(r) = &e.resource {
                conditional_references(r, &mut conditional);
            }
        }
        for reference in conditional {
            let Some((t, q)) = reference.split_once('?') else {
                continue;
            };
            let permit = access.permit(t, Op::Search)?;
            let found = self
                .match_conditional(tx, access, &permit, t, &parse_query_string(q))
                .await
                .map_err(|err| err.in_context(&format!("conditional reference '{reference}'")))?;
            match found.as_slice() {
                [one] => {
                    map.insert(reference.clone(), one.reference());
                }
                [] => {
                    return Err(Error::not_found(format!(
                        "Conditional reference '{reference}' matched nothing"
                    )));
                }
                _ => {
                    return Err(Error::precondition_failed(format!(
                        "Conditional reference '{reference}' matched more than one resource"
                    )));
                }
            }
        }
        for e in entries.iter_mut() {
            if let Some(r) = e.resource.as_mut() {
                rewrite_references(r, &map);
                if e.method == "PUT"
                    && let (Some(id), Some(obj)) = (&e.id, r.as_object_mut())
                    && !obj.contains_key("id")
                {
                    obj.insert("id".into(), Value::String(id.clone()));
                }
            }
        }

        // 3. Execute in the spec's order; answer in the Bundle's order.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_by_key(|i| (order_rank(&entries[*i].method), *i));
        let mut responses: Vec<Value> = vec![Value::Null; entries.len()];
        let mut pos = 0;
        while pos < order.len() {
            // A run of creates (POST, or PUT to an id) of the same rank is written with multi-row statements.
            let rank = order_rank(&entries[order[pos]].method);
            let mut end = pos;
            while end < order.len()
                && bulk_candidate(&entries[order[end]], &existing)
                && order_rank(&entries[order[end]].method) == rank
            {
                end += 1;
            }
            let mut singles: Vec<usize> = Vec::new();
            if end > pos + 1 {
                let run: Vec<usize> = order[pos..end].to_vec();
                singles = self
                    .bulk_create(tx, access, entries, &run, &mut responses)
                    .await?;
                pos = end;
            } else {
                singles.push(order[pos]);
                pos += 1;
            }
            for i in singles {
                responses[i] = self
                    .single_entry(tx, access, &entries[i], &existing)
                    .await?;
            }
        }
        Ok(responses)
    }

    /// Writes the new resources of a run of POST and PUT entries with multi-row statements (resources, history and
    /// index rows), after the same permission checks as one by one. PUTs whose target already exists are left
    /// out and returned, to go the single-entry way.
    async fn bulk_create(
        &self,
        tx: &mut Tx,
        access: &Access,
        entries: &[EntryRequest],
        run: &[usize],
        responses: &mut [Value],
    ) -> Result<Vec<usize>> {
        // Which PUT targets exist already (locked on PostgreSQL, as a single update would).
        let mut wanted: HashMap<&str, Vec<&str>> = HashMap::new();
        for &i in run {
            let e = &entries[i];
            if e.method == "PUT"
                && let Some(id) = &e.id
            {
                wanted
                    .entry(e.res_type.as_str())
                    .or_default()
                    .push(id.as_str());
            }
        }
        let mut present: HashSet<(String, String)> = HashSet::new();
        for (res_type, ids) in wanted {
            for found in self.store.existing_ids(tx, res_type, &ids).await? {
                present.insert((res_type.to_owned(), found));
            }
        }
        let mut singles = Vec::new();
        let mut batches: [(Method, Vec<usize>, Vec<NewResource>); 2] = [
            (Method::Post, Vec::new(), Vec::new()),
            (Method::Put, Vec::new(), Vec::new()),
        ];
        // EHR sync: what each new KAP resource will queue, worked out before the resources move into the store.
        let mut sync: HashMap<usize, crate::sync::Described> = HashMap::new();
        for &i in run {
            let e = &entries[i];
            let ctx = entry_path(e.index);
            let id = e.id.clone().unwrap_or_default();
            if e.method == "PUT" && present.contains(&(e.res_type.clone(), id.clone())) {
                singles.push(i);
                continue;
            }
            let resource = e.resource.clone().unwrap_or(Value::Null);
            let checks = (|| {
                if e.method == "PUT" {
                    access.permit(&e.res_type, Op::Update)?;
                    super::check_id(&id)?;
                    super::check_body_id(&resource, &id)?;
                }
                access.permit(&e.res_type, Op::Create)
            })();
            checks.map_err(|err| err.in_context(&ctx))?;
            let index = self.index_only(&e.res_type, &resource);
            if let Some(d) = self.outbox.describe(&e.res_type, &id, &resource) {
                sync.insert(i, d);
            }
            let slot = usize::from(e.method == "PUT");
            batches[slot].1.push(i);
            batches[slot].2.push(NewResource {
                res_type: e.res_type.clone(),
                id,
                resource,
                index,
            });
        }
        for (method, positions, items) in batches {
            if items.is_empty() {
                continue;
            }
            let stored = self.store.insert_many(tx, items, method).await?;
            for (i, r) in positions.into_iter().zip(stored) {
                let e = &entries[i];
                let permit = access
                    .permit(&e.res_type, Op::Create)
                    .map_err(|err| err.in_context(&entry_path(e.index)))?;
                self.check_written(tx, access, &permit, &r)
                    .await
                    .map_err(|err| err.in_context(&entry_path(e.index)))?;
                self.outbox
                    .enqueue(tx, sync.get(&i), r.version, crate::sync::SyncOp::Upsert)
                    .await?;
                responses[i] = bundle::write_response_entry(
                    &self.base_url,
                    &WriteOutcome {
                        resource: r,
                        created: true,
                    },
                    true,
                );
            }
        }
        Ok(singles)
    }

    /// One entry of a transaction, inside `tx`.
    async fn single_entry(
        &self,
        tx: &mut Tx,
        access: &Access,
        entry: &EntryRequest,
        existing: &HashSet<usize>,
    ) -> Result<Value> {
        {
            let e = entry.clone();
            let ctx = entry_path(e.index);
            let resp = if existing.contains(&e.index) {
                let id = e.id.clone().unwrap_or_default();
                let permit = access
                    .permit(&e.res_type, Op::Read)
                    .map_err(|err| err.in_context(&ctx))?;
                let r = self
                    .read_in(tx, access, &permit, &e.res_type, &id)
                    .await
                    .map_err(|err| err.in_context(&ctx))?;
                bundle::write_response_entry(
                    &self.base_url,
                    &WriteOutcome {
                        resource: r,
                        created: false,
                    },
                    true,
                )
            } else {
                self.execute_entry(tx, access, e)
                    .await
                    .map_err(|err| err.in_context(&ctx))?
            };
            Ok(resp)
        }
    }

    /// Executes one entry inside `tx` and returns its response entry.
    async fn execute_entry(&self, tx: &mut Tx, access: &Access, e: EntryRequest) -> Result<Value> {
        if !registry::is_supported_type(&e.res_type) {
            return Err(Error::not_found(format!(
                "Resource type '{}' is not supported",
                e.res_type
            )));
        }
        match e.method.as_str() {
            "POST" => {
                let resource = e.resource.unwrap_or(Value::Null);
                let index = if e.prevalidated {
                    self.index_only(&e.res_type, &resource)
                } else {
                    self.prepare(&e.res_type, &resource)?
                };
                let outcome = match self
                    .create_in(
                        tx,
                        access,
                        &e.res_type,
                        resource,
                        &index,
                        e.if_none_exist.as_deref(),
                        e.id.clone(),
                    )
                    .await
                {
                    Ok(o) => o,
                    Err(CreateError::Lost) => {
                        return Err(Error::conflict(
                            "A concurrent request created the same resource; retry",
                        ));
                    }
                    Err(CreateError::Other(err)) => return Err(err),
                };
                Ok(bundle::write_response_entry(&self.base_url, &outcome, true))
            }
            "PUT" => {
                let resource = e.resource.unwrap_or(Value::Null);
                let index = if e.prevalidated {
                    self.index_only(&e.res_type, &resource)
                } else {
                    self.prepare(&e.res_type, &resource)?
                };
                let id = e.id.clone().unwrap_or_default();
                super::check_id(&id)?;
                super::check_body_id(&resource, &id)?;
                let outcome = self
                    .update_in(
                        tx,
                        access,
                        &e.res_type,
                        &id,
                        resource,
                        &index,
                        e.if_match,
                        Method::Put,
                    )
                    .await?;
                Ok(bundle::write_response_entry(&self.base_url, &outcome, true))
            }
            "PATCH" => {
                let id =
                    e.id.clone()
                        .ok_or_else(|| Error::bad_request("PATCH needs Type/id"))?;
                let patch = match e.resource {
                    // FHIR carries a JSON Patch in a Binary resource inside Bundles.
                    Some(Value::Object(obj))
                        if obj.get("resourceType").and_then(Value::as_str) == Some("Binary") =>
                    {
                        let data = obj.get("data").and_then(Value::as_str).unwrap_or_default();
                        let bytes = base64::Engine::decode(
                            &base64::engine::general_purpose::STANDARD,
                            data,
                        )
                        .map_err(|_| {
                            Error::bad_request("Binary.data of a PATCH entry is not base64")
                        })?;
                        serde_json::from_slice(&bytes).map_err(|_| {
                            Error::bad_request("Binary.data of a PATCH entry is not a JSON Patch")
                        })?
                    }
                    Some(other) => other,
                    None => Value::Null,
                };
                let outcome = self
                    .patch_in(tx, access, &e.res_type, &id, patch, e.if_match)
                    .await?;
                Ok(bundle::write_response_entry(&self.base_url, &outcome, true))
            }
            "DELETE" => {
                let deleted = match (&e.id, &e.query) {
                    (Some(id), _) => match self
                        .delete_in(tx, access, &e.res_type, id, e.if_match)
                        .await
                    {
                        Err(err) if err.kind == ErrorKind::NotFound => None,
                        other => other?,
                    },
                    (None, Some(q)) => {
                        self.conditional_delete_in(tx, access, &e.res_type, q)
                            .await?
                    }
                    (None, None) => {
                        return Err(Error::bad_request(
                            "DELETE needs Type/id or search criteria",
                        ));
                    }
                };
                let mut response = json!({ "status": "204 No Content" });
                if let (Some(d), Some(obj)) = (deleted, response.as_object_mut()) {
                    obj.insert("etag".into(), Value::String(d.etag()));
                }
                Ok(json!({ "response": response }))
            }
            _ => {
                // GET/HEAD: read, vread or search.
                match (&e.id, &e.version) {
                    (Some(id), Some(v)) => {
                        let v: i64 = v
                            .parse()
                            .map_err(|_| Error::not_found(format!("Version '{v}' is not known")))?;
                        let permit = access.permit(&e.res_type, Op::Read)?;
                        let r = self
                            .vread_in(tx, access, &permit, &e.res_type, id, v)
                            .await?;
                        Ok(bundle::read_response_entry(&self.base_url, &r))
                    }
                    (Some(id), None) => {
                        let permit = access.permit(&e.res_type, Op::Read)?;
                        let r = self.read_in(tx, access, &permit, &e.res_type, id).await?;
                        Ok(bundle::read_response_entry(&self.base_url, &r))
                    }
                    (None, _) => {
                        let params = e.query.clone().unwrap_or_default();
                        let q = self.parse_search(&e.res_type, &params, false)?;
                        let page = self.search_in(tx, access, &q).await?;
                        let set = bundle::searchset(&self.base_url, &q, &page);
                        Ok(json!({ "resource": set, "response": { "status": "200 OK" } }))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urn_uuid_references_are_rewritten_everywhere_in_a_resource() {
        let mut r = json!({"subject": {"reference": "urn:uuid:1"}, "x": [{"reference": "urn:uuid:1"}], "y": {"reference": "Patient/2"}});
        let map = HashMap::from([("urn:uuid:1".to_string(), "Patient/abc".to_string())]);
        rewrite_references(&mut r, &map);
        assert_eq!(r["subject"]["reference"], "Patient/abc");
        assert_eq!(r["x"][0]["reference"], "Patient/abc");
        assert_eq!(r["y"]["reference"], "Patient/2");
    }

    #[test]
    fn entries_are_processed_deletes_first_then_creates_then_updates_then_reads() {
        let mut methods = ["GET", "PUT", "POST", "DELETE", "PATCH"];
        methods.sort_by_key(|m| order_rank(m));
        assert_eq!(methods, ["DELETE", "POST", "PUT", "PATCH", "GET"]);
    }

    #[test]
    fn entry_urls_split_into_type_id_version_and_query() {
        let (t, id, v, q) = parse_entry_url(0, "Patient/1/_history/2", "http://x/fhir").unwrap();
        assert_eq!(
            (t.as_str(), id.as_deref(), v.as_deref(), q),
            ("Patient", Some("1"), Some("2"), None)
        );
        let (t, id, _, q) =
            parse_entry_url(0, "http://x/fhir/Patient?identifier=a|b", "http://x/fhir").unwrap();
        assert_eq!((t.as_str(), id), ("Patient", None));
        assert_eq!(
            q.unwrap(),
            vec![("identifier".to_string(), "a|b".to_string())]
        );
    }
}
