//! KAP records ⇄ FHIR R4 resources, both ways (profiles/README.md documents every choice).
//!
//! Writing: each record becomes an Encounter (the record id is the Encounter id) plus the resources its parts need,
//! with deterministic ids `<record id>-<part>` so that an update rewrites the same resources. Reading: a record is
//! rebuilt from the Encounter and whatever points at it (`encounter`, `context`), so resources an EHR or app wrote
//! through the FHIR API in the KAP profiles appear in the KAP API as well.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value, json};

use super::codes::{self, KAP};
use super::fhirjson::*;
use super::model::*;

/// Who and what a write is about.
pub struct Ctx<'a> {
    pub record_id: &'a str,
    pub patient_id: &'a str,
    pub course_id: &'a str,
}

impl Ctx<'_> {
    fn id(&self, part: &str) -> String {
        format!("{}-{part}", self.record_id)
    }
}

/// The FHIR resources a record is rebuilt from.
#[derive(Debug, Default)]
pub struct Gathered {
    pub encounter: Value,
    pub observations: Vec<Value>,
    pub conditions: Vec<Value>,
    pub administrations: Vec<Value>,
    pub goals: Vec<Value>,
    /// True when an Observation of the record exists that the caller may not see (a psychotherapy note).
    pub withheld: bool,
}

// ---------------------------------------------------------------------------------------------------------------
// Patient

pub fn patient_to_fhir(id: &str, p: &PatientRecord, existing: Option<&Value>) -> Value {
    let mut r = match existing {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    r.insert("resourceType".into(), json!("Patient"));
    r.insert("id".into(), json!(id));
    let mut profiles: Vec<Value> = r
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let kap_profile = json!(codes::profile("kap-patient"));
    if !profiles.contains(&kap_profile) {
        profiles.push(kap_profile);
    }
    r.insert("meta".into(), json!({ "profile": profiles }));
    let mut identifiers =
        vec![json!({ "system": codes::identifier_system("patient"), "value": id })];
    identifiers.extend(
        p.identifiers
            .iter()
            .map(|i| json!({ "system": i.system, "value": i.value })),
    );
    r.insert("identifier".into(), Value::Array(identifiers));
    r.remove("name");
    if p.family_name.is_some() || !p.given_names.is_empty() {
        let mut name = Map::new();
        if let Some(f) = &p.family_name {
            name.insert("family".into(), json!(f));
        }
        if !p.given_names.is_empty() {
            name.insert("given".into(), json!(p.given_names));
        }
        r.insert("name".into(), json!([name]));
    }
    set_opt(&mut r, "birthDate", p.birth_date.as_ref().map(|v| json!(v)));
    set_opt(&mut r, "gender", p.gender.as_ref().map(|v| json!(v)));
    r.remove("telecom");
    let mut telecom = Vec::new();
    if let Some(phone) = &p.phone {
        telecom.push(json!({ "system": "phone", "value": phone }));
    }
    if let Some(email) = &p.email {
        telecom.push(json!({ "system": "email", "value": email }));
    }
    if !telecom.is_empty() {
        r.insert("telecom".into(), Value::Array(telecom));
    }
    Value::Object(r)
}

fn set_opt(r: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        Some(v) => {
            r.insert(key.into(), v);
        }
        None => {
            r.remove(key);
        }
    }
}

pub fn patient_from_fhir(p: &Value) -> PatientRecord {
    let kap_system = codes::identifier_system("patient");
    let name = &p["name"][0];
    PatientRecord {
        id: str_of(&p["id"]),
        family_name: str_of(&name["family"]),
        given_names: name["given"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(str_of)
            .collect(),
        birth_date: str_of(&p["birthDate"]),
        gender: str_of(&p["gender"]),
        identifiers: p["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["system"] != kap_system.as_str())
            .filter_map(|i| {
                Some(IdentifierRec {
                    system: str_of(&i["system"])?,
                    value: str_of(&i["value"])?,
                })
            })
            .collect(),
        phone: telecom(p, "phone"),
        email: telecom(p, "email"),
    }
}

fn telecom(p: &Value, system: &str) -> Option<String> {
    p["telecom"]
        .as_array()?
        .iter()
        .find(|t| t["system"] == system)
        .and_then(|t| str_of(&t["value"]))
}

// ---------------------------------------------------------------------------------------------------------------
// Shared parts

fn encounter(
    ctx: &Ctx,
    kind: &str,
    c: &Common,
    extra_participants: &[(&str, &Clinician)],
) -> Value {
    let mut participants = Vec::new();
    let mut add = |role: &str, display: &str, who: &Clinician| {
        participants.push(json!({
            "type": [codes::concept(codes::PARTICIPATION, role, display)],
            "individual": clinician_ref(who),
        }));
    };
    if let Some(clin) = c.clinician {
        add("ATND", "attender", clin);
    }
    for (role, who) in extra_participants {
        add(role, "primary performer", who);
    }
    let mut period = Map::new();
    period.insert("start".into(), json!(c.start));
    if let Some(end) = c.end {
        period.insert("end".into(), json!(end));
    }
    let mut r = json!({
        "resourceType": "Encounter",
        "id": ctx.record_id,
        "meta": meta("kap-session"),
        "extension": [{
            "url": codes::profile("kap-course-reference"),
            "valueReference": reference("CarePlan", ctx.course_id),
        }],
        "identifier": identifier("session", ctx.record_id),
        "status": if c.end.is_some() { "finished" } else { "in-progress" },
        "class": { "system": codes::ACT_CODE, "code": "AMB", "display": "ambulatory" },
        "type": [codes::kap(kind)],
        "serviceType": codes::concept(codes::SNOMED, "24642003", "Psychiatry procedure or service"),
        "subject": reference("Patient", ctx.patient_id),
        "period": period,
    });
    if !participants.is_empty() {
        r["participant"] = Value::Array(participants);
    }
    r
}

/// The shared fields of a record, from its Encounter: (id, patient, course, clinician, start, end).
pub struct HeaderOut {
    pub id: Option<String>,
    pub patient_id: Option<String>,
    pub course_id: Option<String>,
    pub clinician: Option<Clinician>,
    pub start: String,
    pub end: Option<String>,
}

pub fn header_of(enc: &Value) -> HeaderOut {
    let course = enc["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == codes::profile("kap-course-reference").as_str())
        .and_then(|e| ref_id(&e["valueReference"], "CarePlan"))
        .map(str::to_owned);
    HeaderOut {
        id: str_of(&enc["id"]),
        patient_id: ref_id(&enc["subject"], "Patient").map(str::to_owned),
        course_id: course,
        clinician: participant(enc, "ATND"),
        start: str_of(&enc["period"]["start"]).unwrap_or_default(),
        end: str_of(&enc["period"]["end"]),
    }
}

/// The session kind code (`kap`) of an Encounter.
pub fn encounter_kind(enc: &Value) -> Option<&'static str> {
    let ty = enc["type"].as_array()?;
    codes::SESSION_KINDS
        .iter()
        .map(|(_, c)| *c)
        .find(|c| ty.iter().any(|t| has_code(t, KAP, c)))
}

/// Whether a CarePlan is a KAP treatment course.
pub fn is_course(plan: &Value) -> bool {
    plan["category"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| has_code(c, KAP, "treatment-course")))
}

fn participant(enc: &Value, role: &str) -> Option<Clinician> {
    enc["participant"]
        .as_array()?
        .iter()
        .find(|p| {
            p["type"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| has_code(t, codes::PARTICIPATION, role)))
        })
        .and_then(|p| clinician_of(&p["individual"]))
}

macro_rules! with_header {
    ($enc:expr, $rec:expr) => {{
        let h = header_of($enc);
        $rec.id = h.id;
        $rec.patient_id = h.patient_id;
        $rec.course_id = h.course_id;
        $rec.clinician = h.clinician;
        $rec.start = h.start;
        $rec.end = h.end;
    }};
}

/// A KAP Observation skeleton: profile, identifier, status, subject, encounter, effective time, performer.
fn observation(
    ctx: &Ctx,
    id: &str,
    profile: &str,
    identifier_kind: &str,
    code: Value,
    time: &str,
    clinician: Option<&Clinician>,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("resourceType".into(), json!("Observation"));
    m.insert("id".into(), json!(id));
    m.insert("meta".into(), meta(profile));
    m.insert("identifier".into(), identifier(identifier_kind, id));
    m.insert("status".into(), json!("final"));
    m.insert("code".into(), code);
    m.insert("subject".into(), reference("Patient", ctx.patient_id));
    m.insert("encounter".into(), reference("Encounter", ctx.record_id));
    m.insert("effectiveDateTime".into(), json!(time));
    if let Some(c) = clinician
        && (c.id.is_some() || c.name.is_some())
    {
        m.insert("performer".into(), json!([clinician_ref(c)]));
    }
    m
}

fn category(code: &str, display: &str) -> Value {
    json!([codes::concept(codes::OBS_CATEGORY, code, display)])
}

fn obs_has_kap_code(obs: &Value, code: &str) -> bool {
    has_code(&obs["code"], KAP, code)
}

// ---------------------------------------------------------------------------------------------------------------
// Scores

fn scores_to_fhir(
    ctx: &Ctx,
    scores: &[Score],
    default_time: &str,
    clinician: Option<&Clinician>,
) -> Vec<Value> {
    scores
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let inst = codes::instrument(&s.instrument)?;
            let id = ctx.id(&format!("sc{i}-{}", inst.name));
            let mut m = observation(
                ctx,
                &id,
                "kap-score",
                "score",
                codes::concept(inst.system, inst.code, inst.display),
                s.time.as_deref().unwrap_or(default_time),
                clinician,
            );
            m.insert("category".into(), category("survey", "Survey"));
            match (&s.value, inst.range) {
                (Value::String(level), None) => {
                    let code = format!("risk-{level}");
                    m.insert(
                        "valueCodeableConcept".into(),
                        codes::concept(KAP, &code, codes::kap_display(&code)),
                    );
                }
                (v, _) => {
                    m.insert("valueInteger".into(), v.clone());
                }
            }
            Some(Value::Object(m))
        })
        .collect()
}

fn score_from(obs: &Value) -> Option<Score> {
    let (system, code) = first_code(&obs["code"])?;
    let inst = codes::instrument_by_code(system, code)?;
    let value = if let Some(v) = obs.get("valueInteger") {
        v.clone()
    } else if let Some(v) = obs["valueQuantity"].get("value") {
        v.clone()
    } else if let Some(code) = kap_code(&obs["valueCodeableConcept"]) {
        json!(code.strip_prefix("risk-").unwrap_or(code))
    } else {
        return None;
    };
    Some(Score {
        instrument: inst.name.to_owned(),
        value,
        time: effective(obs),
    })
}

fn scores_from(obs: &[Value], instruments: &[&str]) -> Vec<Score> {
    let mut out: Vec<(usize, Score)> = obs
        .iter()
        .filter_map(|o| Some((part_index(o, "sc"), score_from(o)?)))
        .filter(|(_, s)| instruments.contains(&s.instrument.as_str()))
        .collect();
    sort_by_time(&mut out, |(_, s)| s.time.as_deref());
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, s)| s).collect()
}

/// The position a part had in the record that wrote it (`<record>-<part><n>`), so lists read back in the order
/// they were sent; parts written by others (no such id) come after, in time order.
fn part_index(r: &Value, part: &str) -> usize {
    let (Some(id), Some(rid)) = (r["id"].as_str(), ref_id(&r["encounter"], "Encounter")) else {
        return usize::MAX;
    };
    id.strip_prefix(rid)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_prefix(part))
        .map(|rest| rest.split('-').next().unwrap_or(""))
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

fn sort_by_time<T>(items: &mut [T], time: impl Fn(&T) -> Option<&str>) {
    items.sort_by(|a, b| match (time(a), time(b)) {
        (Some(x), Some(y)) => compare_times(x, y).unwrap_or(std::cmp::Ordering::Equal),
        _ => std::cmp::Ordering::Equal,
    });
}

// ---------------------------------------------------------------------------------------------------------------
// Vital signs

/// `H` or `L` when `value` lies outside the field's normal adult range.
pub fn vital_flag(field: &str, value: &Number) -> Option<&'static str> {
    let v = codes::vital(field)?;
    let x = as_f64(value)?;
    if x > v.normal.1 {
        Some("H")
    } else if x < v.normal.0 {
        Some("L")
    } else {
        None
    }
}

fn interpretation(flag: &str) -> Value {
    let display = if flag == "H" { "High" } else { "Low" };
    json!([codes::concept(codes::INTERPRETATION, flag, display)])
}

pub fn reading_values(r: &VitalReading) -> Vec<(&'static str, &Number)> {
    let mut out = Vec::new();
    for (field, value) in [
        ("systolic", &r.systolic),
        ("diastolic", &r.diastolic),
        ("heart_rate", &r.heart_rate),
        ("spo2", &r.spo2),
        ("respiratory_rate", &r.respiratory_rate),
        ("weight_kg", &r.weight_kg),
    ] {
        if let Some(v) = value {
            out.push((field, v));
        }
    }
    out
}

/// Recomputes the H/L flags of a reading.
pub fn flag_reading(r: &mut VitalReading) {
    r.flags = reading_values(r)
        .into_iter()
        .filter_map(|(f, v)| Some((f.to_owned(), vital_flag(f, v)?.to_owned())))
        .collect();
}

fn vitals_to_fhir(
    ctx: &Ctx,
    prefix: &str,
    r: &VitalReading,
    default_time: &str,
    clinician: Option<&Clinician>,
) -> Vec<Value> {
    let time = r.time.as_deref().unwrap_or(default_time);
    let mut out = Vec::new();
    let vs_category = category("vital-signs", "Vital Signs");
    if r.systolic.is_some() || r.diastolic.is_some() {
        let mut m = observation(
            ctx,
            &ctx.id(&format!("{prefix}-bp")),
            "kap-vital-sign",
            "vital-sign",
            codes::concept(codes::LOINC, codes::BP_PANEL.0, codes::BP_PANEL.1),
            time,
            clinician,
        );
        m.insert("category".into(), vs_category.clone());
        let comps: Vec<Value> = [("systolic", &r.systolic), ("diastolic", &r.diastolic)]
            .into_iter()
            .filter_map(|(field, value)| {
                let v = codes::vital(field)?;
                let value = value.as_ref()?;
                let mut c = json!({
                    "code": codes::concept(codes::LOINC, v.code, v.display),
                    "valueQuantity": quantity(value, v.ucum, v.unit),
                });
                if let Some(flag) = vital_flag(field, value) {
                    c["interpretation"] = interpretation(flag);
                }
                Some(c)
            })
            .collect();
        m.insert("component".into(), Value::Array(comps));
        out.push(Value::Object(m));
    }
    for (field, value, part) in [
        ("heart_rate", &r.heart_rate, "hr"),
        ("spo2", &r.spo2, "spo2"),
        ("respiratory_rate", &r.respiratory_rate, "rr"),
        ("weight_kg", &r.weight_kg, "wt"),
    ] {
        let (Some(value), Some(v)) = (value, codes::vital(field)) else {
            continue;
        };
        let mut m = observation(
            ctx,
            &ctx.id(&format!("{prefix}-{part}")),
            "kap-vital-sign",
            "vital-sign",
            codes::concept(codes::LOINC, v.code, v.display),
            time,
            clinician,
        );
        m.insert("category".into(), vs_category.clone());
        m.insert("valueQuantity".into(), quantity(value, v.ucum, v.unit));
        if let Some(flag) = vital_flag(field, value) {
            m.insert("interpretation".into(), interpretation(flag));
        }
        out.push(Value::Object(m));
    }
    out
}

fn set_vital(r: &mut VitalReading, code: &str, value: Option<Number>) {
    let Some(v) = codes::vital_by_code(code) else {
        return;
    };
    let slot = match v.field {
        "systolic" => &mut r.systolic,
        "diastolic" => &mut r.diastolic,
        "heart_rate" => &mut r.heart_rate,
        "spo2" => &mut r.spo2,
        "respiratory_rate" => &mut r.respiratory_rate,
        _ => &mut r.weight_kg,
    };
    if value.is_some() {
        *slot = value;
    }
}

fn is_vital(obs: &Value) -> bool {
    first_code(&obs["code"]).is_some_and(|(s, c)| {
        s == codes::LOINC && (c == codes::BP_PANEL.0 || codes::vital_by_code(c).is_some())
    })
}

/// Vital-sign Observations grouped into readings by time, in time order.
fn readings_from(obs: &[Value]) -> Vec<VitalReading> {
    let mut by_time: BTreeMap<String, VitalReading> = BTreeMap::new();
    for o in obs.iter().filter(|o| is_vital(o)) {
        let Some(time) = effective(o) else { continue };
        let r = by_time.entry(time.clone()).or_insert_with(|| VitalReading {
            time: Some(time),
            ..VitalReading::default()
        });
        if let Some((_, code)) = first_code(&o["code"]) {
            set_vital(r, code, number_of(&o["valueQuantity"]["value"]));
        }
        for c in o["component"].as_array().into_iter().flatten() {
            if let Some((_, code)) = first_code(&c["code"]) {
                set_vital(r, code, number_of(&c["valueQuantity"]["value"]));
            }
        }
    }
    let mut out: Vec<VitalReading> = by_time.into_values().collect();
    sort_by_time(&mut out, |r| r.time.as_deref());
    for r in &mut out {
        flag_reading(r);
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Goals

fn goals_to_fhir(ctx: &Ctx, part: &str, texts: &[String], start: &str) -> Vec<Value> {
    let start_date: String = start.chars().take(10).collect();
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let id = ctx.id(&format!("{part}{i}"));
            json!({
                "resourceType": "Goal",
                "id": id,
                "meta": meta("kap-goal"),
                "identifier": identifier("goal", &id),
                "lifecycleStatus": "active",
                "description": { "text": text },
                "subject": reference("Patient", ctx.patient_id),
                "startDate": start_date,
            })
        })
        .collect()
}

fn goal_texts(goals: &[Value], record_id: &str, part: &str) -> Vec<String> {
    let prefix = format!("{record_id}-{part}");
    let mut found: Vec<(usize, String)> = goals
        .iter()
        .filter_map(|g| {
            let id = g["id"].as_str()?;
            let n = id.strip_prefix(&prefix)?.parse::<usize>().ok()?;
            Some((n, str_of(&g["description"]["text"])?))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, t)| t).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Evaluation

pub fn evaluation_to_fhir(ctx: &Ctx, ev: &Evaluation) -> Vec<Value> {
    let c = ev.fields();
    let mut out = vec![encounter(ctx, "psychiatric-evaluation", &c, &[])];
    for (i, dx) in ev.diagnoses.iter().enumerate() {
        let id = ctx.id(&format!("dx{i}"));
        let system = if dx.system == "snomed" {
            codes::SNOMED
        } else {
            codes::ICD10CM
        };
        let mut coding = json!({ "system": system, "code": dx.code });
        if let Some(d) = &dx.display {
            coding["display"] = json!(d);
        }
        out.push(json!({
            "resourceType": "Condition",
            "id": id,
            "meta": meta("kap-diagnosis"),
            "identifier": identifier("diagnosis", &id),
            "clinicalStatus": codes::concept(codes::CLINICAL_STATUS, "active", "Active"),
            "category": [codes::concept(codes::CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
            "code": { "coding": [coding] },
            "subject": reference("Patient", ctx.patient_id),
            "encounter": reference("Encounter", ctx.record_id),
            "recordedDate": ev.start,
        }));
    }
    out.extend(scores_to_fhir(
        ctx,
        &ev.scores,
        &ev.start,
        ev.clinician.as_ref(),
    ));
    if let Some(v) = &ev.vitals {
        out.extend(vitals_to_fhir(
            ctx,
            "vs",
            v,
            &ev.start,
            ev.clinician.as_ref(),
        ));
    }
    if !ev.contraindications.is_empty() {
        let mut m = observation(
            ctx,
            &ctx.id("ci"),
            "kap-contraindication-screen",
            "contraindication-screen",
            codes::kap("contraindication-screen"),
            &ev.start,
            ev.clinician.as_ref(),
        );
        let comps: Vec<Value> = ev
            .contraindications
            .iter()
            .map(|ci| {
                let mut comp = bool_component(&ci.item, ci.present);
                if let Some(note) = &ci.note {
                    comp["extension"] = json!([{
                        "url": codes::profile("kap-component-note"),
                        "valueString": note,
                    }]);
                }
                comp
            })
            .collect();
        m.insert("component".into(), Value::Array(comps));
        out.push(Value::Object(m));
    }
    let mut elig = observation(
        ctx,
        &ctx.id("elig"),
        "kap-eligibility",
        "eligibility",
        codes::kap("eligibility"),
        &ev.start,
        ev.clinician.as_ref(),
    );
    elig.insert(
        "valueCodeableConcept".into(),
        codes::kap(&ev.eligibility.decision),
    );
    if let Some(reason) = &ev.eligibility.reason {
        elig.insert("note".into(), json!([{ "text": reason }]));
    }
    out.push(Value::Object(elig));
    out.extend(goals_to_fhir(ctx, "goal", &ev.goals, &ev.start));
    out
}

pub fn evaluation_from_fhir(g: &Gathered, plan: Option<&Value>) -> Evaluation {
    let mut ev = Evaluation::default();
    with_header!(&g.encounter, ev);
    let rid = ev.id.clone().unwrap_or_default();
    ev.diagnoses = g
        .conditions
        .iter()
        .filter_map(|c| {
            let coding = c["code"]["coding"].as_array()?.first()?;
            let system = if coding["system"] == codes::SNOMED {
                "snomed"
            } else {
                "icd-10-cm"
            };
            Some(Diagnosis {
                system: system.into(),
                code: str_of(&coding["code"])?,
                display: str_of(&coding["display"]),
            })
        })
        .collect();
    ev.scores = scores_from(&g.observations, &["phq-9", "gad-7", "pcl-5", "c-ssrs"]);
    ev.vitals = readings_from(&g.observations).into_iter().next();
    if let Some(ci) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "contraindication-screen"))
    {
        ev.contraindications = components(ci)
            .map(|(code, c)| Contraindication {
                item: code.to_owned(),
                present: c["valueBoolean"].as_bool().unwrap_or(false),
                note: c["extension"]
                    .as_array()
                    .and_then(|es| es.iter().find_map(|e| str_of(&e["valueString"]))),
            })
            .collect();
    }
    if let Some(el) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "eligibility"))
    {
        ev.eligibility = Eligibility {
            decision: kap_code(&el["valueCodeableConcept"])
                .unwrap_or_default()
                .to_owned(),
            reason: str_of(&el["note"][0]["text"]),
        };
    }
    ev.goals = goal_texts(&g.goals, &rid, "goal");
    if let Some(plan) = plan {
        ev.summary = str_of(&plan["description"]);
        ev.planned_sessions = planned_of(plan);
    }
    ev
}

// ---------------------------------------------------------------------------------------------------------------
// The course (CarePlan)

const PLAN_KINDS: &[(&str, &str)] = &[
    ("evaluation", "psychiatric-evaluation"),
    ("preparation", "preparation-session"),
    ("dosing", "dosing-session"),
    ("integration", "integration-session"),
    ("follow_up", "follow-up"),
];

pub fn planned_of(plan: &Value) -> PlannedSessions {
    let count = |code: &str| -> u32 {
        activity(plan, code)
            .and_then(|a| a["detail"]["scheduledTiming"]["repeat"]["count"].as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    PlannedSessions {
        preparation: count("preparation-session"),
        dosing: count("dosing-session"),
        integration: count("integration-session"),
        follow_up: count("follow-up"),
    }
}

fn activity<'a>(plan: &'a Value, code: &str) -> Option<&'a Value> {
    plan["activity"]
        .as_array()?
        .iter()
        .find(|a| has_code(&a["detail"]["code"], KAP, code))
}

/// The Encounter ids the course's activity of a session kind names, in order.
pub fn activity_sessions(plan: &Value, code: &str) -> Vec<String> {
    activity(plan, code)
        .and_then(|a| a["outcomeReference"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|r| ref_id(r, "Encounter").map(str::to_owned))
        .collect()
}

/// CarePlan status from the eligibility decision.
pub fn status_from_eligibility(decision: &str) -> &'static str {
    match decision {
        "eligible" => "active",
        "deferred" => "draft",
        _ => "revoked",
    }
}

fn activity_status(done: usize, planned: u32) -> &'static str {
    let planned = planned as usize;
    if done == 0 {
        if planned == 0 {
            "not-started"
        } else {
            "scheduled"
        }
    } else if done < planned {
        "in-progress"
    } else {
        "completed"
    }
}

/// The course as the evaluation plans it, keeping the progress (`outcomeReference`) and end state of `existing`.
pub fn course_plan(
    ctx: &Ctx,
    ev: &Evaluation,
    written: &[Value],
    existing: Option<&Value>,
) -> Value {
    let refs_of = |t: &str, pred: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        written
            .iter()
            .filter(|r| r["resourceType"] == t && pred(r))
            .filter_map(|r| Some(reference(t, r["id"].as_str()?)))
            .collect()
    };
    let addresses = refs_of("Condition", &|_| true);
    let supporting = refs_of("Observation", &|o| {
        o["meta"]["profile"][0] != codes::profile("kap-vital-sign").as_str()
    });
    let goals = refs_of("Goal", &|_| true);
    let planned = &ev.planned_sessions;
    let activities: Vec<Value> = PLAN_KINDS
        .iter()
        .map(|(kind, code)| {
            let count = match *kind {
                "evaluation" => 1,
                "preparation" => planned.preparation,
                "dosing" => planned.dosing,
                "integration" => planned.integration,
                _ => planned.follow_up,
            };
            let mut sessions: Vec<Value> = existing
                .map(|p| {
                    activity_sessions(p, code)
                        .iter()
                        .map(|id| reference("Encounter", id))
                        .collect()
                })
                .unwrap_or_default();
            if *kind == "evaluation" {
                sessions = vec![reference("Encounter", ctx.record_id)];
            }
            activity_json(code, count, sessions)
        })
        .collect();
    let existing_status = existing.and_then(|p| p["status"].as_str());
    let status = match existing_status {
        Some("completed") => "completed",
        _ => status_from_eligibility(&ev.eligibility.decision),
    };
    let mut period = json!({ "start": ev.start.chars().take(10).collect::<String>() });
    if let Some(end) = existing.and_then(|p| p["period"]["end"].as_str()) {
        period["end"] = json!(end);
    }
    let mut plan = json!({
        "resourceType": "CarePlan",
        "id": ctx.course_id,
        "meta": meta("kap-treatment-course"),
        "identifier": identifier("course", ctx.course_id),
        "status": status,
        "intent": "plan",
        "category": [codes::kap("treatment-course")],
        "title": "Ketamine-assisted psychotherapy course",
        "subject": reference("Patient", ctx.patient_id),
        "period": period,
        "activity": activities,
    });
    if let Some(summary) = &ev.summary {
        plan["description"] = json!(summary);
    }
    if let Some(c) = &ev.clinician
        && (c.id.is_some() || c.name.is_some())
    {
        plan["author"] = clinician_ref(c);
    }
    if !addresses.is_empty() {
        plan["addresses"] = Value::Array(addresses);
    }
    if !supporting.is_empty() {
        plan["supportingInfo"] = Value::Array(supporting);
    }
    if !goals.is_empty() {
        plan["goal"] = Value::Array(goals);
    }
    plan
}

fn activity_json(code: &str, count: u32, sessions: Vec<Value>) -> Value {
    let mut detail = json!({
        "kind": "Appointment",
        "code": codes::kap(code),
        "status": activity_status(sessions.len(), count),
    });
    if count > 0 {
        detail["scheduledTiming"] = json!({ "repeat": { "count": count } });
    }
    let mut a = json!({ "detail": detail });
    if !sessions.is_empty() {
        a["outcomeReference"] = Value::Array(sessions);
    }
    a
}

/// Records a session in the course: links its Encounter to the activity of its kind and moves the activity's
/// status on (scheduled → in-progress → completed).
pub fn record_session(plan: &mut Value, kind_code: &str, encounter_id: &str) {
    let Some(activities) = plan.get_mut("activity").and_then(Value::as_array_mut) else {
        plan["activity"] = json!([activity_json(
            kind_code,
            0,
            vec![reference("Encounter", encounter_id)]
        )]);
        return;
    };
    let target = reference("Encounter", encounter_id);
    if let Some(a) = activities
        .iter_mut()
        .find(|a| has_code(&a["detail"]["code"], KAP, kind_code))
    {
        let count = a["detail"]["scheduledTiming"]["repeat"]["count"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        let refs = a
            .as_object_mut()
            .map(|m| m.entry("outcomeReference").or_insert_with(|| json!([])));
        if let Some(Value::Array(refs)) = refs {
            if !refs.iter().any(|r| r["reference"] == target["reference"]) {
                refs.push(target);
            }
            let done = refs.len();
            a["detail"]["status"] = json!(activity_status(done, count));
        }
    } else {
        activities.push(activity_json(kind_code, 0, vec![target]));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Preparation

pub fn preparation_to_fhir(ctx: &Ctx, p: &Preparation) -> Vec<Value> {
    let c = p.fields();
    let mut out = vec![encounter(ctx, "preparation-session", &c, &[])];
    if p.topics.is_some() || p.notes.is_some() {
        let t = p.topics.clone().unwrap_or_default();
        let mut m = observation(
            ctx,
            &ctx.id("topics"),
            "kap-preparation-topics",
            "preparation-topics",
            codes::kap("preparation-topics"),
            &p.start,
            p.clinician.as_ref(),
        );
        let comps: Vec<Value> = [
            ("education", t.education),
            ("expectations", t.expectations),
            ("safety_plan", t.safety_plan),
            ("consent", t.consent),
        ]
        .iter()
        .filter_map(|(field, v)| {
            Some(bool_component(
                codes::code_of(codes::PREPARATION_TOPICS, field)?,
                *v,
            ))
        })
        .collect();
        m.insert("component".into(), Value::Array(comps));
        if let Some(notes) = &p.notes {
            m.insert("note".into(), json!([{ "text": notes }]));
        }
        out.push(Value::Object(m));
    }
    if let Some(consent) = &p.informed_consent {
        let mut m = observation(
            ctx,
            &ctx.id("consent"),
            "kap-informed-consent",
            "informed-consent",
            codes::kap("informed-consent"),
            consent.date.as_deref().unwrap_or(&p.start),
            p.clinician.as_ref(),
        );
        m.insert("valueBoolean".into(), json!(consent.given));
        out.push(Value::Object(m));
    }
    out.extend(goals_to_fhir(ctx, "intent", &p.intentions, &p.start));
    out
}

pub fn preparation_from_fhir(g: &Gathered) -> Preparation {
    let mut p = Preparation::default();
    with_header!(&g.encounter, p);
    let rid = p.id.clone().unwrap_or_default();
    if let Some(t) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "preparation-topics"))
    {
        let mut topics = PreparationTopics::default();
        for (code, c) in components(t) {
            let v = c["valueBoolean"].as_bool().unwrap_or(false);
            match codes::field_of(codes::PREPARATION_TOPICS, code) {
                Some("education") => topics.education = v,
                Some("expectations") => topics.expectations = v,
                Some("safety_plan") => topics.safety_plan = v,
                Some("consent") => topics.consent = v,
                _ => {}
            }
        }
        p.topics = Some(topics);
        p.notes = str_of(&t["note"][0]["text"]);
    }
    if let Some(c) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "informed-consent"))
    {
        p.informed_consent = Some(InformedConsent {
            given: c["valueBoolean"].as_bool().unwrap_or(false),
            date: effective(c),
        });
    }
    p.intentions = goal_texts(&g.goals, &rid, "intent");
    p
}

// ---------------------------------------------------------------------------------------------------------------
// Dosing

/// The dose actually given in mg: as sent, or mg/kg × body weight (rounded to 0.001 mg).
pub fn dose_mg(d: &Dose) -> Option<Number> {
    if let Some(mg) = &d.mg {
        return Some(mg.clone());
    }
    let per_kg = as_f64(d.mg_per_kg.as_ref()?)?;
    let weight = as_f64(d.body_weight_kg.as_ref()?)?;
    Some(decimal(per_kg * weight, 3))
}

pub fn dosing_to_fhir(ctx: &Ctx, d: &Dosing) -> Vec<Value> {
    let c = d.fields();
    let extra: Vec<(&str, &Clinician)> = d.prescriber.iter().map(|p| ("PPRF", p)).collect();
    let mut out = vec![encounter(ctx, "dosing-session", &c, &extra)];
    let dose_start = d.dose.start.clone().unwrap_or_else(|| d.start.clone());
    let mg = dose_mg(&d.dose).unwrap_or_else(|| Number::from(0));
    let (route_code, route_display) = codes::ROUTES
        .iter()
        .find(|(n, _, _)| *n == d.route)
        .map(|(_, c, disp)| (*c, *disp))
        .unwrap_or(("", ""));
    let (med_code, med_display) = codes::MEDICATIONS
        .iter()
        .find(|(n, _, _)| *n == d.medication)
        .map(|(_, c, disp)| (*c, *disp))
        .unwrap_or(("", ""));
    let mut dosage = Map::new();
    let mut ext = Vec::new();
    if let Some(per_kg) = &d.dose.mg_per_kg {
        ext.push(json!({
            "url": codes::profile("kap-dose-per-kg"),
            "valueQuantity": quantity(per_kg, "mg/kg", "mg/kg"),
        }));
    }
    if let Some(w) = &d.dose.body_weight_kg {
        ext.push(json!({
            "url": codes::profile("kap-body-weight-used"),
            "valueQuantity": quantity(w, "kg", "kg"),
        }));
    }
    if !ext.is_empty() {
        dosage.insert("extension".into(), Value::Array(ext));
    }
    let mut text = match &d.dose.mg_per_kg {
        Some(per_kg) => format!("{per_kg} mg/kg ({mg} mg) {}", d.route.to_uppercase()),
        None => format!("{mg} mg {}", d.route.to_uppercase()),
    };
    if let Some(min) = d.dose.infusion_minutes {
        text.push_str(&format!(" over {min} min"));
    }
    dosage.insert("text".into(), json!(text));
    dosage.insert(
        "route".into(),
        codes::concept(codes::SNOMED, route_code, route_display),
    );
    dosage.insert("dose".into(), quantity(&mg, "mg", "mg"));
    let mut period = json!({ "start": dose_start });
    if let Some(min) = d.dose.infusion_minutes {
        if let Some(end) = plus_minutes(&dose_start, min) {
            period["end"] = json!(end);
        }
        if min > 0
            && let Some(mg_f) = as_f64(&mg)
        {
            let rate = decimal(mg_f * 60.0 / f64::from(min), 3);
            dosage.insert("rateQuantity".into(), quantity(&rate, "mg/h", "mg/h"));
        }
    }
    let dose_id = ctx.id("dose");
    let mut ma = json!({
        "resourceType": "MedicationAdministration",
        "id": dose_id,
        "meta": meta("kap-ketamine-administration"),
        "identifier": identifier("dose", &dose_id),
        "status": "completed",
        "medicationCodeableConcept": codes::concept(codes::RXNORM, med_code, med_display),
        "subject": reference("Patient", ctx.patient_id),
        "context": reference("Encounter", ctx.record_id),
        "effectivePeriod": period,
        "dosage": dosage,
    });
    if let Some(clin) = &d.clinician
        && (clin.id.is_some() || clin.name.is_some())
    {
        ma["performer"] = json!([{
            "function": codes::concept(codes::MED_PERFORM_FUNCTION, "performer", "Performer"),
            "actor": clinician_ref(clin),
        }]);
    }
    if let Some(notes) = &d.notes {
        ma["note"] = json!([{ "text": notes }]);
    }
    out.push(ma);
    let clin = d.clinician.as_ref();
    if let Some(pre) = &d.pre_dose_vitals {
        out.extend(vitals_to_fhir(ctx, "pre", pre, &dose_start, clin));
    }
    for (i, r) in d.monitoring_vitals.iter().enumerate() {
        out.extend(vitals_to_fhir(ctx, &format!("m{i}"), r, &dose_start, clin));
    }
    out.extend(scores_to_fhir(ctx, &d.scores, &d.start, clin));
    for (i, ae) in d.adverse_events.iter().enumerate() {
        let mut m = observation(
            ctx,
            &ctx.id(&format!("ae{i}")),
            "kap-adverse-event",
            "adverse-event",
            codes::kap("adverse-event"),
            ae.time.as_deref().unwrap_or(&d.start),
            clin,
        );
        m.insert(
            "focus".into(),
            json!([reference("MedicationAdministration", &dose_id)]),
        );
        let mut value = codes::kap(&ae.kind);
        if let Some(desc) = &ae.description {
            value["text"] = json!(desc);
        }
        m.insert("valueCodeableConcept".into(), value);
        let mut comps = vec![json!({
            "code": codes::kap("adverse-event-severity"),
            "valueCodeableConcept": codes::concept(codes::AE_SEVERITY, &ae.severity, &codes::humanize(&ae.severity)),
        })];
        if let Some(action) = &ae.action_taken {
            comps.push(json!({ "code": codes::kap("action-taken"), "valueString": action }));
        }
        m.insert("component".into(), Value::Array(comps));
        out.push(Value::Object(m));
    }
    if let Some(s) = &d.set_and_setting {
        let mut m = observation(
            ctx,
            &ctx.id("setting"),
            "kap-set-and-setting",
            "set-and-setting",
            codes::kap("set-and-setting"),
            &d.start,
            clin,
        );
        m.insert(
            "component".into(),
            json!([
                bool_component("music", s.music),
                bool_component("eye-mask", s.eye_mask),
                bool_component("support-person-present", s.support_person_present),
            ]),
        );
        out.push(Value::Object(m));
    }
    if let Some(dis) = &d.discharge {
        let mut m = observation(
            ctx,
            &ctx.id("discharge"),
            "kap-discharge",
            "discharge",
            codes::kap("discharge"),
            &dis.time,
            clin,
        );
        m.insert(
            "component".into(),
            json!([
                bool_component("criteria-met", dis.criteria_met),
                bool_component("escort-present", dis.escort_present),
            ]),
        );
        out.push(Value::Object(m));
    }
    out
}

pub fn dosing_from_fhir(g: &Gathered) -> Dosing {
    let mut d = Dosing::default();
    with_header!(&g.encounter, d);
    d.prescriber = participant(&g.encounter, "PPRF");
    if let Some(ma) = g.administrations.first() {
        d.medication = first_code(&ma["medicationCodeableConcept"])
            .and_then(|(_, c)| codes::MEDICATIONS.iter().find(|(_, code, _)| *code == c))
            .map(|(n, _, _)| (*n).to_owned())
            .unwrap_or_default();
        let dosage = &ma["dosage"];
        d.route = first_code(&dosage["route"])
            .and_then(|(_, c)| codes::ROUTES.iter().find(|(_, code, _)| *code == c))
            .map(|(n, _, _)| (*n).to_owned())
            .unwrap_or_default();
        let ext = |name: &str| {
            dosage["extension"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["url"] == codes::profile(name).as_str())
                .and_then(|e| number_of(&e["valueQuantity"]["value"]))
        };
        let start =
            str_of(&ma["effectivePeriod"]["start"]).or_else(|| str_of(&ma["effectiveDateTime"]));
        let minutes = match (&start, ma["effectivePeriod"]["end"].as_str()) {
            (Some(s), Some(e)) => minutes_between(s, e),
            _ => None,
        };
        d.dose = Dose {
            mg: number_of(&dosage["dose"]["value"]),
            mg_per_kg: ext("kap-dose-per-kg"),
            body_weight_kg: ext("kap-body-weight-used"),
            start,
            infusion_minutes: minutes,
        };
        d.notes = str_of(&ma["note"][0]["text"]);
    }
    let dose_start = d.dose.start.clone().unwrap_or_else(|| d.start.clone());
    let mut readings = readings_from(&g.observations);
    // The last reading at or before the dose is the pre-dose reading; the rest is monitoring.
    let pre_idx = readings.iter().rposition(|r| {
        r.time
            .as_deref()
            .and_then(|t| compare_times(t, &dose_start))
            != Some(std::cmp::Ordering::Greater)
    });
    if let Some(i) = pre_idx {
        d.pre_dose_vitals = Some(readings.remove(i));
    }
    d.monitoring_vitals = readings;
    d.scores = scores_from(&g.observations, &["cadss", "moaas"]);
    let mut aes: Vec<(usize, AdverseEvent)> = g
        .observations
        .iter()
        .filter(|o| obs_has_kap_code(o, "adverse-event"))
        .map(|o| {
            let mut ae = AdverseEvent {
                kind: kap_code(&o["valueCodeableConcept"])
                    .unwrap_or_default()
                    .to_owned(),
                severity: String::new(),
                action_taken: None,
                time: effective(o),
                description: str_of(&o["valueCodeableConcept"]["text"]),
            };
            for (code, c) in components(o) {
                match code {
                    "adverse-event-severity" => {
                        ae.severity = first_code(&c["valueCodeableConcept"])
                            .map(|(_, c)| c.to_owned())
                            .unwrap_or_default();
                    }
                    "action-taken" => ae.action_taken = str_of(&c["valueString"]),
                    _ => {}
                }
            }
            (part_index(o, "ae"), ae)
        })
        .collect();
    sort_by_time(&mut aes, |(_, a)| a.time.as_deref());
    aes.sort_by_key(|(i, _)| *i);
    d.adverse_events = aes.into_iter().map(|(_, a)| a).collect();
    if let Some(s) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "set-and-setting"))
    {
        let mut set = SetAndSetting::default();
        for (code, c) in components(s) {
            let v = c["valueBoolean"].as_bool().unwrap_or(false);
            match code {
                "music" => set.music = v,
                "eye-mask" => set.eye_mask = v,
                "support-person-present" => set.support_person_present = v,
                _ => {}
            }
        }
        d.set_and_setting = Some(set);
    }
    if let Some(o) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "discharge"))
    {
        let mut dis = Discharge {
            time: effective(o).unwrap_or_default(),
            criteria_met: false,
            escort_present: false,
        };
        for (code, c) in components(o) {
            let v = c["valueBoolean"].as_bool().unwrap_or(false);
            match code {
                "criteria-met" => dis.criteria_met = v,
                "escort-present" => dis.escort_present = v,
                _ => {}
            }
        }
        d.discharge = Some(dis);
    }
    d
}

// ---------------------------------------------------------------------------------------------------------------
// Integration

pub fn psychotherapy_labels() -> Value {
    json!([
        codes::coding(codes::CONFIDENTIALITY, "R", "restricted"),
        codes::coding(
            codes::ACT_CODE,
            "PSY",
            "psychiatry disorder information sensitivity"
        ),
        codes::coding(
            codes::ACT_CODE,
            "PSYTHPN",
            "psychotherapy note information sensitivity"
        ),
    ])
}

pub fn integration_to_fhir(ctx: &Ctx, s: &Integration) -> Vec<Value> {
    let c = s.fields();
    let mut out = vec![encounter(ctx, "integration-session", &c, &[])];
    if let Some(note) = &s.note {
        let mut m = observation(
            ctx,
            &ctx.id("note"),
            "kap-integration-note",
            "integration-note",
            codes::kap("integration-note"),
            &s.start,
            s.clinician.as_ref(),
        );
        m.insert(
            "meta".into(),
            json!({ "profile": [codes::profile("kap-integration-note")], "security": psychotherapy_labels() }),
        );
        m.insert("valueString".into(), json!(note));
        if !s.related_dosing_sessions.is_empty() {
            let focus: Vec<Value> = s
                .related_dosing_sessions
                .iter()
                .map(|id| reference("Encounter", id))
                .collect();
            m.insert("focus".into(), Value::Array(focus));
        }
        let mut comps = Vec::new();
        if let Some(t) = &s.themes {
            comps.push(json!({ "code": codes::kap("integration-themes"), "valueString": t }));
        }
        if let Some(n) = &s.next_steps {
            comps.push(json!({ "code": codes::kap("next-steps"), "valueString": n }));
        }
        if !comps.is_empty() {
            m.insert("component".into(), Value::Array(comps));
        }
        out.push(Value::Object(m));
    }
    if let Some(w) = s.wellbeing {
        out.extend(scores_to_fhir(
            ctx,
            &[Score {
                instrument: "wellbeing".into(),
                value: json!(w),
                time: None,
            }],
            &s.start,
            s.clinician.as_ref(),
        ));
    }
    out
}

pub fn integration_from_fhir(g: &Gathered) -> Integration {
    let mut s = Integration::default();
    with_header!(&g.encounter, s);
    if let Some(n) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "integration-note"))
    {
        s.note = str_of(&n["valueString"]);
        s.related_dosing_sessions = n["focus"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| ref_id(r, "Encounter").map(str::to_owned))
            .collect();
        for (code, c) in components(n) {
            match code {
                "integration-themes" => s.themes = str_of(&c["valueString"]),
                "next-steps" => s.next_steps = str_of(&c["valueString"]),
                _ => {}
            }
        }
    }
    s.wellbeing = scores_from(&g.observations, &["wellbeing"])
        .first()
        .and_then(|sc| sc.value.as_i64());
    s.note_withheld = g.withheld && s.note.is_none();
    s
}

// ---------------------------------------------------------------------------------------------------------------
// Follow-up

/// Response and remission of a follow-up PHQ-9 against the baseline.
pub fn treatment_response(baseline: i64, phq9: i64) -> TreatmentResponse {
    let change = if baseline == 0 {
        0.0
    } else {
        (phq9 - baseline) as f64 / baseline as f64 * 100.0
    };
    TreatmentResponse {
        baseline_phq9: baseline,
        phq9,
        percent_change: decimal(change, 1),
        response: baseline > 0 && phq9 * 2 <= baseline,
        remission: phq9 < 5,
    }
}

/// `baseline`: the baseline PHQ-9 (value and its Observation id) when the course has one.
pub fn follow_up_to_fhir(ctx: &Ctx, f: &FollowUp, baseline: Option<(i64, &str)>) -> Vec<Value> {
    let c = f.fields();
    let mut out = vec![encounter(ctx, "follow-up", &c, &[])];
    let scores = scores_to_fhir(ctx, &f.scores, &f.start, f.clinician.as_ref());
    let phq = f
        .scores
        .iter()
        .enumerate()
        .find(|(_, s)| s.instrument == "phq-9")
        .and_then(|(i, s)| Some((s.value.as_i64()?, ctx.id(&format!("sc{i}-phq-9")))));
    out.extend(scores);
    if let Some(decision) = &f.course_decision {
        let mut m = observation(
            ctx,
            &ctx.id("decision"),
            "kap-course-decision",
            "course-decision",
            codes::kap("course-decision"),
            &f.start,
            f.clinician.as_ref(),
        );
        m.insert("valueCodeableConcept".into(), codes::kap(decision));
        if let Some(plan) = &f.relapse_prevention_plan {
            m.insert(
                "component".into(),
                json!([{ "code": codes::kap("relapse-prevention-plan"), "valueString": plan }]),
            );
        }
        out.push(Value::Object(m));
    }
    if let (Some((base, base_id)), Some((value, phq_id))) = (baseline, phq) {
        let tr = treatment_response(base, value);
        let mut m = observation(
            ctx,
            &ctx.id("response"),
            "kap-treatment-response",
            "treatment-response",
            codes::kap("treatment-response"),
            &f.start,
            f.clinician.as_ref(),
        );
        m.insert(
            "derivedFrom".into(),
            json!([
                reference("Observation", base_id),
                reference("Observation", &phq_id)
            ]),
        );
        m.insert(
            "component".into(),
            json!([
                bool_component("response", tr.response),
                bool_component("remission", tr.remission),
                {
                    "code": codes::kap("percent-change"),
                    "valueQuantity": quantity(&tr.percent_change, "%", "%"),
                },
            ]),
        );
        out.push(Value::Object(m));
    }
    out
}

pub fn follow_up_from_fhir(g: &Gathered, baseline: Option<i64>) -> FollowUp {
    let mut f = FollowUp::default();
    with_header!(&g.encounter, f);
    f.scores = scores_from(&g.observations, &["phq-9", "gad-7", "pcl-5", "c-ssrs"]);
    if let Some(o) = g
        .observations
        .iter()
        .find(|o| obs_has_kap_code(o, "course-decision"))
    {
        f.course_decision = kap_code(&o["valueCodeableConcept"]).map(str::to_owned);
        f.relapse_prevention_plan = components(o)
            .find(|(code, _)| *code == "relapse-prevention-plan")
            .and_then(|(_, c)| str_of(&c["valueString"]));
    }
    let phq = f
        .scores
        .iter()
        .find(|s| s.instrument == "phq-9")
        .and_then(|s| s.value.as_i64());
    if let (Some(base), Some(v)) = (baseline, phq) {
        f.treatment_response = Some(treatment_response(base, v));
    }
    f
}

// ---------------------------------------------------------------------------------------------------------------
// Provenance

pub fn provenance(targets: &[String], activity: &str, who: Value, recorded: &str) -> Value {
    let display = if activity == "CREATE" {
        "create"
    } else {
        "update"
    };
    json!({
        "resourceType": "Provenance",
        "meta": meta("kap-provenance"),
        "target": targets.iter().map(|t| json!({ "reference": t })).collect::<Vec<_>>(),
        "recorded": recorded,
        "activity": codes::concept(codes::DATA_OPERATION, activity, display),
        "agent": [{
            "type": codes::concept(codes::PROVENANCE_AGENT, "author", "Author"),
            "who": who,
        }],
    })
}
