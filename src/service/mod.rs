//! FHIR interactions over the store: what create, read, update, patch, delete, their conditional forms, search and
//! history mean (https://hl7.org/fhir/R4/http.html). HTTP-free: the API layer parses requests and calls these.

pub mod bundle;
pub mod transaction;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::access::{Access, Permit};
use crate::auth::scopes::Op;
use crate::error::{Error, ErrorKind, Result};
use crate::fhir::extract::{IndexEntry, IndexValue, extract};
use crate::fhir::outcome::Issue;
use crate::fhir::registry;
use crate::fhir::search::{self, ParseOptions, SearchQuery, TotalMode};
use crate::fhir::validate::validate_resource;
use crate::store::db::Tx;
use crate::store::search_sql::SearchPage;
use crate::store::{HistoryEntry, HistoryScope, Method, Store, StoredResource};
use crate::sync::SyncOp;

/// The result of a write: the stored version and whether it created the resource (201) or not (200).
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub resource: StoredResource,
    pub created: bool,
}

/// FHIR interactions bound to a store and the server's public base URL.
#[derive(Clone, Debug)]
pub struct FhirService {
    pub store: Store,
    pub base_url: String,
    /// EHR sync: changes to KAP resources are enqueued in the same transaction as the write.
    pub outbox: crate::sync::Outbox,
    /// The audit log, flushed before the audit trail is read (see [`crate::audit::AuditLog::flush`]).
    pub audit: Option<crate::audit::AuditLog>,
}

/// Parses a `W/"n"` (or `"n"`, or `n`) ETag into a version number.
pub fn parse_etag(etag: &str) -> Option<i64> {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// Parses `a=1&b=2` (URL-encoded) into pairs.
pub fn parse_query_string(qs: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(qs.trim_start_matches('?').as_bytes())
        .into_owned()
        .collect()
}

fn require_supported(res_type: &str) -> Result<()> {
    if registry::is_supported_type(res_type) {
        Ok(())
    } else if crate::fhir::validate::is_r4_resource_type(res_type) {
        Err(Error::not_found(format!(
            "Resource type '{res_type}' is not supported by this server"
        )))
    } else {
        Err(Error::not_found(format!(
            "Unknown resource type '{res_type}'"
        )))
    }
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_at(
            "value",
            format!("'{id}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})"),
            "id",
        ))
    }
}

/// Validates a resource for a write and computes its index entries.
pub fn validate_and_index(res_type: &str, resource: &Value) -> Result<Vec<IndexEntry>> {
    validate_for_write(res_type, resource)?;
    Ok(extract(res_type, resource))
}

/// Validates a resource for a write: base R4 (400) and any KAP profile it claims (422).
pub fn validate_for_write(res_type: &str, resource: &Value) -> Result<()> {
    if let Err(issues) = validate_resource(Some(res_type), resource) {
        let issues = issues
            .into_iter()
            .map(|i| Issue::error(i.kind.code(), i.message).at(i.expression))
            .collect();
        return Err(Error::with_issues(ErrorKind::BadRequest, issues));
    }
    // A resource that claims a kap profile must meet it: well-formed R4 that breaks the profile is 422.
    if let Err(issues) = crate::fhir::profile::validate_claimed_profiles(resource) {
        let issues = issues
            .into_iter()
            .map(|i| Issue::error(i.kind.code(), i.message).at(i.expression))
            .collect();
        return Err(Error::with_issues(ErrorKind::Unprocessable, issues));
    }
    Ok(())
}

/// Absolute references count as this server's resources only when they start with its base URL; a reference to
/// another server that happens to end in `/Patient/1` must not match (or include) our `Patient/1`.
pub fn localize_references(entries: &mut [IndexEntry], base_url: &str) {
    let base = format!("{}/", base_url.trim_end_matches('/'));
    for e in entries.iter_mut() {
        if let IndexValue::Reference {
            target_type,
            target_id,
            url,
        } = &mut e.value
            && url.contains("://")
        {
            match url.strip_prefix(&base) {
                Some(local) => {
                    let mut parts = local.split('/');
                    *target_type = parts.next().map(str::to_owned);
                    *target_id = parts.next().map(str::to_owned);
                }
                None => {
                    *target_type = None;
                    *target_id = None;
                }
            }
        }
    }
}

/// A stable hash of conditional criteria: parameters sorted so that order does not matter.
pub fn criteria_hash(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (k, v) in sorted {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// AuditEvents are kept in the audit trail's own table (`store::audit`), written by the server only.
const AUDIT_EVENT: &str = "AuditEvent";

fn refuse_audit_write(res_type: &str) -> Result<()> {
    if res_type == AUDIT_EVENT {
        Err(Error::new(
            ErrorKind::MethodNotAllowed,
            "AuditEvents are recorded by the server itself; the audit trail is read-only",
        ))
    } else {
        Ok(())
    }
}

/// Whether the token may see a stored resource's security labels (psychotherapy notes). The label's system URL
/// appears verbatim in the stored JSON text (written by serde_json, which escapes no `/`), so a resource whose
/// text lacks it is not parsed at all: the common case of a read costs no JSON parse here.
fn may_see_labels(access: &Access, r: &StoredResource) -> bool {
    if access.psychotherapy {
        return true;
    }
    match r.content.as_deref() {
        Some(text) if text.contains(crate::fhir::labels::PSY_SYSTEM) => {
            r.json().is_none_or(|json| access.may_see_labels(&json))
        }
        _ => true,
    }
}

/// Strips the server-owned parts of a resource so that two versions can be compared for a no-op update.
fn without_server_meta(resource: &Value) -> Value {
    let mut copy = resource.clone();
    if let Some(obj) = copy.as_object_mut() {
        let empty = obj
            .get_mut("meta")
            .and_then(Value::as_object_mut)
            .map(|meta| {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                meta.is_empty()
            })
            .unwrap_or(false);
        if empty {
            obj.remove("meta");
        }
    }
    copy
}

impl FhirService {
    /// Index entries of a resource already validated (e.g. a Bundle entry checked before the transaction began).
    pub fn index_only(&self, res_type: &str, resource: &Value) -> Vec<IndexEntry> {
        let mut entries = extract(res_type, resource);
        localize_references(&mut entries, &self.base_url);
        entries
    }

    /// Validates and indexes a resource for a write on this server.
    pub fn prepare(&self, res_type: &str, resource: &Value) -> Result<Vec<IndexEntry>> {
        let mut entries = validate_and_index(res_type, resource)?;
        localize_references(&mut entries, &self.base_url);
        Ok(entries)
    }

    pub fn new(store: Store, base_url: String) -> FhirService {
        FhirService {
            store,
            base_url,
            outbox: crate::sync::Outbox::default(),
            audit: None,
        }
    }

    /// The same service, enqueueing KAP resource changes for the given EHRs.
    pub fn with_outbox(mut self, outbox: crate::sync::Outbox) -> FhirService {
        self.outbox = outbox;
        self
    }

    /// The same service, flushing `audit` before it reads the audit trail.
    pub fn with_audit(mut self, audit: crate::audit::AuditLog) -> FhirService {
        self.audit = Some(audit);
        self
    }

    /// Before `res_type` is read: when it is AuditEvent, waits until the events of every request answered so far
    /// are in the database.
    pub(crate) async fn audit_visible(&self, res_type: &str) -> Result<()> {
        match &self.audit {
            Some(audit) if res_type == AUDIT_EVENT => audit.flush().await,
            _ => Ok(()),
        }
    }

    pub fn parse_options(&self, strict: bool) -> ParseOptions<'_> {
        ParseOptions {
            strict,
            base_url: &self.base_url,
        }
    }

    /// Parses a search on `res_type`, turning parse problems into a 400.
    pub fn parse_search(
        &self,
        res_type: &str,
        params: &[(String, String)],
        strict: bool,
    ) -> Result<SearchQuery> {
        require_supported(res_type)?;
        search::parse(res_type, params, self.parse_options(strict))
            .map_err(|issues| Error::with_issues(ErrorKind::BadRequest, issues))
    }

    /// Whether the token may see `r` under `permit`: its labels (psychotherapy notes), the patient compartment
    /// and granular scope restrictions, all checked against the database inside `tx`.
    pub(crate) async fn visible(
        &self,
        tx: &mut Tx,
        access: &Access,
        permit: &Permit,
        r: &StoredResource,
    ) -> Result<bool> {
        if !may_see_labels(access, r) {
            return Ok(false);
        }
        if let Some(patient) = &permit.compartment
            && self
                .store
                .filter_compartment(tx, vec![r.clone()], patient)
                .await?
                .is_empty()
        {
            return Ok(false);
        }
        if permit.queries.is_empty() {
            return Ok(true);
        }
        for query in &permit.queries {
            let mut params = query.clone();
            params.push(("_id".into(), r.id.clone()));
            let Ok(mut q) = search::parse(&r.res_type, &params, self.parse_options(false)) else {
                continue;
            };
            q.count = 1;
            q.total = TotalMode::None;
            if !self.store.search(tx, &q).await?.matches.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Narrows a search to what the token may see, in SQL: compartment, granular restrictions, labels.
    pub(crate) fn restrict(
        &self,
        q: &mut SearchQuery,
        access: &Access,
        permit: &Permit,
    ) -> Result<()> {
        if let Some(p) = &permit.compartment {
            q.compartment = Some(p.clone());
        }
        q.hide_psychotherapy = !access.psychotherapy;
        for query in &permit.queries {
            let parsed = search::parse(&q.resource_type, query, self.parse_options(true)).map_err(
                |issues| {
                    Error::with_issues(ErrorKind::Forbidden, issues)
                        .in_context("The token's granular scope cannot be applied")
                },
            )?;
            q.any_of.push(parsed.criteria);
        }
        Ok(())
    }

    /// Keeps the included resources the token may read.
    async fn filter_included(
        &self,
        tx: &mut Tx,
        access: &Access,
        included: Vec<StoredResource>,
    ) -> Result<Vec<StoredResource>> {
        let mut kept = Vec::with_capacity(included.len());
        for r in included {
            let Ok(permit) = access.permit(&r.res_type, Op::Read) else {
                continue;
            };
            if self.visible(tx, access, &permit, &r).await? {
                kept.push(r);
            }
        }
        Ok(kept)
    }

    /// A resource the token may see with `op`, or 404 (other patients' resources are indistinguishable from
    /// missing ones) / 410.
    async fn visible_current(
        &self,
        tx: &mut Tx,
        access: &Access,
        permit: &Permit,
        res_type: &str,
        id: &str,
        lock: bool,
    ) -> Result<Option<StoredResource>> {
        let current = if lock {
            self.store.current_for_update(tx, res_type, id).await?
        } else {
            self.store.current(tx, res_type, id).await?
        };
        match current {
            None => Ok(None),
            Some(r) if r.deleted => Ok(Some(r)),
            Some(r) => {
                if self.visible(tx, access, permit, &r).await? {
                    Ok(Some(r))
                } else {
                    Err(Error::not_found(format!("{res_type}/{id} is not known")))
                }
            }
        }
    }

    /// After a write: the stored resource must still be one the token may see, or the write is refused (so a
    /// patient-context token cannot write into another patient's record, nor a granular one outside its filter).
    async fn check_written(
        &self,
        tx: &mut Tx,
        access: &Access,
        permit: &Permit,
        r: &StoredResource,
    ) -> Result<()> {
        if self.visible(tx, access, permit, r).await? {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Forbidden,
                format!(
                    "The access token may not write this {} (outside its patient, scope or labels)",
                    r.res_type
                ),
            ))
        }
    }

    /// read: https://hl7.org/fhir/R4/http.html#read
    pub async fn read(&self, access: &Access, res_type: &str, id: &str) -> Result<StoredResource> {
        require_supported(res_type)?;
        let permit = access.permit(res_type, Op::Read)?;
        if res_type == AUDIT_EVENT {
            self.audit_visible(res_type).await?;
            let mut tx = self.store.begin_read().await?;
            let found = self.audit_read(&mut tx, access, &permit, id).await;
            tx.rollback().await?;
            return found;
        }
        if permit.compartment.is_none() && permit.queries.is_empty() {
            // Nothing to check against the database beyond the row itself: one statement, no transaction.
            return match self.store.current_direct(res_type, id).await? {
                None => Err(Error::not_found(format!("{res_type}/{id} is not known"))),
                Some(r) if r.deleted => {
                    Err(Error::gone(format!("{res_type}/{id} has been deleted")))
                }
                Some(r) if !may_see_labels(access, &r) => {
                    Err(Error::not_found(format!("{res_type}/{id} is not known")))
                }
                Some(r) => Ok(r),
            };
        }
        let mut tx = self.store.begin_read().await?;
        let found = self.read_in(&mut tx, access, &permit, res_type, id).await;
        tx.rollback().await?;
        found
    }

    pub(crate) async fn read_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        permit: &Permit,
        res_type: &str,
        id: &str,
    ) -> Result<StoredResource> {
        if res_type == AUDIT_EVENT {
            return self.audit_read(tx, access, permit, id).await;
        }
        match self
            .visible_current(tx, access, permit, res_type, id, false)
            .await?
        {
            None => Err(Error::not_found(format!("{res_type}/{id} is not known"))),
            Some(r) if r.deleted => Err(Error::gone(format!("{res_type}/{id} has been deleted"))),
            Some(r) => Ok(r),
        }
    }

    /// An AuditEvent from the audit trail, narrowed like a search to what the token may see.
    async fn audit_read(
        &self,
        tx: &mut Tx,
        access: &Access,
        permit: &Permit,
        id: &str,
    ) -> Result<StoredResource> {
        let mut q = search::parse(
            AUDIT_EVENT,
            &[("_id".to_owned(), id.to_owned())],
            self.parse_options(false),
        )
        .map_err(|issues| Error::with_issues(ErrorKind::BadRequest, issues))?;
        q.count = 1;
        q.total = TotalMode::None;
        self.restrict(&mut q, access, permit)?;
        self.store
            .search_audit(tx, &q)
            .await?
            .matches
            .into_iter()
            .next()
            .ok_or_else(|| Error::not_found(format!("{AUDIT_EVENT}/{id} is not known")))
    }

    /// vread: https://hl7.org/fhir/R4/http.html#vread
    pub async fn vread(
        &self,
        access: &Access,
        res_type: &str,
        id: &str,
        version: &str,
    ) -> Result<StoredResource> {
        require_supported(res_type)?;
        let permit = access.permit(res_type, Op::Read)?;
        let v: i64 = version.parse().map_err(|_| {
            Error::not_found(format!(
                "Version '{version}' of {res_type}/{id} is not known"
            ))
        })?;
        self.audit_visible(res_type).await?;
        let mut tx = self.store.begin_read().await?;
        let out = self
            .vread_in(&mut tx, access, &permit, res_type, id, v)
            .await;
        tx.rollback().await?;
        out
    }

    pub(crate) async fn vread_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        permit: &Permit,
        res_type: &str,
        id: &str,
        v: i64,
    ) -> Result<StoredResource> {
        if res_type == AUDIT_EVENT {
            // Audit events are never changed: version 1 is the only one.
            let r = self.audit_read(tx, access, permit, id).await?;
            return if v == 1 {
                Ok(r)
            } else {
                Err(Error::not_found(format!(
                    "Version {v} of {res_type}/{id} is not known"
                )))
            };
        }
        // Compartment and granular restrictions follow the resource as it is now.
        self.visible_current(tx, access, permit, res_type, id, false)
            .await?;
        match self.store.version(tx, res_type, id, v).await? {
            None => Err(Error::not_found(format!(
                "Version {v} of {res_type}/{id} is not known"
            ))),
            Some(h) if h.resource.deleted => Err(Error::gone(format!(
                "Version {v} of {res_type}/{id} is a deletion"
            ))),
            Some(h) => match h.resource.json() {
                Some(json) if !access.may_see_labels(&json) => {
                    Err(Error::not_found(format!("{res_type}/{id} is not known")))
                }
                _ => Ok(h.resource),
            },
        }
    }

    /// create, optionally conditional (`If-None-Exist`): https://hl7.org/fhir/R4/http.html#create
    ///
    /// A conditional create claims a row keyed by the normalised criteria in the same transaction, so concurrent
    /// identical requests cannot both insert: the loser rolls back, looks again and finds the winner's resource.
    pub async fn create(
        &self,
        access: &Access,
        res_type: &str,
        resource: Value,
        if_none_exist: Option<&str>,
    ) -> Result<WriteOutcome> {
        require_supported(res_type)?;
        access.permit(res_type, Op::Create)?;
        let index = self.prepare(res_type, &resource)?;
        for _attempt in 0..5 {
            let mut tx = self.store.begin_write().await?;
            match self
                .create_in(
                    &mut tx,
                    access,
                    res_type,
                    resource.clone(),
                    &index,
                    if_none_exist,
                    None,
                )
                .await
            {
                Ok(outcome) => {
                    tx.commit().await?;
                    return Ok(outcome);
                }
                Err(CreateError::Lost) => {
                    tx.rollback().await?;
                    continue;
                }
                Err(CreateError::Other(e)) => {
                    tx.rollback().await?;
                    return Err(e);
                }
            }
        }
        Err(Error::conflict(
            "Conditional create kept losing races with concurrent requests; retry",
        ))
    }

    /// The create step inside a caller's transaction. `id` is pre-assigned for transaction entries.
    #[allow(
        clippy::too_many_arguments,
        reason = "the create step shared by POST and Bundles"
    )]
    pub(crate) async fn create_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        res_type: &str,
        resource: Value,
        index: &[IndexEntry],
        if_none_exist: Option<&str>,
        id: Option<String>,
    ) -> std::result::Result<WriteOutcome, CreateError> {
        refuse_audit_write(res_type)?;
        let permit = access.permit(res_type, Op::Create)?;
        let mut key = None;
        if let Some(criteria) = if_none_exist {
            let params = parse_query_string(criteria);
            let matches = self
                .match_conditional(tx, access, &permit, res_type, &params)
                .await?;
            match matches.len() {
                0 => key = Some(criteria_hash(&params)),
                1 => {
                    return Ok(WriteOutcome {
                        resource: matches.into_iter().next().ok_or(CreateError::Lost)?,
                        created: false,
                    });
                }
                n => {
                    return Err(Error::precondition_failed(format!(
                        "If-None-Exist matched {n} {res_type} resources; it must match at most one"
                    ))
                    .into());
                }
            }
        }
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let sync = self.outbox.describe(res_type, &id, &resource);
        let stored = self
            .store
            .insert(tx, res_type, &id, resource, index, Method::Post)
            .await?;
        self.check_written(tx, access, &permit, &stored).await?;
        self.outbox
            .enqueue(tx, sync.as_ref(), stored.version, SyncOp::Upsert)
            .await?;
        if let Some(hash) = key
            && !self
                .store
                .claim_conditional_key(tx, res_type, &hash, stored.pk)
                .await?
        {
            return Err(CreateError::Lost);
        }
        Ok(WriteOutcome {
            resource: stored,
            created: true,
        })
    }

    /// Runs conditional criteria as a search inside `tx`, limited to what the token may see; criteria with no
    /// recognised parameter are an error (they would otherwise match everything).
    pub(crate) async fn match_conditional(
        &self,
        tx: &mut Tx,
        access: &Access,
        permit: &Permit,
        res_type: &str,
        params: &[(String, String)],
    ) -> Result<Vec<StoredResource>> {
        let mut q = search::parse(res_type, params, self.parse_options(true))
            .map_err(|issues| Error::with_issues(ErrorKind::BadRequest, issues))?;
        if q.criteria.is_empty() {
            return Err(Error::bad_request(format!(
                "Conditional criteria for {res_type} must contain at least one search parameter"
            )));
        }
        self.restrict(&mut q, access, permit)?;
        q.count = 2;
        q.total = TotalMode::None;
        q.include.clear();
        q.revinclude.clear();
        Ok(self.store.search(tx, &q).await?.matches)
    }

    /// update (PUT), including update-as-create with a client-chosen id: https://hl7.org/fhir/R4/http.html#update
    pub async fn update(
        &self,
        access: &Access,
        res_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome> {
        require_supported(res_type)?;
        access.permit(res_type, Op::Update)?;
        check_id(id)?;
        let index = self.prepare(res_type, &resource)?;
        check_body_id(&resource, id)?;
        let mut tx = self.store.begin_write().await?;
        let out = self
            .update_in(
                &mut tx,
                access,
                res_type,
                id,
                resource,
                &index,
                if_match,
                Method::Put,
            )
            .await;
        finish(tx, out).await
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the write step shared by PUT, conditional PUT, PATCH and Bundles"
    )]
    pub(crate) async fn update_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        res_type: &str,
        id: &str,
        resource: Value,
        index: &[IndexEntry],
        if_match: Option<i64>,
        method: Method,
    ) -> Result<WriteOutcome> {
        refuse_audit_write(res_type)?;
        let permit = access.permit(res_type, Op::Update)?;
        let current = self
            .visible_current(tx, access, &permit, res_type, id, true)
            .await?;
        if let Some(expected) = if_match {
            let actual = current.as_ref().filter(|c| !c.deleted).map(|c| c.version);
            if actual != Some(expected) {
                return Err(Error::precondition_failed(match actual {
                    Some(v) => format!(
                        "If-Match expected version {expected} of {res_type}/{id} but it is at version {v}"
                    ),
                    None => format!(
                        "If-Match expected version {expected} of {res_type}/{id}, which does not exist"
                    ),
                }));
            }
        }
        let outcome = match current {
            None => {
                // Update-as-create needs the right to create.
                let create = access.permit(res_type, Op::Create)?;
                let sync = self.outbox.describe(res_type, id, &resource);
                let stored = self
                    .store
                    .insert(tx, res_type, id, resource, index, method)
                    .await?;
                self.check_written(tx, access, &create, &stored).await?;
                self.outbox
                    .enqueue(tx, sync.as_ref(), stored.version, SyncOp::Upsert)
                    .await?;
                WriteOutcome {
                    resource: stored,
                    created: true,
                }
            }
            Some(cur) => {
                // An update that changes nothing creates no new version.
                if !cur.deleted
                    && let Some(existing) = cur.json()
                    && without_server_meta(&existing)
                        == without_server_meta(&{
                            let mut r = resource.clone();
                            crate::store::stamp(&mut r, id, cur.version, cur.last_updated);
                            r
                        })
                {
                    return Ok(WriteOutcome {
                        resource: cur,
                        created: false,
                    });
                }
                let created = cur.deleted;
                let sync = self.outbox.describe(res_type, id, &resource);
                let stored = self.store.update(tx, &cur, resource, index, method).await?;
                self.check_written(tx, access, &permit, &stored).await?;
                self.outbox
                    .enqueue(tx, sync.as_ref(), stored.version, SyncOp::Upsert)
                    .await?;
                WriteOutcome {
                    resource: stored,
                    created,
                }
            }
        };
        Ok(outcome)
    }

    /// Conditional update: https://hl7.org/fhir/R4/http.html#cond-update
    pub async fn conditional_update(
        &self,
        access: &Access,
        res_type: &str,
        params: &[(String, String)],
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome> {
        require_supported(res_type)?;
        let index = self.prepare(res_type, &resource)?;
        let mut tx = self.store.begin_write().await?;
        let out = self
            .conditional_update_in(
                &mut tx, access, res_type, params, resource, &index, if_match,
            )
            .await;
        finish(tx, out).await
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "mirrors update_in with criteria instead of an id"
    )]
    pub(crate) async fn conditional_update_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        res_type: &str,
        params: &[(String, String)],
        resource: Value,
        index: &[IndexEntry],
        if_match: Option<i64>,
    ) -> Result<WriteOutcome> {
        let permit = access.permit(res_type, Op::Update)?;
        let matches = self
            .match_conditional(tx, access, &permit, res_type, params)
            .await?;
        let body_id = resource
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let id = match (matches.as_slice(), body_id) {
            ([], Some(id)) => {
                check_id(&id)?;
                id
            }
            ([], None) => uuid::Uuid::new_v4().to_string(),
            ([one], Some(bid)) if bid != one.id => {
                return Err(Error::bad_request(format!(
                    "The resource id '{bid}' does not match the id '{}' of the {res_type} the criteria found",
                    one.id
                )));
            }
            ([one], _) => one.id.clone(),
            _ => {
                return Err(Error::precondition_failed(format!(
                    "The conditional update criteria matched several {res_type} resources"
                )));
            }
        };
        self.update_in(
            tx,
            access,
            res_type,
            &id,
            resource,
            index,
            if_match,
            Method::Put,
        )
        .await
    }

    /// delete: https://hl7.org/fhir/R4/http.html#delete. Deleting what is already deleted succeeds (idempotent).
    pub async fn delete(
        &self,
        access: &Access,
        res_type: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Option<StoredResource>> {
        require_supported(res_type)?;
        access.permit(res_type, Op::Delete)?;
        let mut tx = self.store.begin_write().await?;
        let out = self
            .delete_in(&mut tx, access, res_type, id, if_match)
            .await;
        finish(tx, out).await
    }

    pub(crate) async fn delete_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        res_type: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Option<StoredResource>> {
        refuse_audit_write(res_type)?;
        let permit = access.permit(res_type, Op::Delete)?;
        match self
            .visible_current(tx, access, &permit, res_type, id, true)
            .await?
        {
            None => Err(Error::not_found(format!("{res_type}/{id} is not known"))),
            Some(cur) if cur.deleted => Ok(None),
            Some(cur) => {
                if let Some(expected) = if_match
                    && expected != cur.version
                {
                    return Err(Error::precondition_failed(format!(
                        "If-Match expected version {expected} of {res_type}/{id} but it is at version {}",
                        cur.version
                    )));
                }
                let deleted = self.store.delete(tx, &cur).await?;
                self.enqueue_delete(tx, &cur).await?;
                Ok(Some(deleted))
            }
        }
    }

    /// Enqueues the deletion of a KAP resource; `before` is the version deleted (it carries the identifier).
    async fn enqueue_delete(&self, tx: &mut Tx, before: &StoredResource) -> Result<()> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        if let Some(json) = before.json() {
            let sync = self.outbox.describe(&before.res_type, &before.id, &json);
            self.outbox
                .enqueue(tx, sync.as_ref(), before.version, SyncOp::Delete)
                .await?;
        }
        Ok(())
    }

    /// Conditional delete (single match; several → 412): https://hl7.org/fhir/R4/http.html#cdelete
    pub async fn conditional_delete(
        &self,
        access: &Access,
        res_type: &str,
        params: &[(String, String)],
    ) -> Result<Option<StoredResource>> {
        require_supported(res_type)?;
        let mut tx = self.store.begin_write().await?;
        let out = self
            .conditional_delete_in(&mut tx, access, res_type, params)
            .await;
        finish(tx, out).await
    }

    pub(crate) async fn conditional_delete_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        res_type: &str,
        params: &[(String, String)],
    ) -> Result<Option<StoredResource>> {
        refuse_audit_write(res_type)?;
        let permit = access.permit(res_type, Op::Delete)?;
        let matches = self
            .match_conditional(tx, access, &permit, res_type, params)
            .await?;
        match matches.as_slice() {
            [] => Ok(None),
            [one] => {
                let deleted = self.store.delete(tx, one).await?;
                self.enqueue_delete(tx, one).await?;
                Ok(Some(deleted))
            }
            _ => Err(Error::precondition_failed(format!(
                "The conditional delete criteria matched several {res_type} resources; refine them"
            ))),
        }
    }

    /// patch with JSON Patch (RFC 6902): https://hl7.org/fhir/R4/http.html#patch
    pub async fn patch(
        &self,
        access: &Access,
        res_type: &str,
        id: &str,
        patch: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome> {
        require_supported(res_type)?;
        access.permit(res_type, Op::Update)?;
        let mut tx = self.store.begin_write().await?;
        let out = self
            .patch_in(&mut tx, access, res_type, id, patch, if_match)
            .await;
        finish(tx, out).await
    }

    pub(crate) async fn patch_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        res_type: &str,
        id: &str,
        patch: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome> {
        let permit = access.permit(res_type, Op::Update)?;
        let current = match self
            .visible_current(tx, access, &permit, res_type, id, true)
            .await?
        {
            None => return Err(Error::not_found(format!("{res_type}/{id} is not known"))),
            Some(r) if r.deleted => {
                return Err(Error::gone(format!("{res_type}/{id} has been deleted")));
            }
            Some(r) => r,
        };
        if let Some(expected) = if_match
            && expected != current.version
        {
            return Err(Error::precondition_failed(format!(
                "If-Match expected version {expected} of {res_type}/{id} but it is at version {}",
                current.version
            )));
        }
        let ops: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
            Error::bad_request(format!("The body is not a valid JSON Patch document: {e}"))
        })?;
        let mut doc = current.json().ok_or_else(|| {
            Error::internal(anyhow::anyhow!("stored {res_type}/{id} is not valid JSON"))
        })?;
        json_patch::patch(&mut doc, &ops).map_err(|e| {
            Error::with_issues(
                ErrorKind::Unprocessable,
                vec![Issue::error(
                    "processing",
                    format!("The patch cannot be applied: {e}"),
                )],
            )
        })?;
        if doc.get("resourceType").and_then(Value::as_str) != Some(res_type)
            || doc.get("id").and_then(Value::as_str) != Some(id)
        {
            return Err(Error::with_issues(
                ErrorKind::Unprocessable,
                vec![Issue::error(
                    "processing",
                    "A patch may not change resourceType or id",
                )],
            ));
        }
        let index = self
            .prepare(res_type, &doc)
            .map_err(|e| Error::with_issues(ErrorKind::Unprocessable, e.issues))?;
        self.update_in(tx, access, res_type, id, doc, &index, None, Method::Patch)
            .await
    }

    /// search: https://hl7.org/fhir/R4/http.html#search — narrowed in SQL to what the token may see.
    pub async fn search(&self, access: &Access, q: &SearchQuery) -> Result<SearchPage> {
        self.audit_visible(&q.resource_type).await?;
        // A search without _include or _revinclude runs without a transaction around it: the page is one SQL
        // statement (access rules and chains included). A total, when the page does not show it (more pages, or
        // a later page), is a second statement that counts the matches as they are a moment later, which is what
        // PostgreSQL's read-committed transactions give each statement anyway. On SQLite this saves the BEGIN and
        // ROLLBACK, each a hop to the connection's thread.
        let single_statement = q.include.is_empty() && q.revinclude.is_empty();
        let mut tx = if single_statement {
            self.store.begin_single().await?
        } else {
            self.store.begin_read().await?
        };
        let page = self.search_in(&mut tx, access, q).await;
        tx.rollback().await?;
        page
    }

    pub(crate) async fn search_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        q: &SearchQuery,
    ) -> Result<SearchPage> {
        let permit = access.permit(&q.resource_type, Op::Search)?;
        let mut q = q.clone();
        self.restrict(&mut q, access, &permit)?;
        if q.resource_type == AUDIT_EVENT {
            return self.store.search_audit(tx, &q).await;
        }
        let mut page = self.store.search(tx, &q).await?;
        page.includes = self
            .filter_included(tx, access, std::mem::take(&mut page.includes))
            .await?;
        Ok(page)
    }

    /// history (instance, type or system): https://hl7.org/fhir/R4/http.html#history. Entries the token may not
    /// see are left out; `total` is then left out too, as it would count them.
    pub async fn history(
        &self,
        access: &Access,
        res_type: Option<&str>,
        id: Option<&str>,
        since: Option<i64>,
        before: Option<i64>,
        count: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<i64>, bool)> {
        if let Some(t) = res_type {
            require_supported(t)?;
            access.permit(t, Op::Read)?;
        }
        let mut tx = self.store.begin_read().await?;
        let out = self
            .history_in(&mut tx, access, res_type, id, since, before, count)
            .await;
        tx.rollback().await?;
        out
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the three history levels share one implementation"
    )]
    async fn history_in(
        &self,
        tx: &mut Tx,
        access: &Access,
        res_type: Option<&str>,
        id: Option<&str>,
        since: Option<i64>,
        before: Option<i64>,
        count: usize,
    ) -> Result<(Vec<HistoryEntry>, Option<i64>, bool)> {
        if let (Some(t), Some(i)) = (res_type, id) {
            let permit = access.permit(t, Op::Read)?;
            if self
                .visible_current(tx, access, &permit, t, i, false)
                .await?
                .is_none()
            {
                return Err(Error::not_found(format!("{t}/{i} is not known")));
            }
        }
        // System history leaves out, in SQL, the types the token may not read at all (e.g. AuditEvent).
        let excluded: Vec<&str> = if res_type.is_none() {
            registry::SUPPORTED_TYPES
                .iter()
                .copied()
                .filter(|t| access.permit(t, Op::Read).is_err())
                .collect()
        } else {
            Vec::new()
        };
        let scope = HistoryScope {
            res_type,
            id,
            since,
            exclude_types: &excluded,
        };
        let mut entries = self.store.history(tx, &scope, before, count + 1).await?;
        let more = entries.len() > count;
        entries.truncate(count);
        let fetched = entries.len();
        let mut kept = Vec::with_capacity(fetched);
        for e in entries {
            if self.history_entry_visible(tx, access, &e).await? {
                kept.push(e);
            }
        }
        let total = if kept.len() == fetched && !more && before.is_none() {
            Some(kept.len() as i64)
        } else if kept.len() == fetched && access_is_unrestricted(access) {
            Some(self.store.history_count(tx, &scope).await?)
        } else {
            None
        };
        Ok((kept, total, more))
    }

    async fn history_entry_visible(
        &self,
        tx: &mut Tx,
        access: &Access,
        e: &HistoryEntry,
    ) -> Result<bool> {
        let r = &e.resource;
        let Ok(permit) = access.permit(&r.res_type, Op::Read) else {
            return Ok(false);
        };
        if !may_see_labels(access, r) {
            return Ok(false);
        }
        if permit.compartment.is_none() && permit.queries.is_empty() {
            return Ok(true);
        }
        // Compartment and granular restrictions follow the resource as it is now.
        match self.store.current(tx, &r.res_type, &r.id).await? {
            Some(cur) if !cur.deleted => {
                let label_free = StoredResource {
                    content: None,
                    ..cur
                };
                self.visible(tx, access, &permit, &label_free).await
            }
            _ => Ok(false),
        }
    }
}

/// True when the token sees everything it can name (no patient restriction, no granular filters, notes allowed).
fn access_is_unrestricted(access: &Access) -> bool {
    access.psychotherapy
        && access.patient.is_none()
        && access
            .scopes
            .resource_scopes()
            .all(|s| s.query.is_empty() && s.context != crate::auth::scopes::ScopeContext::Patient)
}

/// Why a create step did not complete.
#[derive(Debug)]
pub(crate) enum CreateError {
    /// Another request claimed the same conditional-create key first.
    Lost,
    Other(Error),
}

impl From<Error> for CreateError {
    fn from(e: Error) -> Self {
        CreateError::Other(e)
    }
}

fn check_body_id(resource: &Value, id: &str) -> Result<()> {
    match resource.get("id").and_then(Value::as_str) {
        Some(body_id) if body_id == id => Ok(()),
        Some(body_id) => Err(Error::invalid_at(
            "invalid",
            format!("The resource id '{body_id}' does not match the id '{id}' in the URL"),
            "id",
        )),
        None => Err(Error::invalid_at(
            "required",
            "An update must carry the resource id in its body",
            "id",
        )),
    }
}

/// Commits on success, rolls back on failure.
async fn finish<T>(tx: Tx, out: Result<T>) -> Result<T> {
    match out {
        Ok(v) => {
            tx.commit().await?;
            Ok(v)
        }
        Err(e) => {
            tx.rollback().await?;
            Err(e)
        }
    }
}
