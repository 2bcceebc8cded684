//! Domain rules of KAP records. Every problem is collected (not only the first) with the path of the field, and the
//! whole list comes back as one 422 OperationOutcome.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};
use std::collections::BTreeMap;

use super::codes;
use super::fhirjson::{as_f64, compare_times, parse_instant};
use super::mapping::reading_values;
use super::model::*;
use crate::error::Error;
use crate::fhir::outcome::Issue;

/// `[kap]` settings: the clinic's dosing limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KapSettings {
    /// Highest accepted dose per route, in mg/kg of body weight (`iv`, `im`, `intranasal`, `sublingual`, `oral`).
    pub max_mg_per_kg: BTreeMap<String, f64>,
}

impl Default for KapSettings {
    fn default() -> Self {
        KapSettings {
            max_mg_per_kg: [
                ("iv", 1.0),
                ("im", 1.5),
                ("intranasal", 1.5),
                ("sublingual", 4.0),
                ("oral", 5.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        }
    }
}

#[derive(Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Issue::error("business-rule", message).at(path));
    }

    pub fn into_result(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::unprocessable(self.0))
        }
    }
}

fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// A dateTime with a time and a timezone (`2026-09-15T10:00:00-05:00`).
pub fn check_time(issues: &mut Issues, path: &str, value: &str) {
    if parse_instant(value).is_none() {
        issues.add(
            path,
            format!("'{value}' is not a date and time with seconds and a timezone, e.g. 2026-09-15T10:00:00-05:00"),
        );
    }
}

fn check_date(issues: &mut Issues, path: &str, value: &str) {
    if crate::fhir::datetime::parse_range(value).is_none() {
        issues.add(
            path,
            format!("'{value}' is not a valid date or date and time"),
        );
    }
}

fn check_after(issues: &mut Issues, path: &str, start: &str, end: &str, what: &str) {
    if compare_times(end, start) == Some(std::cmp::Ordering::Less) {
        issues.add(
            path,
            format!("{what} ({end}) is before the start ({start})"),
        );
    }
}

fn check_clinician(issues: &mut Issues, path: &str, c: Option<&Clinician>) {
    if let Some(c) = c {
        if let Some(id) = &c.id
            && !is_fhir_id(id)
        {
            issues.add(
                &format!("{path}.id"),
                format!("'{id}' is not a valid FHIR id"),
            );
        }
        if c.id.is_none() && c.name.is_none() {
            issues.add(path, "a clinician needs an id or a name");
        }
    }
}

fn check_common(issues: &mut Issues, c: &Common) {
    check_time(issues, "start", c.start);
    if let Some(end) = c.end {
        check_time(issues, "end", end);
        check_after(issues, "end", c.start, end, "the end");
    }
    check_clinician(issues, "clinician", c.clinician);
    if let Some(course) = c.course_id
        && !is_fhir_id(course)
    {
        issues.add("course_id", format!("'{course}' is not a valid course id"));
    }
}

fn check_scores(issues: &mut Issues, scores: &[Score], allowed: &[&str]) {
    let mut seen = Vec::new();
    for (i, s) in scores.iter().enumerate() {
        let path = format!("scores[{i}]");
        let Some(inst) = codes::instrument(&s.instrument) else {
            issues.add(
                &format!("{path}.instrument"),
                format!(
                    "unknown instrument '{}'; expected one of {}",
                    s.instrument,
                    allowed.join(", ")
                ),
            );
            continue;
        };
        if !allowed.contains(&inst.name) {
            issues.add(
                &format!("{path}.instrument"),
                format!(
                    "'{}' is not recorded on this kind of record; expected one of {}",
                    inst.name,
                    allowed.join(", ")
                ),
            );
        }
        if let Some(t) = &s.time {
            check_time(issues, &format!("{path}.time"), t);
        }
        if seen.contains(&(inst.name, s.time.clone())) {
            issues.add(
                &path,
                format!("{} is given twice for the same time", inst.name),
            );
        }
        seen.push((inst.name, s.time.clone()));
        check_score_value(issues, &format!("{path}.value"), inst, &s.value);
    }
}

fn check_score_value(issues: &mut Issues, path: &str, inst: &codes::Instrument, value: &Value) {
    match inst.range {
        Some((lo, hi)) => match value.as_i64() {
            Some(v) if (lo..=hi).contains(&v) => {}
            Some(v) => issues.add(
                path,
                format!(
                    "{} score {v} is out of range: {} scores run from {lo} to {hi}",
                    inst.name, inst.name
                ),
            ),
            None => issues.add(
                path,
                format!(
                    "{} score must be a whole number from {lo} to {hi}",
                    inst.name
                ),
            ),
        },
        None => match value.as_str() {
            Some(level) if codes::CSSRS_LEVELS.contains(&level) => {}
            _ => issues.add(
                path,
                format!(
                    "{} risk level must be one of {}",
                    inst.name,
                    codes::CSSRS_LEVELS.join(", ")
                ),
            ),
        },
    }
}

fn check_number(
    issues: &mut Issues,
    path: &str,
    n: &Number,
    possible: (f64, f64),
    what: &str,
) -> Option<f64> {
    match as_f64(n) {
        Some(x) if x.is_finite() && x >= possible.0 && x <= possible.1 => Some(x),
        Some(x) => {
            issues.add(
                path,
                format!(
                    "{what} {x} is physiologically impossible (accepted {} to {})",
                    possible.0, possible.1
                ),
            );
            None
        }
        None => {
            issues.add(path, format!("{what} is not a number"));
            None
        }
    }
}

fn check_reading(issues: &mut Issues, path: &str, r: &VitalReading) {
    if let Some(t) = &r.time {
        check_time(issues, &format!("{path}.time"), t);
    }
    let values = reading_values(r);
    if values.is_empty() {
        issues.add(path, "a vital-signs reading needs at least one value");
    }
    for (field, value) in values {
        if let Some(v) = codes::vital(field) {
            check_number(
                issues,
                &format!("{path}.{field}"),
                value,
                v.possible,
                v.display,
            );
        }
    }
    if let (Some(s), Some(d)) = (
        r.systolic.as_ref().and_then(as_f64),
        r.diastolic.as_ref().and_then(as_f64),
    ) && d >= s
    {
        issues.add(
            &format!("{path}.diastolic"),
            format!("diastolic pressure {d} must be below systolic pressure {s}"),
        );
    }
}

fn check_unique_times(
    issues: &mut Issues,
    path: &str,
    readings: &[(&str, &VitalReading)],
    default: &str,
) {
    let mut seen: Vec<String> = Vec::new();
    for (p, r) in readings {
        let t = r.time.clone().unwrap_or_else(|| default.to_owned());
        if seen.contains(&t) {
            issues.add(
                p,
                format!("two readings in {path} have the same time {t}; merge them into one"),
            );
        }
        seen.push(t);
    }
}

pub fn check_patient(p: &PatientRecord) -> Result<(), Error> {
    let mut issues = Issues::default();
    if p.family_name.is_none() && p.given_names.is_empty() && p.identifiers.is_empty() {
        issues.add("family_name", "a patient needs a name or an identifier");
    }
    if let Some(f) = &p.family_name
        && f.trim().is_empty()
    {
        issues.add("family_name", "the family name is blank");
    }
    for (i, g) in p.given_names.iter().enumerate() {
        if g.trim().is_empty() {
            issues.add(&format!("given_names[{i}]"), "a given name is blank");
        }
    }
    if let Some(e) = &p.email {
        let valid = e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }) && !e.chars().any(char::is_whitespace);
        if !valid {
            issues.add("email", format!("'{e}' is not an email address"));
        }
    }
    if let Some(phone) = &p.phone
        && phone.trim().is_empty()
    {
        issues.add("phone", "the phone number is blank");
    }
    if let Some(g) = &p.gender
        && !["male", "female", "other", "unknown"].contains(&g.as_str())
    {
        issues.add(
            "gender",
            format!("gender '{g}' must be male, female, other or unknown"),
        );
    }
    if let Some(b) = &p.birth_date {
        match crate::fhir::datetime::parse_range(b) {
            Some(r) if b.len() == 10 => {
                if r.lo > crate::fhir::datetime::now_micros() {
                    issues.add("birth_date", "the birth date is in the future");
                }
            }
            _ => issues.add("birth_date", format!("'{b}' is not a date like 1984-03-07")),
        }
    }
    for (i, id) in p.identifiers.iter().enumerate() {
        if id.system.trim().is_empty() || id.value.trim().is_empty() {
            issues.add(
                &format!("identifiers[{i}]"),
                "an identifier needs a system and a value",
            );
        }
        if id.system == codes::identifier_system("patient") {
            issues.add(
                &format!("identifiers[{i}].system"),
                "this identifier system is the gateway's own",
            );
        }
    }
    issues.into_result()
}

pub fn check_evaluation(ev: &Evaluation) -> Result<(), Error> {
    let mut issues = Issues::default();
    check_common(&mut issues, &ev.fields());
    for (i, dx) in ev.diagnoses.iter().enumerate() {
        if dx.system != "icd-10-cm" && dx.system != "snomed" {
            issues.add(
                &format!("diagnoses[{i}].system"),
                format!("'{}' must be icd-10-cm or snomed", dx.system),
            );
        }
        if dx.code.trim().is_empty() {
            issues.add(&format!("diagnoses[{i}].code"), "a diagnosis needs a code");
        }
    }
    check_scores(
        &mut issues,
        &ev.scores,
        &["phq-9", "gad-7", "pcl-5", "c-ssrs"],
    );
    if let Some(v) = &ev.vitals {
        check_reading(&mut issues, "vitals", v);
    }
    let mut items = Vec::new();
    for (i, ci) in ev.contraindications.iter().enumerate() {
        if !codes::CONTRAINDICATIONS.contains(&ci.item.as_str()) {
            issues.add(
                &format!("contraindications[{i}].item"),
                format!(
                    "unknown contraindication '{}'; expected one of {}",
                    ci.item,
                    codes::CONTRAINDICATIONS.join(", ")
                ),
            );
        }
        if items.contains(&&ci.item) {
            issues.add(
                &format!("contraindications[{i}].item"),
                format!("'{}' is listed twice", ci.item),
            );
        }
        items.push(&ci.item);
    }
    if !codes::ELIGIBILITY.contains(&ev.eligibility.decision.as_str()) {
        issues.add(
            "eligibility.decision",
            format!(
                "'{}' must be eligible, not-eligible or deferred",
                ev.eligibility.decision
            ),
        );
    }
    if ev.eligibility.decision == "eligible"
        && let Some(ci) = ev.contraindications.iter().find(|c| c.present)
    {
        issues.add(
            "eligibility.decision",
            format!(
                "the patient cannot be eligible with the contraindication '{}' present",
                ci.item
            ),
        );
    }
    for (i, g) in ev.goals.iter().enumerate() {
        if g.trim().is_empty() {
            issues.add(&format!("goals[{i}]"), "a goal needs text");
        }
    }
    issues.into_result()
}

pub fn check_preparation(p: &Preparation) -> Result<(), Error> {
    let mut issues = Issues::default();
    check_common(&mut issues, &p.fields());
    if let Some(c) = &p.informed_consent
        && let Some(d) = &c.date
    {
        check_date(&mut issues, "informed_consent.date", d);
    }
    for (i, g) in p.intentions.iter().enumerate() {
        if g.trim().is_empty() {
            issues.add(&format!("intentions[{i}]"), "an intention needs text");
        }
    }
    issues.into_result()
}

pub fn check_dosing(d: &Dosing, settings: &KapSettings) -> Result<(), Error> {
    let mut issues = Issues::default();
    check_common(&mut issues, &d.fields());
    check_clinician(&mut issues, "prescriber", d.prescriber.as_ref());
    if !codes::MEDICATIONS
        .iter()
        .any(|(n, _, _)| *n == d.medication)
    {
        issues.add(
            "medication",
            format!("'{}' must be ketamine or esketamine", d.medication),
        );
    }
    let route_known = codes::ROUTES.iter().any(|(n, _, _)| *n == d.route);
    if !route_known {
        issues.add(
            "route",
            format!(
                "'{}' must be one of iv, im, intranasal, sublingual, oral",
                d.route
            ),
        );
    }
    if d.medication == "esketamine" && route_known && d.route != "intranasal" {
        issues.add("route", "esketamine is given intranasally");
    }
    check_dose(&mut issues, d, settings);
    let dose_start = d.dose.start.clone().unwrap_or_else(|| d.start.clone());
    if let Some(s) = &d.dose.start {
        check_time(&mut issues, "dose.start", s);
        check_after(&mut issues, "dose.start", &d.start, s, "the dose start");
    }
    if let (Some(end), Some(min)) = (&d.end, d.dose.infusion_minutes)
        && let Some(dose_end) = super::fhirjson::plus_minutes(&dose_start, min)
        && compare_times(end, &dose_end) == Some(std::cmp::Ordering::Less)
    {
        issues.add(
            "dose.infusion_minutes",
            format!("the administration ends at {dose_end}, after the session end {end}"),
        );
    }
    let mut readings: Vec<(String, &VitalReading)> = Vec::new();
    if let Some(pre) = &d.pre_dose_vitals {
        check_reading(&mut issues, "pre_dose_vitals", pre);
        if let Some(t) = &pre.time
            && compare_times(t, &dose_start) == Some(std::cmp::Ordering::Greater)
        {
            issues.add(
                "pre_dose_vitals.time",
                format!("the pre-dose reading ({t}) is after the dose start ({dose_start})"),
            );
        }
        readings.push(("pre_dose_vitals".into(), pre));
    }
    for (i, r) in d.monitoring_vitals.iter().enumerate() {
        let path = format!("monitoring_vitals[{i}]");
        check_reading(&mut issues, &path, r);
        match &r.time {
            None => issues.add(
                &format!("{path}.time"),
                "a monitoring reading needs its time",
            ),
            Some(t) => {
                if compare_times(t, &dose_start) != Some(std::cmp::Ordering::Greater) {
                    issues.add(
                        &format!("{path}.time"),
                        format!(
                            "a monitoring reading ({t}) must be after the dose start ({dose_start})"
                        ),
                    );
                }
            }
        }
        readings.push((path, r));
    }
    let refs: Vec<(&str, &VitalReading)> = readings.iter().map(|(p, r)| (p.as_str(), *r)).collect();
    check_unique_times(&mut issues, "this session", &refs, &dose_start);
    check_scores(&mut issues, &d.scores, &["cadss", "moaas"]);
    for (i, ae) in d.adverse_events.iter().enumerate() {
        let path = format!("adverse_events[{i}]");
        if !codes::ADVERSE_EVENTS.contains(&ae.kind.as_str()) {
            issues.add(
                &format!("{path}.kind"),
                format!(
                    "unknown adverse event '{}'; expected one of {}",
                    ae.kind,
                    codes::ADVERSE_EVENTS.join(", ")
                ),
            );
        }
        if !codes::SEVERITIES.contains(&ae.severity.as_str()) {
            issues.add(
                &format!("{path}.severity"),
                format!("'{}' must be mild, moderate or severe", ae.severity),
            );
        }
        if let Some(t) = &ae.time {
            check_time(&mut issues, &format!("{path}.time"), t);
            check_after(
                &mut issues,
                &format!("{path}.time"),
                &d.start,
                t,
                "the adverse event",
            );
        }
    }
    if let Some(dis) = &d.discharge {
        check_time(&mut issues, "discharge.time", &dis.time);
        check_after(
            &mut issues,
            "discharge.time",
            &d.start,
            &dis.time,
            "the discharge",
        );
    }
    issues.into_result()
}

fn check_dose(issues: &mut Issues, d: &Dosing, settings: &KapSettings) {
    let dose = &d.dose;
    let weight = dose.body_weight_kg.as_ref().and_then(|w| {
        check_number(
            issues,
            "dose.body_weight_kg",
            w,
            (1.0, 500.0),
            "body weight",
        )
    });
    let per_kg = dose.mg_per_kg.as_ref().and_then(as_f64);
    let mg = dose.mg.as_ref().and_then(as_f64);
    match (mg, per_kg) {
        (None, None) => issues.add(
            "dose",
            "give the dose as mg, or as mg_per_kg with body_weight_kg",
        ),
        (Some(m), _) if m <= 0.0 => issues.add("dose.mg", "the dose must be greater than 0 mg"),
        (_, Some(k)) if k <= 0.0 => {
            issues.add("dose.mg_per_kg", "the dose must be greater than 0 mg/kg")
        }
        _ => {}
    }
    if per_kg.is_some() && dose.body_weight_kg.is_none() {
        issues.add(
            "dose.body_weight_kg",
            "a dose in mg/kg needs the body weight used",
        );
    }
    if let (Some(m), Some(k), Some(w)) = (mg, per_kg, weight)
        && (m - k * w).abs() > 0.01 * m.max(1.0)
    {
        issues.add(
            "dose.mg",
            format!("{m} mg does not match {k} mg/kg × {w} kg = {} mg", k * w),
        );
    }
    if let Some(min) = dose.infusion_minutes
        && (min == 0 || min > 24 * 60)
    {
        issues.add(
            "dose.infusion_minutes",
            "the administration time must be between 1 and 1440 minutes",
        );
    }
    // The per-route limit applies to the mg/kg dose, given or computed from mg and the body weight.
    let effective_per_kg = per_kg.or_else(|| Some(mg? / weight?));
    if let (Some(k), Some(limit)) = (effective_per_kg, settings.max_mg_per_kg.get(&d.route))
        && k > *limit
    {
        let path = if per_kg.is_some() {
            "dose.mg_per_kg"
        } else {
            "dose.mg"
        };
        issues.add(
            path,
            format!(
                "{k:.3} mg/kg is above the clinic's limit of {limit} mg/kg for the {} route",
                d.route
            ),
        );
    }
}

pub fn check_integration(s: &Integration) -> Result<(), Error> {
    let mut issues = Issues::default();
    check_common(&mut issues, &s.fields());
    match &s.note {
        Some(n) if !n.trim().is_empty() => {}
        _ => issues.add(
            "note",
            "an integration session records its psychotherapy note",
        ),
    }
    if let Some(w) = s.wellbeing
        && !(0..=10).contains(&w)
    {
        issues.add(
            "wellbeing",
            format!("wellbeing rating {w} is out of range: it runs from 0 to 10"),
        );
    }
    for (i, id) in s.related_dosing_sessions.iter().enumerate() {
        if !is_fhir_id(id) {
            issues.add(
                &format!("related_dosing_sessions[{i}]"),
                format!("'{id}' is not a valid session id"),
            );
        }
    }
    issues.into_result()
}

pub fn check_follow_up(f: &FollowUp) -> Result<(), Error> {
    let mut issues = Issues::default();
    check_common(&mut issues, &f.fields());
    check_scores(
        &mut issues,
        &f.scores,
        &["phq-9", "gad-7", "pcl-5", "c-ssrs"],
    );
    if let Some(d) = &f.course_decision
        && !codes::COURSE_DECISIONS.contains(&d.as_str())
    {
        issues.add(
            "course_decision",
            format!(
                "'{d}' must be one of {}",
                codes::COURSE_DECISIONS.join(", ")
            ),
        );
    }
    if f.relapse_prevention_plan.is_some() && f.course_decision.is_none() {
        issues.add(
            "course_decision",
            "a relapse-prevention plan is recorded with the course decision",
        );
    }
    issues.into_result()
}
