//! Runs parsed searches as SQL over the index tables: criteria as `pk IN (…)` sub-queries that both planners drive from the
//! (type, parameter, value) indexes, keyset (cursor) paging over
//! the sort keys — never OFFSET — and `_include`/`_revinclude` (https://hl7.org/fhir/R4/search.html).

use crate::error::Result;
use crate::fhir::datetime::now_micros;
use crate::fhir::registry::{self, ParamKind};
use crate::fhir::search::{
    Criterion, Cursor, Direction, Include, KeyValue, Modifier, Prefix, SearchQuery, SearchValue,
    SortKey, Target, TokenSystem, TotalMode,
};

use super::db::{Backend, Col, Sql, Tx, Val};
use super::{RESOURCE_COLS, RESOURCE_KINDS, Store, StoredResource, resource_from_row};

/// One page of results.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub matches: Vec<StoredResource>,
    pub includes: Vec<StoredResource>,
    pub total: Option<i64>,
    pub next: Option<Cursor>,
    pub prev: Option<Cursor>,
}

fn index_table(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Token => "idx_token",
        ParamKind::String => "idx_string",
        ParamKind::Date => "idx_date",
        ParamKind::Reference => "idx_reference",
        ParamKind::Quantity | ParamKind::Number => "idx_quantity",
        ParamKind::Uri => "idx_uri",
    }
}

pub(crate) fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The date comparison of R4 (https://hl7.org/fhir/R4/search.html#prefix) between an indexed range `[lo, hi]`
/// (column expressions) and a search range.
pub(crate) fn date_condition(
    sql: &mut Sql,
    lo: &str,
    hi: &str,
    prefix: Prefix,
    slo: i64,
    shi: i64,
) {
    match prefix {
        Prefix::Eq => {
            sql.push(&format!("({lo} >= "))
                .bind(slo)
                .push(&format!(" AND {hi} <= "))
                .bind(shi)
                .push(")");
        }
        Prefix::Ne => {
            sql.push(&format!("({lo} < "))
                .bind(slo)
                .push(&format!(" OR {hi} > "))
                .bind(shi)
                .push(")");
        }
        Prefix::Gt => {
            sql.push(&format!("{hi} > ")).bind(shi);
        }
        Prefix::Lt => {
            sql.push(&format!("{lo} < ")).bind(slo);
        }
        Prefix::Ge => {
            sql.push(&format!("({hi} > ")).bind(shi);
            sql.push(&format!(" OR ({lo} >= "))
                .bind(slo)
                .push(&format!(" AND {hi} <= "))
                .bind(shi)
                .push("))");
        }
        Prefix::Le => {
            sql.push(&format!("({lo} < ")).bind(slo);
            sql.push(&format!(" OR ({lo} >= "))
                .bind(slo)
                .push(&format!(" AND {hi} <= "))
                .bind(shi)
                .push("))");
        }
        Prefix::Sa => {
            sql.push(&format!("{lo} > ")).bind(shi);
        }
        Prefix::Eb => {
            sql.push(&format!("{hi} < ")).bind(slo);
        }
        Prefix::Ap => {
            // Approximately: the ranges overlap once the search range is widened by 10 % of its distance from now.
            let now = now_micros();
            let slack = ((now - slo).abs() / 10).max(86_400_000_000);
            sql.push(&format!("({lo} <= "))
                .bind(shi.saturating_add(slack));
            sql.push(&format!(" AND {hi} >= "))
                .bind(slo.saturating_sub(slack))
                .push(")");
        }
    }
}

fn number_condition(sql: &mut Sql, tab: &str, prefix: Prefix, value: f64, lo: f64, hi: f64) {
    match prefix {
        Prefix::Eq => {
            sql.push(&format!("({tab}.value >= "))
                .bind(lo)
                .push(&format!(" AND {tab}.value < "))
                .bind(hi)
                .push(")");
        }
        Prefix::Ne => {
            sql.push(&format!("({tab}.value < "))
                .bind(lo)
                .push(&format!(" OR {tab}.value >= "))
                .bind(hi)
                .push(")");
        }
        Prefix::Gt | Prefix::Sa => {
            sql.push(&format!("{tab}.value > ")).bind(value);
        }
        Prefix::Lt | Prefix::Eb => {
            sql.push(&format!("{tab}.value < ")).bind(value);
        }
        Prefix::Ge => {
            sql.push(&format!("{tab}.value >= ")).bind(value);
        }
        Prefix::Le => {
            sql.push(&format!("{tab}.value <= ")).bind(value);
        }
        Prefix::Ap => {
            let slack = (value * 0.1).abs();
            sql.push(&format!("({tab}.value >= "))
                .bind(value - slack)
                .push(&format!(" AND {tab}.value <= "))
                .bind(value + slack)
                .push(")");
        }
    }
}

/// The condition on one index row (aliased `tab`) for one value.
fn value_condition(sql: &mut Sql, tab: &str, criterion: &Criterion, value: &SearchValue) {
    match value {
        SearchValue::Token { system, code } => {
            sql.push("(1 = 1");
            match system {
                TokenSystem::Any => {}
                TokenSystem::None => {
                    sql.push(&format!(" AND {tab}.system IS NULL"));
                }
                TokenSystem::Is(s) => {
                    sql.push(&format!(" AND {tab}.system = ")).bind(s.as_str());
                }
            }
            if let Some(c) = code {
                sql.push(&format!(" AND {tab}.code = ")).bind(c.as_str());
            }
            sql.push(")");
        }
        SearchValue::String(s) => match criterion.modifier {
            Modifier::Exact => {
                sql.push(&format!("{tab}.exact = ")).bind(s.as_str());
            }
            Modifier::Contains => {
                sql.push(&format!("{tab}.norm LIKE "))
                    .bind(format!("%{}%", escape_like(s)))
                    .push(" ESCAPE '\\'");
            }
            _ => {
                sql.push(&format!("{tab}.norm LIKE "))
                    .bind(format!("{}%", escape_like(s)))
                    .push(" ESCAPE '\\'");
            }
        },
        SearchValue::Date { prefix, range } => date_condition(
            sql,
            &format!("{tab}.lo"),
            &format!("{tab}.hi"),
            *prefix,
            range.lo,
            range.hi,
        ),
        SearchValue::Number {
            prefix,
            value,
            lo,
            hi,
            system,
            code,
        } => {
            sql.push("(");
            number_condition(sql, tab, *prefix, *value, *lo, *hi);
            if let Some(s) = system {
                sql.push(&format!(" AND {tab}.system = ")).bind(s.as_str());
            }
            if let Some(c) = code {
                if system.is_some() {
                    sql.push(&format!(" AND {tab}.code = ")).bind(c.as_str());
                } else {
                    sql.push(&format!(" AND ({tab}.code = "))
                        .bind(c.as_str())
                        .push(&format!(" OR {tab}.unit = "))
                        .bind(c.as_str())
                        .push(")");
                }
            }
            sql.push(")");
        }
        SearchValue::Reference {
            target_type,
            id,
            url,
        } => {
            sql.push("(1 = 1");
            if let Some(t) = target_type {
                sql.push(&format!(" AND {tab}.target_type = "))
                    .bind(t.as_str());
            }
            if let Some(i) = id {
                sql.push(&format!(" AND {tab}.target_id = "))
                    .bind(i.as_str());
            }
            if let Some(u) = url {
                sql.push(&format!(" AND {tab}.url = ")).bind(u.as_str());
            }
            sql.push(")");
        }
        SearchValue::Uri(u) => match criterion.modifier {
            Modifier::Below => {
                sql.push(&format!("{tab}.uri LIKE "))
                    .bind(format!("{}%", escape_like(u)))
                    .push(" ESCAPE '\\'");
            }
            Modifier::Above => {
                sql.push(" ")
                    .bind(u.as_str())
                    .push(&format!(" LIKE ({tab}.uri || '%')"));
            }
            _ => {
                sql.push(&format!("{tab}.uri = ")).bind(u.as_str());
            }
        },
    }
}

/// The SQL condition for one criterion on the resource aliased `alias`, whose type is `resource_type` when known
/// (a chain with several target types leaves it open).
///
/// One criterion of a search `drive`s it: written as `pk IN (…)`, the planner starts from its index rows. The
/// others are correlated `EXISTS` checks on the rows found that way; written as `IN` too, both planners may instead
/// scan every resource of the type or re-read the other index over and over.
fn criterion_condition(
    sql: &mut Sql,
    resource_type: Option<&str>,
    criterion: &Criterion,
    alias: &str,
    drive: bool,
) {
    // Restricting the index rows by type lets both databases use the (res_type, param, value) indexes.
    let type_filter = |sql: &mut Sql, col: &str| {
        if let Some(t) = resource_type {
            sql.push(&format!(" AND {col} = ")).bind(t);
        }
    };
    if let Some(chain) = &criterion.chain {
        let join = "idx_reference cx JOIN resources ct ON ct.res_type = cx.target_type AND ct.id = cx.target_id AND ct.deleted = 0";
        if drive {
            sql.push(&format!(
                "{alias}.pk IN (SELECT cx.res_pk FROM {join} WHERE cx.param = "
            ));
        } else {
            sql.push(&format!(
                "EXISTS (SELECT 1 FROM {join} WHERE cx.res_pk = {alias}.pk AND cx.param = "
            ));
        }
        sql.bind(chain.reference.name);
        type_filter(sql, "cx.res_type");
        sql.push(" AND cx.target_type IN (")
            .bind_list(&chain.target_types)
            .push(") AND ");
        let inner_type = match chain.target_types.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        criterion_condition(sql, inner_type, &chain.inner, "ct", true);
        sql.push(")");
        return;
    }
    match criterion.target {
        // Every resource has an id and a lastUpdated: `:missing=true` matches none, `:missing=false` all.
        Target::Id | Target::LastUpdated if matches!(criterion.modifier, Modifier::Missing(_)) => {
            let missing = criterion.modifier == Modifier::Missing(true);
            sql.push(if missing { "1 = 0" } else { "1 = 1" });
        }
        Target::Id => {
            let negate = criterion.modifier == Modifier::Not;
            sql.push(if negate { "NOT (" } else { "(" });
            for (i, v) in criterion.values.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                if let SearchValue::Token { code: Some(c), .. } = v {
                    sql.push(&format!("{alias}.id = ")).bind(c.as_str());
                } else {
                    sql.push("1 = 0");
                }
            }
            sql.push(")");
        }
        Target::LastUpdated => {
            sql.push("(");
            for (i, v) in criterion.values.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                if let SearchValue::Date { prefix, range } = v {
                    let col = format!("{alias}.last_updated");
                    date_condition(sql, &col, &col, *prefix, range.lo, range.hi);
                } else {
                    sql.push("1 = 0");
                }
            }
            sql.push(")");
        }
        Target::Param(def) => {
            if drive {
                driver_condition(sql, resource_type, criterion, def, alias, None, &[]);
            } else {
                param_probe(sql, criterion, def, &format!("{alias}.pk"));
            }
        }
    }
}

/// A criterion on an index table as the search's driver: `pk IN (SELECT d.res_pk …)`, the planner starting from its
/// index rows. With `patient`, only the rows keyed by that patient (`idx_token.patient_id`, see [`patient_keyed`]).
/// The `folded` criteria (plain parameters too) are checked inside, on the driver's index rows, so that only
/// resources matching them all are read: a patient's hundred Observations are narrowed to the few with the code asked
/// for before any resource row is touched.
fn driver_condition(
    sql: &mut Sql,
    resource_type: Option<&str>,
    criterion: &Criterion,
    def: &registry::SearchParamDef,
    alias: &str,
    patient: Option<&str>,
    folded: &[&Criterion],
) {
    let table = index_table(def.kind);
    sql.push(&format!(
        "{alias}.pk IN (SELECT d.res_pk FROM {table} d WHERE "
    ));
    if let Some(t) = resource_type {
        sql.push("d.res_type = ").bind(t).push(" AND ");
    }
    sql.push("d.param = ").bind(def.name);
    if let Some(p) = patient {
        sql.push(" AND d.patient_id = ").bind(p);
    }
    sql.push(" AND (");
    or_values(sql, "d", criterion);
    sql.push(")");
    for other in folded {
        if let Target::Param(other_def) = other.target {
            sql.push(" AND ");
            param_probe(sql, other, other_def, "d.res_pk");
        }
    }
    sql.push(")");
}

/// `(patient criterion, token criterion, patient id)` of a search on a [`PATIENT_KEYED_TYPES`] type for one patient
/// (`patient=X` or `patient=Patient/X`, no modifier) and its [`PATIENT_KEYED_PARAM`] token without modifier.
fn patient_keyed(q: &SearchQuery) -> Option<(usize, usize, &str)> {
    if !super::PATIENT_KEYED_TYPES.contains(&q.resource_type.as_str()) {
        return None;
    }
    let (p, patient) = q.criteria.iter().enumerate().find_map(|(i, c)| {
        let Target::Param(def) = c.target else {
            return None;
        };
        if def.name != "patient" || c.chain.is_some() || c.modifier != Modifier::None {
            return None;
        }
        match c.values.as_slice() {
            [
                SearchValue::Reference {
                    target_type,
                    id: Some(id),
                    url: None,
                },
            ] if target_type.as_deref().is_none_or(|t| t == "Patient") => Some((i, id.as_str())),
            _ => None,
        }
    })?;
    let t = q.criteria.iter().position(|c| {
        plain_param(c)
            && c.modifier == Modifier::None
            && matches!(c.target, Target::Param(d) if d.name == super::PATIENT_KEYED_PARAM && d.kind == ParamKind::Token)
            && !c.values.is_empty()
    })?;
    Some((p, t, patient))
}

/// A correlated check of a criterion on an index table for the resource whose key is `key`. A correlated check must
/// look rows up by res_pk; with the type constrained too, SQLite's planner prefers the (res_type, param, value) index
/// and re-reads every matching row for each resource.
fn param_probe(sql: &mut Sql, criterion: &Criterion, def: &registry::SearchParamDef, key: &str) {
    let table = index_table(def.kind);
    let (negate, with_values) = match criterion.modifier {
        Modifier::Missing(missing) => (missing, false),
        Modifier::Not => (true, true),
        _ => (false, true),
    };
    let op = if negate { "NOT EXISTS" } else { "EXISTS" };
    sql.push(&format!(
        "{op} (SELECT 1 FROM {table} x WHERE x.res_pk = {key} AND x.param = "
    ))
    .bind(def.name);
    if with_values {
        sql.push(" AND (");
        or_values(sql, "x", criterion);
        sql.push(")");
    }
    sql.push(")");
}

/// A criterion on an index table without a chain: it can be checked on index rows alone.
fn plain_param(c: &Criterion) -> bool {
    c.chain.is_none() && matches!(c.target, Target::Param(_))
}

fn or_values(sql: &mut Sql, tab: &str, criterion: &Criterion) {
    for (i, v) in criterion.values.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        value_condition(sql, tab, criterion, v);
    }
}

/// `WHERE` of the base query: type, not deleted, every criterion and the compartment.
fn where_clause(q: &SearchQuery, backend: Backend) -> Sql {
    // The patient compartment, when there is one, drives; otherwise the first positive reference criterion (usually
    // the most selective: one patient's data), else the first positive criterion.
    let positive = |c: &&Criterion| {
        !matches!(c.modifier, Modifier::Not | Modifier::Missing(_))
            && matches!(c.target, Target::Param(_))
    };
    let driver = if q.compartment.is_some() {
        None
    } else {
        q.criteria
            .iter()
            .position(|c| positive(&c) && c.target.kind() == ParamKind::Reference)
            .or_else(|| q.criteria.iter().position(|c| positive(&c)))
    };
    // With a driving `pk IN (…)`, SQLite's type test is written so that no index serves it: otherwise its planner
    // (which has no statistics) scans every resource of the type through (res_type, last_updated) and probes the
    // driver's list for each, instead of looking up the few keys the driver yields. PostgreSQL plans from its
    // statistics, which the rewritten test would only blur.
    let drives = driver.is_some() || q.compartment.is_some();
    let mut sql = Sql::new(if drives && backend == Backend::Sqlite {
        "r.res_type || '' = "
    } else {
        "r.res_type = "
    });
    sql.bind(q.resource_type.as_str())
        .push(" AND r.deleted = 0");
    // One patient's resources with a code (`patient=X&code=Y`) drive from the code's patient-keyed index rows, which
    // stand for the patient criterion too.
    let keyed = patient_keyed(q);
    let (driver, keyed_patient) = match keyed {
        Some((p, t, patient)) => (Some(t), Some((p, patient))),
        None => (driver, None),
    };
    // A plain driver takes the other plain criteria inside it (see `driver_condition`).
    let folded: Vec<usize> = match driver {
        Some(d) if plain_param(&q.criteria[d]) => (0..q.criteria.len())
            .filter(|&i| {
                i != d && plain_param(&q.criteria[i]) && keyed_patient.is_none_or(|(p, _)| p != i)
            })
            .collect(),
        _ => Vec::new(),
    };
    for (i, c) in q.criteria.iter().enumerate() {
        if folded.contains(&i) || keyed_patient.is_some_and(|(p, _)| p == i) {
            continue;
        }
        sql.push(" AND ");
        match (Some(i) == driver, c.target) {
            (true, Target::Param(def)) if c.chain.is_none() => {
                let others: Vec<&Criterion> = folded.iter().map(|&j| &q.criteria[j]).collect();
                let patient = keyed_patient.map(|(_, patient)| patient);
                driver_condition(
                    &mut sql,
                    Some(&q.resource_type),
                    c,
                    def,
                    "r",
                    patient,
                    &others,
                );
            }
            (drive, _) => criterion_condition(&mut sql, Some(&q.resource_type), c, "r", drive),
        }
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
                criterion_condition(&mut sql, Some(&q.resource_type), c, "r", false);
            }
            sql.push(")");
        }
        sql.push(")");
    }
    if q.hide_psychotherapy {
        sql.push(" AND r.pk NOT IN (SELECT x.res_pk FROM idx_token x WHERE x.res_type = ")
            .bind(q.resource_type.as_str())
            .push(" AND x.param = '_security' AND x.system = ")
            .bind(crate::fhir::labels::PSY_SYSTEM)
            .push(" AND x.code = ")
            .bind(crate::fhir::labels::PSY_CODE)
            .push(")");
    }
    if let Some(patient_id) = &q.compartment {
        sql.push(" AND ");
        compartment_condition(&mut sql, &q.resource_type, patient_id, "r");
    }
    sql
}

/// Membership of the resource `alias` in a patient's compartment
/// (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).
pub fn compartment_condition(sql: &mut Sql, resource_type: &str, patient_id: &str, alias: &str) {
    let params = registry::patient_compartment_params(resource_type);
    sql.push("(");
    if resource_type == "Patient" {
        sql.push(&format!("{alias}.id = "))
            .bind(patient_id)
            .push(" OR ");
    }
    if params.is_empty() {
        sql.push("1 = 0)");
        return;
    }
    sql.push(&format!(
        "{alias}.pk IN (SELECT px.res_pk FROM idx_reference px WHERE px.target_type = 'Patient' AND px.target_id = "
    ));
    sql.bind(patient_id)
        .push(" AND px.res_type = ")
        .bind(resource_type)
        .push(" AND px.param IN (");
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.bind(*p);
    }
    sql.push(")))");
}

/// The sort key expression and the kind of value it yields. Missing values sort last in both directions.
fn sort_expression(key: &SortKey) -> (String, Col, Val) {
    const HIGH_TEXT: &str = "\u{10FFFF}";
    let (agg, sentinel_int, sentinel_real, sentinel_text) = if key.descending {
        ("MAX", i64::MIN, f64::MIN, "")
    } else {
        ("MIN", i64::MAX, f64::MAX, HIGH_TEXT)
    };
    match key.target {
        Target::Id => ("r.id".into(), Col::Text, Val::Null),
        Target::LastUpdated => ("r.last_updated".into(), Col::Int, Val::Null),
        Target::Param(def) => {
            let table = index_table(def.kind);
            let (column, col, sentinel) = match def.kind {
                ParamKind::Date => (
                    if key.descending { "hi" } else { "lo" },
                    Col::Int,
                    Val::Int(sentinel_int),
                ),
                ParamKind::String => ("norm", Col::Text, Val::Text(sentinel_text.into())),
                ParamKind::Token => ("code", Col::Text, Val::Text(sentinel_text.into())),
                ParamKind::Reference => ("url", Col::Text, Val::Text(sentinel_text.into())),
                ParamKind::Uri => ("uri", Col::Text, Val::Text(sentinel_text.into())),
                ParamKind::Quantity | ParamKind::Number => {
                    ("value", Col::Real, Val::Real(sentinel_real))
                }
            };
            (
                format!(
                    "(SELECT {agg}(x.{column}) FROM {table} x WHERE x.res_pk = r.pk AND x.param = '{}')",
                    def.name.replace('\'', "")
                ),
                col,
                sentinel,
            )
        }
    }
}

fn key_to_val(k: &KeyValue) -> Val {
    match k {
        KeyValue::Int(i) => Val::Int(*i),
        KeyValue::Real(r) => Val::Real(*r),
        KeyValue::Text(s) => Val::Text(s.clone()),
    }
}

fn val_to_key(v: &Val) -> KeyValue {
    match v {
        Val::Int(i) => KeyValue::Int(*i),
        Val::Real(r) => KeyValue::Real(*r),
        Val::Text(s) => KeyValue::Text(s.clone()),
        Val::Null => KeyValue::Int(0),
    }
}

impl Store {
    /// Runs a search and returns one page plus its includes.
    pub async fn search(&self, tx: &mut Tx, q: &SearchQuery) -> Result<SearchPage> {
        let mut page = SearchPage::default();
        if q.count == 0 {
            page.total = Some(self.count_matches(tx, q).await?);
            return Ok(page);
        }

        let sort_exprs: Vec<(String, Col, Val)> = q.sort.iter().map(sort_expression).collect();
        let mut inner = Sql::new(&format!("SELECT {RESOURCE_COLS}"));
        for (i, (expr, _, sentinel)) in sort_exprs.iter().enumerate() {
            match sentinel {
                Val::Null => inner.push(&format!(", {expr} AS k{i}")),
                _ => inner
                    .push(&format!(", COALESCE({expr}, "))
                    .bind(sentinel.clone())
                    .push(&format!(") AS k{i}")),
            };
        }
        inner
            .push(" FROM resources r WHERE ")
            .append(&where_clause(q, tx.backend()));

        let backwards = matches!(&q.cursor, Some(c) if c.direction == Direction::Prev);
        let mut sql = Sql::new("SELECT * FROM (");
        sql.append(&inner).push(") s");
        if let Some(cursor) = &q.cursor {
            sql.push(" WHERE ");
            keyset_condition(&mut sql, &q.sort, cursor);
        }
        sql.push(" ORDER BY ");
        for (i, key) in q.sort.iter().enumerate() {
            let desc = key.descending != backwards;
            sql.push(&format!("s.k{i} {}, ", if desc { "DESC" } else { "ASC" }));
        }
        sql.push(if backwards { "s.pk DESC" } else { "s.pk ASC" });
        // A literal: SQLite re-prepares a statement whose LIMIT is a bound parameter each time it is bound.
        sql.push(&format!(" LIMIT {}", q.count + 1));

        let mut cols: Vec<Col> = RESOURCE_KINDS.to_vec();
        cols.extend(sort_exprs.iter().map(|(_, c, _)| *c));
        let mut rows = tx.fetch(&sql, &cols).await?;
        let more = rows.len() > q.count;
        rows.truncate(q.count);
        if q.total == TotalMode::Accurate {
            // A first page that holds every match is its own count: no second query.
            page.total = if q.cursor.is_none() && !more {
                Some(rows.len() as i64)
            } else {
                Some(self.count_matches(tx, q).await?)
            };
        }
        if backwards {
            rows.reverse();
        }
        let cursor_at = |row: &super::db::Row, direction: Direction| Cursor {
            direction,
            keys: (0..q.sort.len())
                .map(|i| val_to_key(row.0.get(RESOURCE_KINDS.len() + i).unwrap_or(&Val::Null)))
                .collect(),
            pk: row.int(0),
        };
        (page.prev, page.next) =
            page_cursors(&rows, backwards, more, q.cursor.is_some(), cursor_at);
        page.matches = rows
            .into_iter()
            .map(|mut r| {
                r.0.truncate(RESOURCE_KINDS.len());
                resource_from_row(r)
            })
            .collect();
        page.includes = self.includes(tx, q, &page.matches).await?;
        Ok(page)
    }

    /// `Bundle.total`: every match of the search, on all pages.
    async fn count_matches(&self, tx: &mut Tx, q: &SearchQuery) -> Result<i64> {
        let mut sql = Sql::new("SELECT COUNT(*) FROM resources r WHERE ");
        sql.append(&where_clause(q, tx.backend()));
        let rows = tx.fetch(&sql, &[Col::Int]).await?;
        Ok(rows.first().map(|r| r.int(0)).unwrap_or(0))
    }

    /// `_include` and `_revinclude` for a page, with one `:iterate` round over what was included.
    async fn includes(
        &self,
        tx: &mut Tx,
        q: &SearchQuery,
        matches: &[StoredResource],
    ) -> Result<Vec<StoredResource>> {
        let mut seen: std::collections::HashSet<i64> = matches.iter().map(|r| r.pk).collect();
        let mut out: Vec<StoredResource> = Vec::new();
        let mut round: Vec<StoredResource> = matches.to_vec();
        for iteration in 0..2 {
            let mut found = Vec::new();
            for inc in q.include.iter().filter(|i| iteration == 0 || i.iterate) {
                found.extend(
                    self.include_targets(tx, inc, &round, q.compartment.as_deref())
                        .await?,
                );
            }
            for inc in q.revinclude.iter().filter(|i| iteration == 0 || i.iterate) {
                found.extend(
                    self.revinclude_sources(tx, inc, &round, q.compartment.as_deref())
                        .await?,
                );
            }
            round = found.into_iter().filter(|r| seen.insert(r.pk)).collect();
            out.extend(round.iter().cloned());
            if round.is_empty() {
                break;
            }
        }
        Ok(out)
    }

    async fn include_targets(
        &self,
        tx: &mut Tx,
        inc: &Include,
        from: &[StoredResource],
        compartment: Option<&str>,
    ) -> Result<Vec<StoredResource>> {
        let pks: Vec<i64> = from
            .iter()
            .filter(|r| r.res_type == inc.source_type)
            .map(|r| r.pk)
            .collect();
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let cols = RESOURCE_COLS
            .split(", ")
            .map(|c| format!("r.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = Sql::new(&format!(
            "SELECT DISTINCT {cols} FROM idx_reference x JOIN resources r ON r.res_type = x.target_type AND r.id = x.target_id AND r.deleted = 0 WHERE x.param = "
        ));
        sql.bind(inc.param.name);
        if let Some(t) = &inc.target_type {
            sql.push(" AND x.target_type = ").bind(t.as_str());
        }
        sql.push(" AND x.res_pk IN (");
        for (i, pk) in pks.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(*pk);
        }
        sql.push(")");
        let mut found: Vec<StoredResource> = tx
            .fetch(&sql, RESOURCE_KINDS)
            .await?
            .into_iter()
            .map(resource_from_row)
            .collect();
        if let Some(patient) = compartment {
            found = self.filter_compartment(tx, found, patient).await?;
        }
        Ok(found)
    }

    async fn revinclude_sources(
        &self,
        tx: &mut Tx,
        inc: &Include,
        from: &[StoredResource],
        compartment: Option<&str>,
    ) -> Result<Vec<StoredResource>> {
        if from.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(&format!(
            "SELECT {} FROM resources r WHERE r.res_type = ",
            RESOURCE_COLS
                .split(", ")
                .map(|c| format!("r.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        sql.bind(inc.source_type.as_str())
            .push(" AND r.deleted = 0 AND r.pk IN (SELECT x.res_pk FROM idx_reference x WHERE x.res_type = ")
            .bind(inc.source_type.as_str())
            .push(" AND x.param = ")
            .bind(inc.param.name)
            .push(" AND (");
        for (i, target) in from.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            sql.push("(x.target_type = ")
                .bind(target.res_type.as_str())
                .push(" AND x.target_id = ")
                .bind(target.id.as_str())
                .push(")");
        }
        sql.push("))");
        if let Some(patient) = compartment {
            sql.push(" AND ");
            compartment_condition(&mut sql, &inc.source_type, patient, "r");
        }
        Ok(tx
            .fetch(&sql, RESOURCE_KINDS)
            .await?
            .into_iter()
            .map(resource_from_row)
            .collect())
    }

    /// Keeps only the resources in a patient's compartment.
    pub async fn filter_compartment(
        &self,
        tx: &mut Tx,
        resources: Vec<StoredResource>,
        patient_id: &str,
    ) -> Result<Vec<StoredResource>> {
        let mut kept = Vec::with_capacity(resources.len());
        for r in resources {
            let mut sql = Sql::new("SELECT COUNT(*) FROM resources r WHERE r.pk = ");
            sql.bind(r.pk).push(" AND ");
            compartment_condition(&mut sql, &r.res_type, patient_id, "r");
            let rows = tx.fetch(&sql, &[Col::Int]).await?;
            if rows.first().map(|x| x.int(0)).unwrap_or(0) > 0 {
                kept.push(r);
            }
        }
        Ok(kept)
    }
}

/// Rows strictly after (or, for a `Prev` cursor, before) the cursor position in the sort order.
/// The `previous` and `next` cursors of a page whose `rows` are in display order: read `backwards` (from a
/// `previous` cursor) or forwards, `more` when a row beyond the page exists in the reading direction, `from_cursor`
/// when the page was reached through a cursor. `cursor_at` makes a cursor from a row.
pub(crate) fn page_cursors<R>(
    rows: &[R],
    backwards: bool,
    more: bool,
    from_cursor: bool,
    cursor_at: impl Fn(&R, Direction) -> Cursor,
) -> (Option<Cursor>, Option<Cursor>) {
    let (first, last) = (rows.first(), rows.last());
    let prev = |r: Option<&R>| r.map(|r| cursor_at(r, Direction::Prev));
    let next = |r: Option<&R>| r.map(|r| cursor_at(r, Direction::Next));
    if backwards {
        (if more { prev(first) } else { None }, next(last))
    } else {
        (
            if from_cursor { prev(first) } else { None },
            if more { next(last) } else { None },
        )
    }
}

pub(crate) fn keyset_condition(sql: &mut Sql, sort: &[SortKey], cursor: &Cursor) {
    let backwards = cursor.direction == Direction::Prev;
    sql.push("(");
    // (k0 > v0) OR (k0 = v0 AND k1 > v1) OR … OR (all equal AND pk > p), with > flipped for descending keys.
    for level in 0..=sort.len() {
        if level > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for (i, value) in cursor.keys.iter().enumerate().take(level) {
            sql.push(&format!("s.k{i} = "))
                .bind(key_to_val(value))
                .push(" AND ");
        }
        if level < sort.len() {
            let desc = sort[level].descending != backwards;
            let op = if desc { "<" } else { ">" };
            let value = cursor.keys.get(level).map(key_to_val).unwrap_or(Val::Null);
            sql.push(&format!("s.k{level} {op} ")).bind(value);
        } else {
            sql.push(&format!("s.pk {} ", if backwards { "<" } else { ">" }))
                .bind(cursor.pk);
        }
        sql.push(")");
    }
    sql.push(")");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fhir::search::{ParseOptions, parse};

    fn where_sql(resource_type: &str, query: &str) -> String {
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let opts = ParseOptions {
            strict: true,
            base_url: "http://h/fhir",
        };
        let q = parse(resource_type, &params, opts).unwrap();
        where_clause(&q, Backend::Sqlite).render(Backend::Sqlite)
    }

    #[test]
    fn plans_start_from_the_most_selective_index_rows() {
        // One patient and a code: the patient-keyed token rows, the status checked on them.
        let sql = where_sql(
            "Observation",
            "patient=p1&code=http://loinc.org|44261-6&status=final",
        );
        assert!(
            sql.contains(
                "FROM idx_token d WHERE d.res_type = ? AND d.param = ? AND d.patient_id = ?"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("EXISTS (SELECT 1 FROM idx_token x WHERE x.res_pk = d.res_pk"),
            "{sql}"
        );
        assert!(!sql.contains("idx_reference"), "{sql}");
        // A type whose `patient` may name several Patients, a modifier or another target: the general plan, with the
        // other criteria checked on the driver's rows.
        for (t, q) in [
            ("Provenance", "patient=p1&_security=x|y"),
            ("Observation", "patient=p1&code:not=44261-6"),
            ("Observation", "subject=Group/g1&code=44261-6"),
            ("Observation", "patient=p1&category=survey"),
        ] {
            let sql = where_sql(t, q);
            assert!(!sql.contains("patient_id"), "{q}: {sql}");
            assert!(
                sql.contains("r.pk IN (SELECT d.res_pk FROM idx_reference d"),
                "{q}: {sql}"
            );
            assert!(sql.contains("x.res_pk = d.res_pk"), "{q}: {sql}");
        }
    }
}
