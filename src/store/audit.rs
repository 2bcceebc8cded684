//! The audit trail's own table: append-only AuditEvents, one row each plus one row per patient, agent and entity
//! reference, searched through a few columns (https://hl7.org/fhir/R4/auditevent.html#search).
//!
//! AuditEvents are written on every request, so they are not stored as versioned resources (a resource row, a
//! history row and a dozen index rows each): the event JSON and the columns its supported search parameters need are
//! enough. They are served read-only at `/fhir/AuditEvent`: read, vread of version 1, and search on
//! [`SEARCH_PARAMS`]; their history is empty.

#[cfg(test)]
use serde_json::Value;

use crate::error::{Error, Result};
#[cfg(test)]
use crate::fhir::datetime::{now_micros, parse_range};
use crate::fhir::search::{
    Criterion, Direction, KeyValue, Modifier, SearchQuery, SearchValue, Target, TokenSystem,
    TotalMode,
};

use super::db::{Backend, Col, Sql, Tx, Val};
use super::search_sql::{SearchPage, date_condition, escape_like, keyset_condition, page_cursors};
use super::{Store, StoredResource};

/// The AuditEvent search parameters served (besides `_id` and `_lastUpdated`); the CapabilityStatement claims these.
pub const SEARCH_PARAMS: &[&str] = &[
    "action", "agent", "date", "entity", "outcome", "patient", "subtype", "type",
];

/// Reference parameters kept in `audit_event_refs`.
const REF_PARAMS: &[&str] = &["patient", "agent", "entity"];

/// One event ready to append.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: String,
    pub recorded: i64,
    pub(crate) type_system: Option<String>,
    pub(crate) type_code: Option<String>,
    pub(crate) subtype_system: Option<String>,
    pub(crate) subtype_code: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) outcome: Option<String>,
    /// (param, `Type/id`), sorted, without repeats.
    pub(crate) refs: Vec<(&'static str, String)>,
    pub(crate) content: String,
}

impl AuditRow {
    /// The event's id for `recorded`: time-ordered, so that the id index grows at its end.
    pub(crate) fn event_id(recorded: i64) -> String {
        format!(
            "{:014x}-{}",
            recorded.max(0),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    }

    /// Adds `target` as a reference under `param` (and under `patient` as well when it is a Patient's), if it is a
    /// relative reference `Type/id` (the gateway writes only those); anything else is not searchable by it.
    pub(crate) fn add_ref(
        refs: &mut Vec<(&'static str, String)>,
        param: &'static str,
        target: String,
    ) {
        let relative = target.split_once('/').is_some_and(|(t, id)| {
            !t.is_empty()
                && !id.is_empty()
                && !id.contains('/')
                && t.chars().all(|c| c.is_ascii_alphabetic())
        });
        if !relative {
            return;
        }
        if target.starts_with("Patient/") {
            refs.push(("patient", target.clone()));
        }
        refs.push((param, target));
    }
}

#[cfg(test)]
impl AuditRow {
    /// The row of any AuditEvent given as JSON: gives it an id ([`AuditRow::event_id`]), `meta.versionId` 1 and
    /// `meta.lastUpdated` = `recorded`, and takes out its search columns. The gateway writes its events with
    /// `crate::audit::audit_row`; tests make rows of arbitrary events with this.
    pub fn new(mut event: Value) -> Result<AuditRow> {
        let text_at = |v: &Value, pointer: &str| {
            v.pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let reference = |v: &Value| v.get("reference")?.as_str().map(str::to_owned);
        let recorded = event
            .get("recorded")
            .and_then(Value::as_str)
            .and_then(parse_range)
            .map_or_else(now_micros, |r| r.lo);
        let id = AuditRow::event_id(recorded);
        super::stamp(&mut event, &id, 1, recorded);
        let mut refs: Vec<(&'static str, String)> = Vec::new();
        for agent in event["agent"].as_array().into_iter().flatten() {
            if let Some(r) = reference(&agent["who"]) {
                AuditRow::add_ref(&mut refs, "agent", r);
            }
        }
        for entity in event["entity"].as_array().into_iter().flatten() {
            if let Some(r) = reference(&entity["what"]) {
                AuditRow::add_ref(&mut refs, "entity", r);
            }
        }
        refs.sort();
        refs.dedup();
        Ok(AuditRow {
            id,
            recorded,
            type_system: text_at(&event, "/type/system"),
            type_code: text_at(&event, "/type/code"),
            subtype_system: text_at(&event, "/subtype/0/system"),
            subtype_code: text_at(&event, "/subtype/0/code"),
            action: text_at(&event, "/action"),
            outcome: text_at(&event, "/outcome"),
            refs,
            content: serde_json::to_string(&event)?,
        })
    }
}

impl AuditRow {
    /// The event as one line of JSON (no line breaks: JSON escapes them inside strings): an array of id, recorded,
    /// type system and code, subtype system and code, action, outcome, the event's text and its `[param, target]`
    /// references. The audit journal stores these lines; [`AuditRow::from_line`] reads them back.
    pub fn line(&self) -> Result<String> {
        Ok(serde_json::to_string(&(
            &self.id,
            self.recorded,
            &self.type_system,
            &self.type_code,
            &self.subtype_system,
            &self.subtype_code,
            &self.action,
            &self.outcome,
            &self.content,
            &self.refs,
        ))?)
    }
}

/// A journal line as [`AuditRow::line`] writes it.
#[derive(serde::Deserialize)]
struct Line(
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    Vec<(String, String)>,
);

impl AuditRow {
    /// The event a journal line ([`AuditRow::line`]) holds; an error for a line of any other shape (which only a
    /// damaged file can hold).
    pub fn from_line(text: &str) -> Result<AuditRow> {
        let Line(
            id,
            recorded,
            type_system,
            type_code,
            subtype_system,
            subtype_code,
            action,
            outcome,
            content,
            refs,
        ) = serde_json::from_str(text)?;
        let refs = refs
            .into_iter()
            .filter_map(|(param, target)| {
                REF_PARAMS
                    .iter()
                    .find(|p| **p == param)
                    .map(|p| (*p, target))
            })
            .collect();
        Ok(AuditRow {
            id,
            recorded,
            type_system,
            type_code,
            subtype_system,
            subtype_code,
            action,
            outcome,
            refs,
            content,
        })
    }
}

const EVENT_COLS: &str = "e.pk, e.id, e.recorded, e.content";
const EVENT_KINDS: &[Col] = &[Col::Int, Col::Text, Col::Int, Col::Text];

fn event_from_row(mut row: super::db::Row) -> StoredResource {
    StoredResource {
        pk: row.int(0),
        res_type: "AuditEvent".into(),
        id: row.text(1),
        version: 1,
        last_updated: row.int(2),
        deleted: false,
        content: row.take_opt_text(3),
    }
}

fn unsupported(what: &str) -> Error {
    Error::bad_request(format!(
        "AuditEvent search does not support {what}; it supports _id, _lastUpdated, {}, _count, _sort=(-)date",
        SEARCH_PARAMS.join(", ")
    ))
}

/// A token condition on a (system, code) column pair; false (never NULL) when the column is empty, so that `NOT`
/// works on it.
fn token_condition(
    sql: &mut Sql,
    system_col: Option<&str>,
    code_col: &str,
    v: &SearchValue,
) -> Result<()> {
    let SearchValue::Token { system, code } = v else {
        return Err(Error::bad_request("a token value was expected"));
    };
    sql.push(&format!("({code_col} IS NOT NULL"));
    match (system, system_col) {
        (TokenSystem::Any, _) => {}
        (TokenSystem::None, Some(col)) => {
            sql.push(&format!(" AND {col} IS NULL"));
        }
        (TokenSystem::Is(s), Some(col)) => {
            sql.push(&format!(" AND {col} = ")).bind(s.as_str());
        }
        // A code-only element (action, outcome) has no system.
        (TokenSystem::None, None) => {}
        (TokenSystem::Is(_), None) => {
            sql.push(" AND 1 = 0");
        }
    }
    if let Some(c) = code {
        sql.push(&format!(" AND {code_col} = ")).bind(c.as_str());
    }
    sql.push(")");
    Ok(())
}

/// The reference targets (`Type/id`, or a `LIKE` pattern for a bare id) of one reference value.
fn reference_condition(
    sql: &mut Sql,
    param: &str,
    modifier: &Modifier,
    v: &SearchValue,
) -> Result<()> {
    let SearchValue::Reference {
        target_type,
        id,
        url,
    } = v
    else {
        return Err(Error::bad_request("a reference value was expected"));
    };
    let target_type = match modifier {
        Modifier::Type(t) => Some(t.clone()),
        _ => target_type.clone(),
    }
    .or_else(|| (param == "patient").then(|| "Patient".to_owned()));
    match (target_type, id, url) {
        (Some(t), Some(i), _) => {
            sql.push("a.target = ").bind(format!("{t}/{i}"));
        }
        (None, Some(i), _) => {
            sql.push("a.target LIKE ")
                .bind(format!("%/{}", escape_like(i)))
                .push(" ESCAPE '\\'");
        }
        (_, None, Some(u)) => {
            sql.push("a.target = ").bind(u.as_str());
        }
        _ => {
            sql.push("1 = 0");
        }
    }
    Ok(())
}

fn or_each(
    sql: &mut Sql,
    values: &[SearchValue],
    mut each: impl FnMut(&mut Sql, &SearchValue) -> Result<()>,
) -> Result<()> {
    sql.push("(");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        each(sql, v)?;
    }
    sql.push(")");
    Ok(())
}

/// The SQL condition of one criterion on the event aliased `e`.
fn criterion_condition(sql: &mut Sql, c: &Criterion) -> Result<()> {
    if c.chain.is_some() {
        return Err(unsupported("chained parameters"));
    }
    let name = match c.target {
        Target::Id => "_id",
        Target::LastUpdated => "_lastUpdated",
        Target::Param(def) => def.name,
    };
    match (name, &c.modifier) {
        ("_id" | "_lastUpdated" | "date", Modifier::Missing(missing)) => {
            sql.push(if *missing { "1 = 0" } else { "1 = 1" });
        }
        ("_id", Modifier::None | Modifier::Not) => {
            sql.push(if c.modifier == Modifier::Not {
                "NOT "
            } else {
                ""
            });
            or_each(sql, &c.values, |sql, v| {
                match v {
                    SearchValue::Token {
                        code: Some(code), ..
                    } => sql.push("e.id = ").bind(code.as_str()),
                    _ => sql.push("1 = 0"),
                };
                Ok(())
            })?;
        }
        ("_lastUpdated" | "date", Modifier::None) => {
            or_each(sql, &c.values, |sql, v| {
                match v {
                    SearchValue::Date { prefix, range } => {
                        date_condition(sql, "e.recorded", "e.recorded", *prefix, range.lo, range.hi)
                    }
                    _ => {
                        sql.push("1 = 0");
                    }
                }
                Ok(())
            })?;
        }
        ("type" | "subtype" | "action" | "outcome", modifier) => {
            let (system_col, code_col) = match name {
                "type" => (Some("e.type_system"), "e.type_code"),
                "subtype" => (Some("e.subtype_system"), "e.subtype_code"),
                "action" => (None, "e.action"),
                _ => (None, "e.outcome"),
            };
            match modifier {
                Modifier::Missing(missing) => {
                    sql.push(&format!(
                        "{code_col} IS {}NULL",
                        if *missing { "" } else { "NOT " }
                    ));
                }
                Modifier::None => or_each(sql, &c.values, |sql, v| {
                    token_condition(sql, system_col, code_col, v)
                })?,
                Modifier::Not => {
                    sql.push("NOT ");
                    or_each(sql, &c.values, |sql, v| {
                        token_condition(sql, system_col, code_col, v)
                    })?;
                }
                _ => return Err(unsupported(&format!("this modifier on '{name}'"))),
            }
        }
        (param @ ("patient" | "agent" | "entity"), modifier) => {
            let param = REF_PARAMS
                .iter()
                .find(|p| **p == param)
                .copied()
                .unwrap_or("patient");
            match modifier {
                Modifier::Missing(missing) => {
                    sql.push(if *missing { "e.pk NOT IN " } else { "e.pk IN " })
                        .push("(SELECT a.event_pk FROM audit_event_refs a WHERE a.param = ")
                        .bind(param)
                        .push(")");
                }
                Modifier::None | Modifier::Type(_) => {
                    sql.push("e.pk IN (SELECT a.event_pk FROM audit_event_refs a WHERE a.param = ")
                        .bind(param)
                        .push(" AND ");
                    or_each(sql, &c.values, |sql, v| {
                        reference_condition(sql, param, modifier, v)
                    })?;
                    sql.push(")");
                }
                _ => return Err(unsupported(&format!("this modifier on '{name}'"))),
            }
        }
        _ => {
            return Err(unsupported(&format!(
                "the parameter '{name}' (with this modifier)"
            )));
        }
    }
    Ok(())
}

fn where_clause(q: &SearchQuery) -> Result<Sql> {
    let mut sql = Sql::new("1 = 1");
    for c in &q.criteria {
        sql.push(" AND ");
        criterion_condition(&mut sql, c)?;
    }
    if !q.any_of.is_empty() {
        sql.push(" AND (");
        for (i, set) in q.any_of.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            sql.push("(1 = 1");
            for c in set {
                sql.push(" AND ");
                criterion_condition(&mut sql, c)?;
            }
            sql.push(")");
        }
        sql.push(")");
    }
    if let Some(patient) = &q.compartment {
        sql.push(" AND e.pk IN (SELECT a.event_pk FROM audit_event_refs a WHERE a.param = 'patient' AND a.target = ")
            .bind(format!("Patient/{patient}"))
            .push(")");
    }
    Ok(sql)
}

/// The PostgreSQL statement that appends a batch of encoded events (see [`AuditRow::line`]) given as one JSON array
/// parameter: its text never changes, so the database prepares it once.
fn append_statement_postgres(batch: &str) -> Sql {
    // Element `n` of an event `v` of the array (`recorded` is a number; element 9 the references).
    let el = "v.value ->> ";
    let insert_events = format!(
        "INSERT INTO audit_events (id, recorded, type_system, type_code, subtype_system, subtype_code, action, \
         outcome, content) SELECT {el}0, ({el}1)::bigint, {el}2, {el}3, {el}4, {el}5, {el}6, {el}7, {el}8 FROM \
         jsonb_array_elements("
    );
    // One statement: the references join the keys the insert returns, never the whole table (whose statistics lag
    // behind while it grows fast). The batch is sent once and read twice (`$1`, the statement's only parameter):
    // PostgreSQL connections run without TCP_NODELAY, and a message past one loopback segment (64 KB) waited for a
    // delayed ACK.
    let mut sql = Sql::new(&format!("WITH e AS ({insert_events}"));
    sql.bind(batch).push(&format!(
        "::jsonb) v RETURNING pk, id) INSERT INTO audit_event_refs (param, target, event_pk) \
         SELECT r.value ->> 0, r.value ->> 1, e.pk FROM jsonb_array_elements($1::jsonb) v \
         CROSS JOIN LATERAL jsonb_array_elements(v.value -> 9) r JOIN e ON e.id = {el}0"
    ));
    sql
}

/// `items` in runs whose lengths are powers of two, at most `max` (a power of two) each: multi-row statements then
/// come in a handful of shapes that each connection prepares once.
fn power_of_two_runs<T>(mut items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let n = if items.len() >= max {
            max
        } else {
            1 << items.len().ilog2()
        };
        let (run, rest) = items.split_at(n);
        items = rest;
        Some(run)
    })
}

/// SQLite: events as multi-row `INSERT`s with every value bound, then their references. The caller's write
/// transaction holds SQLite's write lock from its start (`BEGIN IMMEDIATE`), so the events' keys can be numbered on
/// from the largest one and the references written with them, without looking each event up again by its id.
async fn append_sqlite(tx: &mut Tx, rows: &[AuditRow]) -> Result<()> {
    let last = tx
        .fetch(
            &Sql::new("SELECT COALESCE(MAX(pk), 0) FROM audit_events"),
            &[Col::Int],
        )
        .await?
        .into_iter()
        .next()
        .map_or(0, |row| row.int(0));
    let opt = |v: &Option<String>| v.as_deref().map_or(Val::Null, Val::from);
    let mut next_pk = last;
    for run in power_of_two_runs(rows, 64) {
        let mut sql = Sql::new(
            "INSERT INTO audit_events (pk, id, recorded, type_system, type_code, subtype_system, subtype_code, \
             action, outcome, content) VALUES ",
        );
        for (i, r) in run.iter().enumerate() {
            next_pk += 1;
            sql.push(if i == 0 { "(" } else { ", (" })
                .bind(next_pk)
                .push(", ")
                .bind(r.id.as_str())
                .push(", ")
                .bind(r.recorded)
                .push(", ")
                .bind(opt(&r.type_system))
                .push(", ")
                .bind(opt(&r.type_code))
                .push(", ")
                .bind(opt(&r.subtype_system))
                .push(", ")
                .bind(opt(&r.subtype_code))
                .push(", ")
                .bind(opt(&r.action))
                .push(", ")
                .bind(opt(&r.outcome))
                .push(", ")
                .bind(r.content.as_str())
                .push(")");
        }
        tx.execute(&sql).await?;
    }
    let refs: Vec<(&str, &str, i64)> = rows
        .iter()
        .zip(last + 1..)
        .flat_map(|(r, pk)| {
            r.refs
                .iter()
                .map(move |(param, target)| (*param, target.as_str(), pk))
        })
        .collect();
    for run in power_of_two_runs(&refs, 128) {
        let mut sql = Sql::new("INSERT INTO audit_event_refs (param, target, event_pk) VALUES ");
        for (i, (param, target, pk)) in run.iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" })
                .bind(*param)
                .push(", ")
                .bind(*target)
                .push(", ")
                .bind(*pk)
                .push(")");
        }
        tx.execute(&sql).await?;
    }
    Ok(())
}

/// The most bytes of encoded events in one PostgreSQL statement of [`Store::append_audit`] (a single longer event
/// gets a statement of its own): the message should stay within a loopback TCP segment (sqlx's connections run
/// without TCP_NODELAY, and a longer message waited for a delayed ACK).
pub const POSTGRES_STATEMENT_BYTES: usize = 60 * 1024;

impl Store {
    /// Appends events (the group-commit writer and the audit journal's importer).
    pub async fn append_audit(&self, tx: &mut Tx, rows: &[AuditRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        if tx.backend() == Backend::Sqlite {
            return append_sqlite(tx, rows).await;
        }
        let limit = POSTGRES_STATEMENT_BYTES;
        let mut batch = String::from("[");
        for r in rows {
            let line = r.line()?;
            if batch.len() > 1 && batch.len() + line.len() + 2 > limit {
                batch.push(']');
                tx.execute(&append_statement_postgres(&batch)).await?;
                batch = String::from("[");
            }
            if batch.len() > 1 {
                batch.push(',');
            }
            batch.push_str(&line);
        }
        batch.push(']');
        tx.execute(&append_statement_postgres(&batch)).await?;
        Ok(())
    }

    /// Runs an AuditEvent search: one page, keyset-paged on `recorded` (when sorted by date) and the event key.
    pub async fn search_audit(&self, tx: &mut Tx, q: &SearchQuery) -> Result<SearchPage> {
        if !q.include.is_empty() || !q.revinclude.is_empty() {
            return Err(unsupported("_include or _revinclude"));
        }
        let sort_desc = match q.sort.as_slice() {
            [] => None,
            [key]
                if matches!(key.target, Target::LastUpdated)
                    || matches!(key.target, Target::Param(d) if d.name == "date") =>
            {
                Some(key.descending)
            }
            _ => {
                return Err(unsupported(
                    "this _sort (only date, -date, _lastUpdated, -_lastUpdated)",
                ));
            }
        };
        let conditions = where_clause(q)?;
        let mut page = SearchPage::default();
        let count = |conditions: &Sql| {
            let mut sql = Sql::new("SELECT COUNT(*) FROM audit_events e WHERE ");
            sql.append(conditions);
            sql
        };
        if q.count == 0 {
            let rows = tx.fetch(&count(&conditions), &[Col::Int]).await?;
            page.total = Some(rows.first().map_or(0, |r| r.int(0)));
            return Ok(page);
        }
        let backwards = matches!(&q.cursor, Some(c) if c.direction == Direction::Prev);
        let mut sql = Sql::new(&format!(
            "SELECT * FROM (SELECT {EVENT_COLS}{} FROM audit_events e WHERE ",
            if sort_desc.is_some() {
                ", e.recorded AS k0"
            } else {
                ""
            }
        ));
        sql.append(&conditions).push(") s");
        if let Some(cursor) = &q.cursor {
            sql.push(" WHERE ");
            keyset_condition(&mut sql, &q.sort, cursor);
        }
        sql.push(" ORDER BY ");
        if let Some(desc) = sort_desc {
            sql.push(if desc != backwards {
                "s.k0 DESC, "
            } else {
                "s.k0 ASC, "
            });
        }
        sql.push(if backwards { "s.pk DESC" } else { "s.pk ASC" });
        sql.push(&format!(" LIMIT {}", q.count + 1));
        let mut cols = EVENT_KINDS.to_vec();
        if sort_desc.is_some() {
            cols.push(Col::Int);
        }
        let mut rows = tx.fetch(&sql, &cols).await?;
        let more = rows.len() > q.count;
        rows.truncate(q.count);
        if backwards {
            rows.reverse();
        }
        if q.total == TotalMode::Accurate {
            page.total = if q.cursor.is_none() && !more {
                Some(rows.len() as i64)
            } else {
                let n = tx.fetch(&count(&conditions), &[Col::Int]).await?;
                Some(n.first().map_or(0, |r| r.int(0)))
            };
        }
        let cursor_at = |row: &super::db::Row, direction: Direction| crate::fhir::search::Cursor {
            direction,
            keys: if sort_desc.is_some() {
                vec![KeyValue::Int(row.int(4))]
            } else {
                Vec::new()
            },
            pk: row.int(0),
        };
        (page.prev, page.next) =
            page_cursors(&rows, backwards, more, q.cursor.is_some(), cursor_at);
        page.matches = rows
            .into_iter()
            .map(|mut r| {
                r.0.truncate(EVENT_KINDS.len());
                event_from_row(r)
            })
            .collect();
        Ok(page)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_are_powers_of_two_and_cover_everything_in_order() {
        let items: Vec<u32> = (0..203).collect();
        let runs: Vec<&[u32]> = power_of_two_runs(&items, 64).collect();
        let lengths: Vec<usize> = runs.iter().map(|r| r.len()).collect();
        assert_eq!(lengths, [64, 64, 64, 8, 2, 1]);
        assert_eq!(runs.concat(), items);
        assert_eq!(power_of_two_runs(&items[..0], 64).count(), 0);
    }

    #[test]
    fn a_journal_line_reads_back_as_the_row_it_came_from() {
        let row = AuditRow::new(json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R",
            "recorded": "2026-01-02T03:04:05Z",
            "outcome": "0",
            "outcomeDesc": "a \"quoted\"\nline",
            "agent": [{"who": {"reference": "Practitioner/p1"}, "requestor": true}],
            "entity": [{"what": {"reference": "Patient/x"}}],
        }))
        .unwrap();
        let back = AuditRow::from_line(&row.line().unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{row:?}"));
        assert!(AuditRow::from_line("[\"id\", \"not a number\"]").is_err());
        assert!(AuditRow::from_line("not json").is_err());
    }

    #[test]
    fn an_event_row_carries_its_search_columns_and_references() {
        let row = AuditRow::new(json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
            "action": "R",
            "recorded": "2026-03-04T10:00:00.123456Z",
            "outcome": "0",
            "agent": [{"who": {"identifier": {"value": "app"}}, "requestor": true},
                      {"who": {"reference": "Practitioner/lee"}, "requestor": true}],
            "source": {"observer": {"display": "kap-gateway"}},
            "entity": [{"what": {"reference": "Observation/o1"}}, {"what": {"reference": "Patient/alice"}}]
        }))
        .unwrap();
        assert_eq!(row.type_code.as_deref(), Some("rest"));
        assert_eq!(row.subtype_code.as_deref(), Some("read"));
        assert_eq!(row.action.as_deref(), Some("R"));
        assert_eq!(row.outcome.as_deref(), Some("0"));
        assert_eq!(
            row.recorded,
            parse_range("2026-03-04T10:00:00.123456Z").unwrap().lo
        );
        assert_eq!(
            row.refs,
            vec![
                ("agent", "Practitioner/lee".to_owned()),
                ("entity", "Observation/o1".to_owned()),
                ("entity", "Patient/alice".to_owned()),
                ("patient", "Patient/alice".to_owned()),
            ]
        );
        let stored: Value = serde_json::from_str(&row.content).unwrap();
        assert_eq!(stored["id"], row.id.as_str());
        assert_eq!(stored["meta"]["versionId"], "1");
    }
}
