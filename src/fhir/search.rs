//! Search requests: parsing FHIR search query parameters into a typed query, driven by the registry
//! (https://hl7.org/fhir/R4/search.html). Unknown parameters are ignored (and left out of the `self` link) in lenient
//! mode and refused in strict mode (`Prefer: handling=strict`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::fhir::datetime::{DateRange, parse_range};
use crate::fhir::extract::{decimal_range, normalize_string};
use crate::fhir::outcome::Issue;
use crate::fhir::registry::{self, ParamKind, SearchParamDef};

/// Default and maximum page sizes.
pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

/// Comparison prefixes for ordered types (https://hl7.org/fhir/R4/search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    fn split(value: &str) -> (Prefix, &str) {
        let prefixes = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ];
        for (p, prefix) in prefixes {
            if let Some(rest) = value.strip_prefix(p)
                && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
            {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }
}

/// Token system constraint: `code` (any system), `|code` (no system), `system|code`, `system|`.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSystem {
    Any,
    None,
    Is(String),
}

/// One value of a search parameter (several values of one parameter are ORed).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    Token {
        system: TokenSystem,
        code: Option<String>,
    },
    String(String),
    Date {
        prefix: Prefix,
        range: DateRange,
    },
    Number {
        prefix: Prefix,
        value: f64,
        lo: f64,
        hi: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// A reference given as `Type/id`, a bare id (`target_type` None) or an absolute URL outside this server.
    Reference {
        target_type: Option<String>,
        id: Option<String>,
        url: Option<String>,
    },
    Uri(String),
}

/// Parameter modifiers supported here (https://hl7.org/fhir/R4/search.html#modifiers).
#[derive(Debug, Clone, PartialEq)]
pub enum Modifier {
    None,
    Missing(bool),
    Exact,
    Contains,
    Not,
    /// `:Type` on a reference parameter.
    Type(String),
    Below,
    Above,
}

/// What a criterion tests: a registry parameter or one of the columns every resource has.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    Param(&'static SearchParamDef),
    Id,
    LastUpdated,
}

impl Target {
    pub fn kind(&self) -> ParamKind {
        match self {
            Target::Param(p) => p.kind,
            Target::Id => ParamKind::Token,
            Target::LastUpdated => ParamKind::Date,
        }
    }
}

/// One ANDed criterion: a parameter, a modifier and ORed values, possibly reached through a chain.
#[derive(Debug, Clone)]
pub struct Criterion {
    pub target: Target,
    pub modifier: Modifier,
    pub values: Vec<SearchValue>,
    /// `subject:Patient.identifier=…`: the reference parameter, its target types, then the inner criterion.
    pub chain: Option<Box<Chain>>,
}

#[derive(Debug, Clone)]
pub struct Chain {
    pub reference: &'static SearchParamDef,
    pub target_types: Vec<String>,
    pub inner: Criterion,
}

#[derive(Debug, Clone)]
pub struct SortKey {
    pub target: Target,
    pub descending: bool,
}

/// `_include` / `_revinclude`: `SourceType:param[:TargetType]`, optionally `:iterate`.
#[derive(Debug, Clone)]
pub struct Include {
    pub source_type: String,
    pub param: &'static SearchParamDef,
    pub target_type: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    None,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    False,
    Count,
    Data,
    Text,
}

/// Which way a cursor pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "n")]
    Next,
    #[serde(rename = "p")]
    Prev,
}

/// A sort-key value carried in a cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyValue {
    #[serde(rename = "i")]
    Int(i64),
    #[serde(rename = "r")]
    Real(f64),
    #[serde(rename = "s")]
    Text(String),
}

/// Keyset position: the sort-key values and internal key of the row to page from. Opaque to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "d")]
    pub direction: Direction,
    #[serde(rename = "k")]
    pub keys: Vec<KeyValue>,
    #[serde(rename = "p")]
    pub pk: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub resource_type: String,
    pub criteria: Vec<Criterion>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub cursor: Option<Cursor>,
    pub include: Vec<Include>,
    pub revinclude: Vec<Include>,
    pub total: TotalMode,
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    /// Restricts results to one patient's compartment (compartment search, `$everything`, patient-context tokens).
    pub compartment: Option<String>,
    /// Leaves out resources labelled as psychotherapy notes (tokens without that permission).
    pub hide_psychotherapy: bool,
    /// Alternative criteria sets of which at least one must hold (granular scopes such as `?category=…`).
    pub any_of: Vec<Vec<Criterion>>,
    /// The recognised parameters, normalised, for the `self` and paging links.
    pub link_params: Vec<(String, String)>,
    /// Warnings about ignored parameters, reported in the Bundle in lenient mode.
    pub warnings: Vec<Issue>,
}

fn invalid(message: String, param: &str) -> Issue {
    Issue::error("invalid", message).at(param.to_owned())
}

/// Splits on unescaped commas (`\,` is a literal comma). The other escapes (`\|`, `\$`, `\\`) are kept for
/// [`split_pipes`], so that an escaped `|` is not taken for the token or quantity separator.
fn split_or(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&',') => {
                    cur.push(',');
                    chars.next();
                }
                Some(&n @ ('|' | '$' | '\\')) => {
                    cur.push(c);
                    cur.push(n);
                    chars.next();
                }
                _ => cur.push(c),
            },
            ',' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Splits one value on unescaped `|` and resolves the escapes `\|`, `\$`, `\,` and `\\` in each part.
fn split_pipes(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => cur.push(n),
                Some(n) => {
                    cur.push(c);
                    cur.push(n);
                }
                None => cur.push(c),
            },
            '|' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// One value with its escapes resolved, for the types where `|` has no meaning.
fn unescape(value: &str) -> String {
    split_pipes(value).join("|")
}

fn split_token(value: &str) -> (TokenSystem, Option<String>) {
    let mut parts = split_pipes(value);
    if parts.len() == 1 {
        return (TokenSystem::Any, parts.pop());
    }
    let system = parts.remove(0);
    let code = Some(parts.join("|")).filter(|c| !c.is_empty());
    if system.is_empty() {
        (TokenSystem::None, code)
    } else {
        (TokenSystem::Is(system), code)
    }
}

/// Parses one value for a parameter of `kind`.
fn parse_value(
    kind: ParamKind,
    raw: &str,
    name: &str,
    base_url: &str,
) -> Result<SearchValue, Issue> {
    match kind {
        ParamKind::Token => {
            let (system, code) = split_token(raw);
            Ok(SearchValue::Token { system, code })
        }
        ParamKind::String => Ok(SearchValue::String(unescape(raw))),
        ParamKind::Uri => Ok(SearchValue::Uri(unescape(raw))),
        ParamKind::Date => {
            let (prefix, rest) = Prefix::split(raw);
            let range = parse_range(rest).ok_or_else(|| {
                invalid(
                    format!("Search parameter '{name}': '{raw}' is not a valid date"),
                    name,
                )
            })?;
            Ok(SearchValue::Date { prefix, range })
        }
        ParamKind::Number | ParamKind::Quantity => {
            let (prefix, rest) = Prefix::split(raw);
            let mut parts = split_pipes(rest).into_iter();
            let number = parts.next().unwrap_or_default();
            let (value, lo, hi) = decimal_range(&number).ok_or_else(|| {
                invalid(
                    format!("Search parameter '{name}': '{raw}' is not a valid number"),
                    name,
                )
            })?;
            let system = parts.next().filter(|s| !s.is_empty());
            let code = Some(parts.collect::<Vec<_>>().join("|")).filter(|s| !s.is_empty());
            if kind == ParamKind::Number && (system.is_some() || code.is_some()) {
                return Err(invalid(
                    format!("Search parameter '{name}' takes a plain number"),
                    name,
                ));
            }
            Ok(SearchValue::Number {
                prefix,
                value,
                lo,
                hi,
                system,
                code,
            })
        }
        ParamKind::Reference => Ok(parse_reference(&unescape(raw), base_url)),
    }
}

/// `Type/id`, bare `id`, `Type/id/_history/n` or an absolute URL (local when it starts with this server's base).
pub fn parse_reference(raw: &str, base_url: &str) -> SearchValue {
    let base = base_url.trim_end_matches('/');
    let local = raw
        .strip_prefix(base)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(raw);
    if local.contains("://") || local.starts_with("urn:") {
        return SearchValue::Reference {
            target_type: None,
            id: None,
            url: Some(raw.to_owned()),
        };
    }
    let parts: Vec<&str> = local.split('/').collect();
    match parts.as_slice() {
        [id] => SearchValue::Reference {
            target_type: None,
            id: Some((*id).to_owned()),
            url: None,
        },
        [t, id, ..] => SearchValue::Reference {
            target_type: Some((*t).to_owned()),
            id: Some((*id).to_owned()),
            url: None,
        },
        [] => SearchValue::Reference {
            target_type: None,
            id: None,
            url: Some(raw.to_owned()),
        },
    }
}

fn target_for(resource_type: &str, name: &str) -> Option<Target> {
    match name {
        "_id" => Some(Target::Id),
        "_lastUpdated" => Some(Target::LastUpdated),
        _ => registry::find(resource_type, name).map(Target::Param),
    }
}

fn parse_modifier(target: Target, modifier: Option<&str>, name: &str) -> Result<Modifier, Issue> {
    let Some(m) = modifier else {
        return Ok(Modifier::None);
    };
    let kind = target.kind();
    let unsupported = || {
        Issue::error(
            "not-supported",
            format!(
                "Modifier ':{m}' is not supported on {} parameter '{name}'",
                kind.as_str()
            ),
        )
        .at(name.to_owned())
    };
    match (m, kind) {
        ("missing", _) => Ok(Modifier::Missing(true)), // the value decides true/false; see below
        ("exact", ParamKind::String) => Ok(Modifier::Exact),
        ("contains", ParamKind::String) => Ok(Modifier::Contains),
        ("not", ParamKind::Token) => Ok(Modifier::Not),
        ("below", ParamKind::Uri) => Ok(Modifier::Below),
        ("above", ParamKind::Uri) => Ok(Modifier::Above),
        (t, ParamKind::Reference) if registry::is_supported_type(t) => {
            Ok(Modifier::Type(t.to_owned()))
        }
        _ => Err(unsupported()),
    }
}

/// Builds one criterion from `name[:modifier]` (no chain) and its raw value.
fn parse_criterion(
    resource_type: &str,
    name: &str,
    modifier: Option<&str>,
    raw: &str,
    base_url: &str,
) -> Result<Option<Criterion>, Issue> {
    let Some(target) = target_for(resource_type, name) else {
        return Ok(None);
    };
    let mut modifier = parse_modifier(target, modifier, name)?;
    if let Modifier::Missing(_) = modifier {
        let flag = match raw {
            "true" => true,
            "false" => false,
            _ => {
                return Err(invalid(
                    format!("Search parameter '{name}:missing' takes true or false, not '{raw}'"),
                    name,
                ));
            }
        };
        modifier = Modifier::Missing(flag);
        return Ok(Some(Criterion {
            target,
            modifier,
            values: Vec::new(),
            chain: None,
        }));
    }
    let mut values = Vec::new();
    for part in split_or(raw) {
        if part.is_empty() {
            continue;
        }
        let mut value = parse_value(target.kind(), &part, name, base_url)?;
        if let (
            Modifier::Type(t),
            SearchValue::Reference {
                target_type, id, ..
            },
        ) = (&modifier, &mut value)
            && target_type.is_none()
            && id.is_some()
        {
            *target_type = Some(t.clone());
        }
        if let SearchValue::String(s) = &mut value
            && modifier != Modifier::Exact
        {
            *s = normalize_string(s);
        }
        values.push(value);
    }
    if values.is_empty() {
        return Err(invalid(
            format!("Search parameter '{name}' has no value"),
            name,
        ));
    }
    Ok(Some(Criterion {
        target,
        modifier,
        values,
        chain: None,
    }))
}

/// Options that are not search criteria but change how the search is run.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions<'a> {
    pub strict: bool,
    pub base_url: &'a str,
}

/// Parses a search on `resource_type` from its (already URL-decoded) query parameters.
pub fn parse(
    resource_type: &str,
    params: &[(String, String)],
    opts: ParseOptions<'_>,
) -> Result<SearchQuery, Vec<Issue>> {
    let mut q = SearchQuery {
        resource_type: resource_type.to_owned(),
        criteria: Vec::new(),
        sort: Vec::new(),
        count: DEFAULT_COUNT,
        cursor: None,
        include: Vec::new(),
        revinclude: Vec::new(),
        total: TotalMode::Accurate,
        summary: Summary::False,
        elements: None,
        compartment: None,
        hide_psychotherapy: false,
        any_of: Vec::new(),
        link_params: Vec::new(),
        warnings: Vec::new(),
    };
    let mut errors = Vec::new();
    let ignore = |name: &str, why: String, errors: &mut Vec<Issue>, warnings: &mut Vec<Issue>| {
        let issue = Issue::error("not-supported", why).at(name.to_owned());
        if opts.strict {
            errors.push(issue);
        } else {
            warnings.push(issue.with_severity(crate::fhir::outcome::Severity::Warning));
        }
    };
    for (key, raw) in params {
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key.as_str(), None),
        };
        let keep = match name {
            "_count" => match raw.parse::<usize>() {
                Ok(n) => {
                    q.count = n.min(MAX_COUNT);
                    true
                }
                Err(_) => {
                    errors.push(invalid(
                        format!("_count must be a non-negative integer, not '{raw}'"),
                        "_count",
                    ));
                    false
                }
            },
            "_cursor" => {
                match Cursor::decode(raw) {
                    Some(c) => q.cursor = Some(c),
                    None => errors.push(invalid(
                        "The paging cursor is not valid; start the search again".into(),
                        "_cursor",
                    )),
                }
                false
            }
            "_sort" => {
                for part in raw.split(',').filter(|s| !s.is_empty()) {
                    let (descending, pname) = match part.strip_prefix('-') {
                        Some(p) => (true, p),
                        None => (false, part),
                    };
                    match target_for(resource_type, pname) {
                        Some(target) => q.sort.push(SortKey { target, descending }),
                        None => errors.push(invalid(
                            format!("Cannot sort {resource_type} by unknown parameter '{pname}'"),
                            "_sort",
                        )),
                    }
                }
                true
            }
            "_total" => {
                match raw.as_str() {
                    "none" => q.total = TotalMode::None,
                    "accurate" | "estimate" => q.total = TotalMode::Accurate,
                    _ => errors.push(invalid(
                        format!("_total must be none, estimate or accurate, not '{raw}'"),
                        "_total",
                    )),
                }
                true
            }
            "_summary" => {
                match raw.as_str() {
                    "count" => q.summary = Summary::Count,
                    "false" => q.summary = Summary::False,
                    "data" => q.summary = Summary::Data,
                    "text" => q.summary = Summary::Text,
                    _ => errors.push(
                        Issue::error(
                            "not-supported",
                            format!(
                                "_summary={raw} is not supported (count, data, text, false are)"
                            ),
                        )
                        .at("_summary"),
                    ),
                }
                true
            }
            "_elements" => {
                q.elements = Some(
                    raw.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect(),
                );
                true
            }
            "_include" | "_revinclude" => {
                let iterate = modifier == Some("iterate") || modifier == Some("recurse");
                if modifier.is_some() && !iterate {
                    errors.push(invalid(format!("Unknown modifier on {name}: {key}"), name));
                    false
                } else {
                    match parse_include(raw) {
                        Ok(mut inc) => {
                            inc.iterate = iterate;
                            if name == "_include" {
                                q.include.push(inc);
                            } else {
                                q.revinclude.push(inc);
                            }
                            true
                        }
                        Err(issue) => {
                            errors.push(issue);
                            false
                        }
                    }
                }
            }
            "_format" | "_pretty" => false,
            _ if key.contains('.') => {
                match parse_chain(resource_type, name, modifier, raw, opts.base_url) {
                    Ok(Some(c)) => {
                        q.criteria.push(c);
                        true
                    }
                    Ok(None) => {
                        ignore(
                            name,
                            format!("Unknown chained search parameter '{key}' ignored"),
                            &mut errors,
                            &mut q.warnings,
                        );
                        false
                    }
                    Err(issue) => {
                        errors.push(issue);
                        false
                    }
                }
            }
            _ => match parse_criterion(resource_type, name, modifier, raw, opts.base_url) {
                Ok(Some(c)) => {
                    q.criteria.push(c);
                    true
                }
                Ok(None) => {
                    ignore(
                        name,
                        format!("Unknown search parameter '{name}' for {resource_type} ignored"),
                        &mut errors,
                        &mut q.warnings,
                    );
                    false
                }
                Err(issue) => {
                    errors.push(issue);
                    false
                }
            },
        };
        if keep {
            q.link_params.push((key.clone(), raw.clone()));
        }
    }
    if errors.is_empty() {
        Ok(q)
    } else {
        Err(errors)
    }
}

/// `subject:Patient.identifier=…` or `subject.name=…` (one level).
fn parse_chain(
    resource_type: &str,
    name: &str,
    modifier: Option<&str>,
    raw: &str,
    base_url: &str,
) -> Result<Option<Criterion>, Issue> {
    // The modifier of the first link may hold the type and the rest of the chain: "subject:Patient.identifier".
    let full = match modifier {
        Some(m) => format!("{name}:{m}"),
        None => name.to_owned(),
    };
    let Some((head, tail)) = full.split_once('.') else {
        return Ok(None);
    };
    if tail.contains('.') {
        return Err(Issue::error(
            "not-supported",
            format!("Only one level of chaining is supported: '{full}'"),
        )
        .at(full.clone()));
    }
    let (ref_name, ref_type) = match head.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (head, None),
    };
    let Some(reference) = registry::find(resource_type, ref_name) else {
        return Ok(None);
    };
    if reference.kind != ParamKind::Reference {
        return Err(invalid(
            format!("'{ref_name}' is not a reference parameter and cannot be chained"),
            &full,
        ));
    }
    let (inner_name, inner_mod) = match tail.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (tail, None),
    };
    let candidates: Vec<String> = match ref_type {
        Some(t) => vec![t.to_owned()],
        None if !reference.targets.is_empty() => {
            reference.targets.iter().map(|t| (*t).to_owned()).collect()
        }
        None => registry::SUPPORTED_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect(),
    };
    let target_types: Vec<String> = candidates
        .into_iter()
        .filter(|t| target_for(t, inner_name).is_some())
        .collect();
    let Some(first) = target_types.first() else {
        return Ok(None);
    };
    let Some(inner) = parse_criterion(first, inner_name, inner_mod, raw, base_url)? else {
        return Ok(None);
    };
    if target_types
        .iter()
        .any(|t| target_for(t, inner_name).map(|x| x.kind()) != Some(inner.target.kind()))
    {
        return Err(invalid(
            format!(
                "Chain '{full}' is ambiguous; name the target type, e.g. '{ref_name}:{first}.{inner_name}'"
            ),
            &full,
        ));
    }
    Ok(Some(Criterion {
        target: Target::Param(reference),
        modifier: Modifier::None,
        values: Vec::new(),
        chain: Some(Box::new(Chain {
            reference,
            target_types,
            inner,
        })),
    }))
}

fn parse_include(raw: &str) -> Result<Include, Issue> {
    let parts: Vec<&str> = raw.split(':').collect();
    let bad = || {
        invalid(
            format!("_include/_revinclude must be SourceType:parameter[:TargetType], not '{raw}'"),
            "_include",
        )
    };
    let (source, pname, target) = match parts.as_slice() {
        [s, p] => (*s, *p, None),
        [s, p, t] => (*s, *p, Some((*t).to_owned())),
        _ => return Err(bad()),
    };
    let param = registry::find(source, pname).ok_or_else(bad)?;
    if param.kind != ParamKind::Reference {
        return Err(invalid(
            format!("'{source}:{pname}' is not a reference parameter"),
            "_include",
        ));
    }
    Ok(Include {
        source_type: source.to_owned(),
        param,
        target_type: target,
        iterate: false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    const OPTS: ParseOptions<'static> = ParseOptions {
        strict: false,
        base_url: "http://localhost:8080/fhir",
    };

    #[test]
    fn token_values_distinguish_any_none_and_given_systems() {
        assert_eq!(split_token("x"), (TokenSystem::Any, Some("x".into())));
        assert_eq!(split_token("|x"), (TokenSystem::None, Some("x".into())));
        assert_eq!(
            split_token("s|x"),
            (TokenSystem::Is("s".into()), Some("x".into()))
        );
        assert_eq!(split_token("s|"), (TokenSystem::Is("s".into()), None));
    }

    #[test]
    fn commas_split_values_unless_escaped() {
        assert_eq!(
            split_or("a,b\\,c"),
            vec!["a".to_string(), "b,c".to_string()]
        );
    }

    #[test]
    fn unknown_parameters_are_ignored_leniently_and_refused_strictly() {
        let q = parse("Patient", &p(&[("foo", "1"), ("family", "smith")]), OPTS).unwrap();
        assert_eq!(q.link_params, p(&[("family", "smith")]));
        assert_eq!(q.warnings.len(), 1);
        let strict = ParseOptions {
            strict: true,
            ..OPTS
        };
        let errs = parse("Patient", &p(&[("foo", "1")]), strict).unwrap_err();
        assert!(errs[0].diagnostics.contains("foo"));
    }

    #[test]
    fn a_chain_names_the_reference_and_the_inner_parameter() {
        let q = parse(
            "Observation",
            &p(&[("subject:Patient.identifier", "urn:mrn|7")]),
            OPTS,
        )
        .unwrap();
        let chain = q.criteria[0].chain.as_ref().unwrap();
        assert_eq!(chain.reference.name, "subject");
        assert_eq!(chain.target_types, vec!["Patient".to_string()]);
        assert_eq!(chain.inner.values.len(), 1);
    }

    #[test]
    fn date_prefixes_and_bad_dates_are_recognised() {
        let q = parse("Observation", &p(&[("date", "ge2024-01")]), OPTS).unwrap();
        match &q.criteria[0].values[0] {
            SearchValue::Date { prefix, .. } => assert_eq!(*prefix, Prefix::Ge),
            other => panic!("unexpected {other:?}"),
        }
        assert!(parse("Observation", &p(&[("date", "2024-13")]), OPTS).is_err());
    }

    #[test]
    fn references_parse_as_typed_bare_or_absolute() {
        let base = "http://localhost:8080/fhir";
        assert_eq!(
            parse_reference("Patient/1", base),
            SearchValue::Reference {
                target_type: Some("Patient".into()),
                id: Some("1".into()),
                url: None
            }
        );
        assert_eq!(
            parse_reference("http://localhost:8080/fhir/Patient/1", base),
            SearchValue::Reference {
                target_type: Some("Patient".into()),
                id: Some("1".into()),
                url: None
            }
        );
        assert_eq!(
            parse_reference("http://other/fhir/Patient/1", base),
            SearchValue::Reference {
                target_type: None,
                id: None,
                url: Some("http://other/fhir/Patient/1".into())
            }
        );
    }

    #[test]
    fn cursors_round_trip_through_their_opaque_form() {
        let c = Cursor {
            direction: Direction::Next,
            keys: vec![KeyValue::Int(5), KeyValue::Text("a".into())],
            pk: 9,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("garbage!"), None);
    }
}
