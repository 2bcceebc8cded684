//! The versioned FHIR resource store: current versions, full history and search-index rows, written in one database
//! transaction per write, on SQLite or PostgreSQL with the same SQL (https://hl7.org/fhir/R4/http.html#versioning).
//!
//! What is stored is the client's JSON as received (numbers keep their exact text, extensions and `_field`
//! primitive extensions are untouched); only `id`, `meta.versionId` and `meta.lastUpdated` are the server's.

pub mod audit;
pub mod batch;
pub mod db;
pub mod search_sql;
pub mod sqlite_pool;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fhir::datetime::{format_instant, now_micros};
use crate::fhir::extract::{IndexEntry, IndexValue};
use db::{Col, Db, Sql, Tx, Val};

/// A row of `resources` (the current version) or of `resource_history` (any version).
#[derive(Debug, Clone)]
pub struct StoredResource {
    pub pk: i64,
    pub res_type: String,
    pub id: String,
    pub version: i64,
    /// Microseconds since the Unix epoch.
    pub last_updated: i64,
    pub deleted: bool,
    /// The resource JSON text, `None` for a deletion.
    pub content: Option<String>,
}

impl StoredResource {
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    pub fn last_modified_instant(&self) -> String {
        format_instant(self.last_updated)
    }

    /// The resource as JSON (`None` when deleted or, impossibly, unparsable).
    pub fn json(&self) -> Option<Value> {
        self.content
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
    }

    pub fn reference(&self) -> String {
        format!("{}/{}", self.res_type, self.id)
    }
}

/// One entry of a history listing.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub hpk: i64,
    pub method: String,
    pub resource: StoredResource,
}

/// How a version came about, recorded in history (`Bundle.entry.request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// The store: a pool and the operations, each run inside a caller-provided transaction so that several writes
/// (a transaction Bundle, a KAP record) commit together or not at all.
#[derive(Clone, Debug)]
pub struct Store {
    pub db: Db,
    /// Reads by id outside a transaction, answered together (see [`batch`]).
    reads: std::sync::Arc<batch::ReadBatcher>,
}

pub(crate) const RESOURCE_COLS: &str = "pk, res_type, id, version, last_updated, deleted, content";
pub(crate) const RESOURCE_KINDS: &[Col] = &[
    Col::Int,
    Col::Text,
    Col::Text,
    Col::Int,
    Col::Int,
    Col::Int,
    Col::OptText,
];

pub(crate) fn resource_from_row(mut row: db::Row) -> StoredResource {
    StoredResource {
        pk: row.int(0),
        res_type: row.text(1),
        id: row.text(2),
        version: row.int(3),
        last_updated: row.int(4),
        deleted: row.int(5) != 0,
        content: row.take_opt_text(6),
    }
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping every other element (and its order) as sent.
pub fn stamp(resource: &mut Value, id: &str, version: i64, last_updated: i64) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    // `id` goes right after `resourceType`, where FHIR JSON conventionally has it.
    if !obj.contains_key("id") {
        let mut reordered = serde_json::Map::with_capacity(obj.len() + 2);
        for (k, v) in std::mem::take(obj) {
            let is_type = k == "resourceType";
            reordered.insert(k, v);
            if is_type {
                reordered.insert("id".into(), Value::String(id.to_owned()));
            }
        }
        *obj = reordered;
    }
    obj.insert("id".into(), Value::String(id.to_owned()));
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(serde_json::Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert(
            "lastUpdated".into(),
            Value::String(format_instant(last_updated)),
        );
    }
}

impl Store {
    pub fn new(db: Db) -> Store {
        Store {
            db,
            reads: std::sync::Arc::new(batch::ReadBatcher::new(batch::READ_LANES)),
        }
    }

    pub async fn begin_read(&self) -> Result<Tx> {
        Ok(self.db.begin_read().await?)
    }

    /// See [`db::Db::begin_single`]: statements without a transaction, each with its own snapshot.
    pub async fn begin_single(&self) -> Result<Tx> {
        Ok(self.db.begin_single().await?)
    }

    pub async fn begin_write(&self) -> Result<Tx> {
        Ok(self.db.begin_write().await?)
    }

    /// The current row of a resource, deleted or not.
    pub async fn current(
        &self,
        tx: &mut Tx,
        res_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>> {
        let mut sql = Sql::new(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE res_type = "
        ));
        sql.bind(res_type).push(" AND id = ").bind(id);
        let rows = tx.fetch(&sql, RESOURCE_KINDS).await?;
        Ok(rows.into_iter().next().map(resource_from_row))
    }

    /// The current row of a resource, read outside any transaction (one statement, one round trip).
    pub async fn current_direct(&self, res_type: &str, id: &str) -> Result<Option<StoredResource>> {
        if self.db.backend() == db::Backend::Sqlite {
            return self.reads.read(&self.db, res_type, id).await;
        }
        // PostgreSQL: each read on its own. An equality on the unique key is always planned as an index look-up,
        // whereas an `IN` list was planned as a sequential scan while the table statistics lagged behind a bulk
        // load (40 ms a statement).
        let mut sql = Sql::new(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE res_type = "
        ));
        sql.bind(res_type).push(" AND id = ").bind(id);
        let rows = self.db.fetch(&sql, RESOURCE_KINDS).await?;
        Ok(rows.into_iter().next().map(resource_from_row))
    }

    /// The current row of a resource, locked against concurrent writers until the transaction ends (PostgreSQL
    /// `FOR UPDATE`; SQLite write transactions are already exclusive). Writers of the same resource then queue
    /// instead of failing on a version race.
    pub async fn current_for_update(
        &self,
        tx: &mut Tx,
        res_type: &str,
        id: &str,
    ) -> Result<Option<StoredResource>> {
        let mut sql = Sql::new(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE res_type = "
        ));
        sql.bind(res_type).push(" AND id = ").bind(id);
        if tx.backend() == db::Backend::Postgres {
            sql.push(" FOR UPDATE");
        }
        let rows = tx.fetch(&sql, RESOURCE_KINDS).await?;
        Ok(rows.into_iter().next().map(resource_from_row))
    }

    /// Which of `ids` exist as `res_type` (deleted or not). On PostgreSQL the rows are locked until the transaction
    /// ends ([`Store::current_for_update`]).
    pub async fn existing_ids(
        &self,
        tx: &mut Tx,
        res_type: &str,
        ids: &[&str],
    ) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if tx.backend() == db::Backend::Postgres {
            // One key at a time: while a bulk load outruns the table statistics, PostgreSQL plans a long IN list
            // as a sequential scan (seconds per chunk), whereas an equality on the unique key always uses it.
            for id in ids {
                if let Some(found) = self.current_for_update(tx, res_type, id).await? {
                    out.push(found.id);
                }
            }
            return Ok(out);
        }
        for chunk in ids.chunks(INSERT_CHUNK * 2) {
            let mut sql = Sql::new("SELECT id FROM resources WHERE res_type = ");
            sql.bind(res_type)
                .push(" AND id IN (")
                .bind_list(chunk)
                .push(")");
            out.extend(
                tx.fetch(&sql, &[Col::Text])
                    .await?
                    .into_iter()
                    .map(|r| r.text(0)),
            );
        }
        Ok(out)
    }

    /// Current rows by internal key, in the order given.
    pub async fn by_pks(&self, tx: &mut Tx, pks: &[i64]) -> Result<Vec<StoredResource>> {
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(&format!(
            "SELECT {RESOURCE_COLS} FROM resources WHERE pk IN ("
        ));
        sql.bind_list(pks).push(")");
        let mut found: Vec<StoredResource> = tx
            .fetch(&sql, RESOURCE_KINDS)
            .await?
            .into_iter()
            .map(resource_from_row)
            .collect();
        found.sort_by_key(|r| pks.iter().position(|p| *p == r.pk));
        Ok(found)
    }

    /// One version from history.
    pub async fn version(
        &self,
        tx: &mut Tx,
        res_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<HistoryEntry>> {
        let mut sql = Sql::new(
            "SELECT hpk, method, res_pk, res_type, id, version, last_updated, content FROM resource_history WHERE res_type = ",
        );
        sql.bind(res_type)
            .push(" AND id = ")
            .bind(id)
            .push(" AND version = ")
            .bind(version);
        let rows = tx.fetch(&sql, HISTORY_KINDS).await?;
        Ok(rows.into_iter().next().map(history_from_row))
    }

    /// Writes version 1 of a new resource (or a new version of a deleted one when `previous` is given).
    pub async fn insert(
        &self,
        tx: &mut Tx,
        res_type: &str,
        id: &str,
        mut resource: Value,
        index: &[IndexEntry],
        method: Method,
    ) -> Result<StoredResource> {
        let now = now_micros();
        stamp(&mut resource, id, 1, now);
        let content = serde_json::to_string(&resource)?;
        let mut sql = Sql::new(
            "INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES (",
        );
        sql.bind(res_type)
            .push(", ")
            .bind(id)
            .push(", 1, ")
            .bind(now)
            .push(", 0, ")
            .bind(content.as_str())
            .push(") RETURNING pk");
        let rows = match tx.fetch(&sql, &[Col::Int]).await {
            Ok(rows) => rows,
            Err(e) if db::is_unique_violation(&e) => {
                return Err(Error::conflict(format!("{res_type}/{id} already exists")));
            }
            Err(e) => return Err(e.into()),
        };
        let pk = rows
            .first()
            .map(|r| r.int(0))
            .ok_or_else(|| Error::internal(anyhow::anyhow!("insert returned no key")))?;
        let stored = StoredResource {
            pk,
            res_type: res_type.to_owned(),
            id: id.to_owned(),
            version: 1,
            last_updated: now,
            deleted: false,
            content: Some(content),
        };
        self.append_history(tx, &stored, method).await?;
        self.write_index(tx, &stored, index, true).await?;
        Ok(stored)
    }

    /// Writes the next version of an existing resource. The version check lives in the UPDATE's WHERE clause, so
    /// two concurrent writers of the same version cannot both succeed.
    pub async fn update(
        &self,
        tx: &mut Tx,
        current: &StoredResource,
        mut resource: Value,
        index: &[IndexEntry],
        method: Method,
    ) -> Result<StoredResource> {
        let now = now_micros().max(current.last_updated + 1);
        let version = current.version + 1;
        stamp(&mut resource, &current.id, version, now);
        let content = serde_json::to_string(&resource)?;
        let mut sql = Sql::new("UPDATE resources SET version = ");
        sql.bind(version)
            .push(", last_updated = ")
            .bind(now)
            .push(", deleted = 0, content = ")
            .bind(content.as_str())
            .push(" WHERE pk = ")
            .bind(current.pk)
            .push(" AND version = ")
            .bind(current.version);
        if tx.execute(&sql).await? != 1 {
            return Err(Error::conflict(format!(
                "{}/{} was changed by another request; retry with its current version",
                current.res_type, current.id
            )));
        }
        let stored = StoredResource {
            version,
            last_updated: now,
            deleted: false,
            content: Some(content),
            ..current.clone()
        };
        self.append_history(tx, &stored, method).await?;
        self.write_index(tx, &stored, index, false).await?;
        Ok(stored)
    }

    /// Marks a resource deleted as a new version without content; its index rows and conditional keys go.
    pub async fn delete(&self, tx: &mut Tx, current: &StoredResource) -> Result<StoredResource> {
        let now = now_micros().max(current.last_updated + 1);
        let version = current.version + 1;
        let mut sql = Sql::new("UPDATE resources SET version = ");
        sql.bind(version)
            .push(", last_updated = ")
            .bind(now)
            .push(", deleted = 1, content = NULL WHERE pk = ")
            .bind(current.pk)
            .push(" AND version = ")
            .bind(current.version);
        if tx.execute(&sql).await? != 1 {
            return Err(Error::conflict(format!(
                "{}/{} was changed by another request; retry",
                current.res_type, current.id
            )));
        }
        let stored = StoredResource {
            version,
            last_updated: now,
            deleted: true,
            content: None,
            ..current.clone()
        };
        self.append_history(tx, &stored, Method::Delete).await?;
        self.write_index(tx, &stored, &[], false).await?;
        let mut sql = Sql::new("DELETE FROM conditional_keys WHERE res_pk = ");
        sql.bind(current.pk);
        tx.execute(&sql).await?;
        Ok(stored)
    }

    /// Claims a conditional-create key for `pk`. Returns false when another resource already holds it (the caller
    /// then rolls back and looks again). `ON CONFLICT DO NOTHING` waits for a concurrent holder to commit or roll
    /// back, and does not abort the surrounding PostgreSQL transaction.
    pub async fn claim_conditional_key(
        &self,
        tx: &mut Tx,
        res_type: &str,
        hash: &str,
        pk: i64,
    ) -> Result<bool> {
        let mut sql =
            Sql::new("INSERT INTO conditional_keys (res_type, criteria_hash, res_pk) VALUES (");
        sql.bind(res_type)
            .push(", ")
            .bind(hash)
            .push(", ")
            .bind(pk)
            .push(") ON CONFLICT DO NOTHING");
        Ok(tx.execute(&sql).await? == 1)
    }

    async fn append_history(&self, tx: &mut Tx, r: &StoredResource, method: Method) -> Result<()> {
        self.append_history_many(tx, std::slice::from_ref(r), method)
            .await
    }

    /// History rows for several new versions, in multi-row statements.
    async fn append_history_many(
        &self,
        tx: &mut Tx,
        rows: &[StoredResource],
        method: Method,
    ) -> Result<()> {
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(
                "INSERT INTO resource_history (res_pk, res_type, id, version, last_updated, method, content) VALUES ",
            );
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .bind(r.pk)
                    .push(", ")
                    .bind(r.res_type.as_str())
                    .push(", ")
                    .bind(r.id.as_str())
                    .push(", ")
                    .bind(r.version)
                    .push(", ")
                    .bind(r.last_updated)
                    .push(", ")
                    .bind(method.as_str())
                    .push(", ")
                    .bind(r.content.clone())
                    .push(")");
            }
            tx.execute(&sql).await?;
        }
        Ok(())
    }

    /// Replaces the index rows of a resource; a resource just inserted (`fresh`) has none to delete.
    async fn write_index(
        &self,
        tx: &mut Tx,
        r: &StoredResource,
        entries: &[IndexEntry],
        fresh: bool,
    ) -> Result<()> {
        if !fresh {
            for table in INDEX_TABLES {
                let mut sql = Sql::new(&format!("DELETE FROM {table} WHERE res_pk = "));
                sql.bind(r.pk);
                tx.execute(&sql).await?;
            }
        }
        let rows: Vec<IndexRow<'_>> = entries
            .iter()
            .map(|e| (r.pk, r.res_type.as_str(), e))
            .collect();
        self.insert_index_rows(tx, &rows).await
    }

    /// Index rows of any number of resources, one multi-row statement per table and chunk: far fewer round trips
    /// than one statement per row.
    async fn insert_index_rows(
        &self,
        tx: &mut Tx,
        rows: &[(i64, &str, &IndexEntry)],
    ) -> Result<()> {
        let by_table = |pred: fn(&IndexValue) -> bool| {
            rows.iter()
                .filter(move |(_, _, e)| pred(&e.value))
                .collect::<Vec<_>>()
        };
        let groups: [(&str, &str, Vec<&IndexRow<'_>>); 6] = [
            (
                "idx_token",
                "system, code",
                by_table(|v| matches!(v, IndexValue::Token { .. })),
            ),
            (
                "idx_string",
                "norm, exact",
                by_table(|v| matches!(v, IndexValue::String { .. })),
            ),
            (
                "idx_date",
                "lo, hi",
                by_table(|v| matches!(v, IndexValue::Date { .. })),
            ),
            (
                "idx_reference",
                "target_type, target_id, url",
                by_table(|v| matches!(v, IndexValue::Reference { .. })),
            ),
            (
                "idx_quantity",
                "value, lo, hi, system, code, unit",
                by_table(|v| matches!(v, IndexValue::Quantity { .. } | IndexValue::Number { .. })),
            ),
            (
                "idx_uri",
                "uri",
                by_table(|v| matches!(v, IndexValue::Uri { .. })),
            ),
        ];
        let patients = patient_keys(rows);
        for (table, cols, group) in groups {
            let token = table == "idx_token";
            for chunk in group.chunks(INSERT_CHUNK) {
                let mut sql = Sql::new(&format!(
                    "INSERT INTO {table} (res_pk, res_type, param, {cols}{}) VALUES ",
                    if token { ", patient_id" } else { "" }
                ));
                for (i, (pk, res_type, e)) in chunk.iter().enumerate() {
                    if i > 0 {
                        sql.push(", ");
                    }
                    sql.push("(")
                        .bind(*pk)
                        .push(", ")
                        .bind(*res_type)
                        .push(", ")
                        .bind(e.param);
                    for v in index_values(&e.value) {
                        sql.push(", ").bind(v);
                    }
                    if token {
                        match patients.get(pk) {
                            Some(Some(patient)) if e.param == PATIENT_KEYED_PARAM => {
                                sql.push(", ").bind(*patient)
                            }
                            _ => sql.push(", NULL"),
                        };
                    }
                    sql.push(")");
                }
                tx.execute(&sql).await?;
            }
        }
        Ok(())
    }

    /// Inserts version 1 of many new resources at once (the creates of a transaction Bundle), with multi-row
    /// statements for resources, history and indexes. Ids must be new: a clash is a 409.
    pub async fn insert_many(
        &self,
        tx: &mut Tx,
        items: Vec<NewResource>,
        method: Method,
    ) -> Result<Vec<StoredResource>> {
        let now = now_micros();
        let mut prepared: Vec<(StoredResource, Vec<IndexEntry>)> = Vec::with_capacity(items.len());
        for mut item in items {
            stamp(&mut item.resource, &item.id, 1, now);
            let content = serde_json::to_string(&item.resource)?;
            prepared.push((
                StoredResource {
                    pk: 0,
                    res_type: item.res_type,
                    id: item.id,
                    version: 1,
                    last_updated: now,
                    deleted: false,
                    content: Some(content),
                },
                item.index,
            ));
        }
        for chunk in prepared.chunks_mut(INSERT_CHUNK) {
            let mut sql = Sql::new(
                "INSERT INTO resources (res_type, id, version, last_updated, deleted, content) VALUES ",
            );
            for (i, (r, _)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push("(")
                    .bind(r.res_type.as_str())
                    .push(", ")
                    .bind(r.id.as_str())
                    .push(", 1, ")
                    .bind(now)
                    .push(", 0, ")
                    .bind(r.content.clone())
                    .push(")");
            }
            // Keys come back matched by id: neither database promises the order of RETURNING rows.
            sql.push(" RETURNING pk, res_type, id");
            let keys = match tx.fetch(&sql, &[Col::Int, Col::Text, Col::Text]).await {
                Ok(keys) => keys,
                Err(e) if db::is_unique_violation(&e) => {
                    return Err(Error::conflict(
                        "A concurrent request created one of these resources first; retry",
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            for row in keys {
                let (pk, t, id) = (row.int(0), row.text(1), row.text(2));
                if let Some((r, _)) = chunk
                    .iter_mut()
                    .find(|(r, _)| r.id == id && r.res_type == t)
                {
                    r.pk = pk;
                }
            }
        }
        let stored: Vec<StoredResource> = prepared.iter().map(|(r, _)| r.clone()).collect();
        self.append_history_many(tx, &stored, method).await?;
        let rows: Vec<IndexRow<'_>> = prepared
            .iter()
            .flat_map(|(r, entries)| entries.iter().map(move |e| (r.pk, r.res_type.as_str(), e)))
            .collect();
        self.insert_index_rows(tx, &rows).await?;
        Ok(stored)
    }

    /// History of one resource, one type or the whole server, newest first.
    /// `before_hpk` pages backwards.
    pub async fn history(
        &self,
        tx: &mut Tx,
        scope: &HistoryScope<'_>,
        before_hpk: Option<i64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>> {
        let mut sql = Sql::new(
            "SELECT hpk, method, res_pk, res_type, id, version, last_updated, content FROM resource_history WHERE ",
        );
        sql.append(&scope.condition());
        if let Some(b) = before_hpk {
            sql.push(" AND hpk < ").bind(b);
        }
        sql.push(&format!(" ORDER BY hpk DESC LIMIT {limit}"));
        Ok(tx
            .fetch(&sql, HISTORY_KINDS)
            .await?
            .into_iter()
            .map(history_from_row)
            .collect())
    }

    /// Number of history entries in a scope (for `Bundle.total`).
    pub async fn history_count(&self, tx: &mut Tx, scope: &HistoryScope<'_>) -> Result<i64> {
        let mut sql = Sql::new("SELECT COUNT(*) FROM resource_history WHERE ");
        sql.append(&scope.condition());
        let rows = tx.fetch(&sql, &[Col::Int]).await?;
        Ok(rows.first().map(|r| r.int(0)).unwrap_or(0))
    }
}

/// Which history a listing covers: one resource, one type or the whole server, from `since` on, leaving out the
/// types the caller may not read.
#[derive(Debug, Clone, Default)]
pub struct HistoryScope<'a> {
    pub res_type: Option<&'a str>,
    pub id: Option<&'a str>,
    /// Microseconds; only versions written at or after it.
    pub since: Option<i64>,
    pub exclude_types: &'a [&'a str],
}

impl HistoryScope<'_> {
    fn condition(&self) -> Sql {
        let mut sql = Sql::new("1 = 1");
        if let Some(t) = self.res_type {
            sql.push(" AND res_type = ").bind(t);
        }
        if let Some(i) = self.id {
            sql.push(" AND id = ").bind(i);
        }
        if let Some(s) = self.since {
            sql.push(" AND last_updated >= ").bind(s);
        }
        if !self.exclude_types.is_empty() {
            sql.push(" AND res_type NOT IN (")
                .bind_list(self.exclude_types)
                .push(")");
        }
        sql
    }
}

/// Types whose `patient` search parameter holds at most one Patient (its element is 0..1 or 1..1): their
/// [`PATIENT_KEYED_PARAM`] token index rows carry that patient's id (`idx_token.patient_id`, migration 6), so a
/// search for one patient's resources with a code reads one range of one index. Kept in step with the migration.
pub const PATIENT_KEYED_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "Condition",
    "Encounter",
    "Goal",
    "MedicationAdministration",
    "MedicationStatement",
    "Observation",
];

/// The token parameter whose index rows are keyed by patient.
pub const PATIENT_KEYED_PARAM: &str = "code";

/// The patient each resource of `rows` belongs to, for the types of [`PATIENT_KEYED_TYPES`]: `None` when it names
/// no Patient through `patient`, or (not valid for these types) more than one.
fn patient_keys<'a>(rows: &[IndexRow<'a>]) -> std::collections::HashMap<i64, Option<&'a str>> {
    let mut out: std::collections::HashMap<i64, Option<&'a str>> = std::collections::HashMap::new();
    for (pk, res_type, e) in rows {
        if e.param != "patient" || !PATIENT_KEYED_TYPES.contains(res_type) {
            continue;
        }
        if let IndexValue::Reference {
            target_type: Some(t),
            target_id: Some(id),
            ..
        } = &e.value
            && t == "Patient"
        {
            out.entry(*pk)
                .and_modify(|seen| {
                    if *seen != Some(id.as_str()) {
                        *seen = None;
                    }
                })
                .or_insert(Some(id.as_str()));
        }
    }
    out
}

/// One index row to write: the resource's key and type, and the entry.
type IndexRow<'a> = (i64, &'a str, &'a IndexEntry);

/// Rows per multi-row INSERT (well under both databases' limits on bound parameters).
const INSERT_CHUNK: usize = 200;

/// A resource to insert with [`Store::insert_many`].
#[derive(Debug, Clone)]
pub struct NewResource {
    pub res_type: String,
    pub id: String,
    pub resource: Value,
    pub index: Vec<IndexEntry>,
}

const INDEX_TABLES: [&str; 6] = [
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_reference",
    "idx_quantity",
    "idx_uri",
];

const HISTORY_KINDS: &[Col] = &[
    Col::Int,
    Col::Text,
    Col::Int,
    Col::Text,
    Col::Text,
    Col::Int,
    Col::Int,
    Col::OptText,
];

fn history_from_row(mut row: db::Row) -> HistoryEntry {
    let content = row.take_opt_text(7);
    let method = row.text(1);
    HistoryEntry {
        hpk: row.int(0),
        resource: StoredResource {
            pk: row.int(2),
            res_type: row.text(3),
            id: row.text(4),
            version: row.int(5),
            last_updated: row.int(6),
            deleted: method == "DELETE",
            content,
        },
        method,
    }
}

fn index_values(v: &IndexValue) -> Vec<Val> {
    match v {
        IndexValue::Token { system, code } => vec![system.clone().into(), code.clone().into()],
        IndexValue::String { norm, exact } => vec![norm.clone().into(), exact.clone().into()],
        IndexValue::Date { lo, hi } => vec![(*lo).into(), (*hi).into()],
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => vec![
            target_type.clone().into(),
            target_id.clone().into(),
            url.clone().into(),
        ],
        IndexValue::Quantity {
            value,
            lo,
            hi,
            system,
            code,
            unit,
        } => vec![
            (*value).into(),
            (*lo).into(),
            (*hi).into(),
            system.clone().into(),
            code.clone().into(),
            unit.clone().into(),
        ],
        IndexValue::Number { value, lo, hi } => {
            vec![
                (*value).into(),
                (*lo).into(),
                (*hi).into(),
                Val::Null,
                Val::Null,
                Val::Null,
            ]
        }
        IndexValue::Uri { uri } => vec![uri.clone().into()],
    }
}
