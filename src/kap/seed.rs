//! `kap-gateway seed --demo`: a synthetic cohort written through the KAP service (the code path of the HTTP API,
//! with its rules, mapping, transactions and Provenance), so every endpoint has realistic data to show. All names
//! and numbers are invented; the cohort is deterministic, so the same command gives the same cohort.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::model::*;
use super::service::{KapRecord, KapService};
use crate::auth::access::Access;
use crate::error::{Error, Result};

/// Identifier system that marks demo patients (so a second run can tell the cohort is already there).
pub const DEMO_SYSTEM: &str = "urn:kap-gateway:demo";

/// What was loaded.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub patients: usize,
    pub records: usize,
    pub patient_ids: Vec<String>,
    pub already_loaded: bool,
}

const FAMILY: &[&str] = &[
    "Rivera",
    "Nakamura",
    "Okafor",
    "Lindqvist",
    "Haddad",
    "Moreau",
    "Kowalski",
    "Mensah",
    "Duarte",
    "Fischer",
    "Osei",
    "Brennan",
    "Varga",
    "Yilmaz",
    "Castillo",
    "Novak",
    "Adeyemi",
    "Larsen",
    "Quinn",
    "Santos",
];
const GIVEN: &[&str] = &[
    "Alex", "Ken", "Ada", "Freya", "Omar", "Claire", "Piotr", "Akosua", "Marta", "Jonas", "Kwame",
    "Siobhan", "Bence", "Elif", "Lucia", "Tomas", "Bisi", "Mette", "Riley", "Ines",
];

/// How a demo course goes.
#[derive(Clone, Copy, PartialEq)]
enum Arc {
    /// All sessions, PHQ-9 falls into remission.
    Remitter,
    /// All sessions, PHQ-9 halves.
    Responder,
    /// All sessions, little change; continues into maintenance.
    NonResponder,
    /// Stopped after adverse events.
    Discontinued,
    /// Still in the dosing series.
    InProgress,
    /// Evaluation deferred (no sessions yet).
    Deferred,
    /// Evaluation found a contraindication.
    NotEligible,
}

const ARCS: &[Arc] = &[
    Arc::Remitter,
    Arc::Responder,
    Arc::NonResponder,
    Arc::InProgress,
    Arc::Remitter,
    Arc::Discontinued,
    Arc::Responder,
    Arc::Deferred,
    Arc::Remitter,
    Arc::InProgress,
    Arc::NonResponder,
    Arc::Responder,
    Arc::NotEligible,
    Arc::Remitter,
    Arc::InProgress,
    Arc::Responder,
    Arc::Remitter,
    Arc::NonResponder,
    Arc::Responder,
    Arc::InProgress,
];

/// (route, medication, mg/kg or fixed mg).
const ROUTES: &[(&str, &str, f64)] = &[
    ("iv", "ketamine", 0.5),
    ("im", "ketamine", 0.75),
    ("intranasal", "esketamine", 56.0),
    ("sublingual", "ketamine", 2.5),
    ("oral", "ketamine", 3.0),
];

fn de<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(Error::internal)
}

/// A date `days` after 2026-05-04 at `hh:mm` in US Central daylight time.
fn at(days: u32, hh: u32, mm: u32) -> String {
    let base = chrono::NaiveDate::from_ymd_opt(2026, 5, 4).unwrap_or_default();
    let d = base + chrono::Duration::days(i64::from(days));
    format!("{}T{hh:02}:{mm:02}:00-05:00", d.format("%Y-%m-%d"))
}

/// Loads `n` demo patients (at most 20 distinct names; more repeat them with a number).
pub async fn demo_cohort(kap: &KapService, n: usize) -> Result<SeedReport> {
    let access = Access::internal();
    let mut report = SeedReport::default();
    let first = format!("{DEMO_SYSTEM}|demo-01");
    let q = kap
        .fhir
        .parse_search("Patient", &[("identifier".to_owned(), first)], true)?;
    if !kap.fhir.search(&access, &q).await?.matches.is_empty() {
        report.already_loaded = true;
        return Ok(report);
    }
    for i in 0..n {
        let pid = seed_patient(kap, &access, i, &mut report).await?;
        report.patient_ids.push(pid);
    }
    Ok(report)
}

async fn add<R: KapRecord>(
    kap: &KapService,
    access: &Access,
    pid: &str,
    v: Value,
    report: &mut SeedReport,
) -> Result<Value> {
    let rec: R = de(v)?;
    let out = kap.create::<R>(access, pid, rec).await?;
    report.records += 1;
    Ok(out)
}

async fn seed_patient(
    kap: &KapService,
    access: &Access,
    i: usize,
    report: &mut SeedReport,
) -> Result<String> {
    let k = i % FAMILY.len();
    let arc = ARCS[k % ARCS.len()];
    let idx = u32::try_from(i).unwrap_or(0);
    let suffix = if i >= FAMILY.len() {
        format!("-{}", i / FAMILY.len() + 1)
    } else {
        String::new()
    };
    let patient: PatientRecord = de(json!({
        "family_name": format!("{}{suffix}", FAMILY[k]),
        "given_names": [GIVEN[k]],
        "birth_date": format!("{}-{:02}-{:02}", 1962 + (i * 7) % 38, 1 + (i * 5) % 12, 1 + (i * 11) % 28),
        "gender": if i.is_multiple_of(2) { "female" } else { "male" },
        "identifiers": [
            { "system": DEMO_SYSTEM, "value": format!("demo-{:02}", i + 1) },
            { "system": "urn:oid:2.16.840.1.113883.19.5", "value": format!("MRN-{:06}", 410 + i) }
        ],
        "phone": format!("+1 555 01{:02}", i % 100),
    }))?;
    let p = kap.enrol(access, patient).await?;
    report.patients += 1;
    let pid = p.id.clone().unwrap_or_default();
    let clinician = json!({ "id": "demo-psychiatrist", "name": "Dr. Jordan Lee" });
    let therapist = json!({ "name": "Sam Whitfield, LCSW" });
    let day0 = idx * 3;
    let baseline = 15 + ((i * 7) % 11) as i64;
    let weight = 58.0 + ((i * 13) % 40) as f64 + 0.5;
    let (route, medication, amount) = ROUTES[i % ROUTES.len()];
    let (decision, reason, hypertension) = match arc {
        Arc::Deferred => (
            "deferred",
            "Awaiting cardiology review of borderline ECG.",
            false,
        ),
        Arc::NotEligible => (
            "not-eligible",
            "Uncontrolled hypertension (168/104 at two visits).",
            true,
        ),
        _ => (
            "eligible",
            "Treatment-resistant depression; no contraindication found.",
            false,
        ),
    };
    let dosing_planned = 6u32;
    let items = [
        "uncontrolled-hypertension",
        "psychosis-or-mania-history",
        "pregnancy",
        "active-substance-use-disorder",
        "ketamine-hypersensitivity",
        "raised-intracranial-or-intraocular-pressure",
        "severe-cardiovascular-disease",
    ];
    let contraindications: Vec<Value> = items
        .iter()
        .map(|item| json!({ "item": item, "present": hypertension && *item == "uncontrolled-hypertension" }))
        .collect();
    let ev = add::<Evaluation>(
        kap,
        access,
        &pid,
        json!({
            "clinician": clinician,
            "start": at(day0, 9, 0),
            "end": at(day0, 10, 30),
            "diagnoses": [{ "system": "icd-10-cm", "code": if i.is_multiple_of(3) { "F33.2" } else { "F33.1" },
                            "display": if i.is_multiple_of(3) { "Major depressive disorder, recurrent severe without psychotic features" } else { "Major depressive disorder, recurrent, moderate" } }],
            "scores": [
                { "instrument": "phq-9", "value": baseline, "time": at(day0, 9, 15) },
                { "instrument": "gad-7", "value": 8 + (i % 10) as i64, "time": at(day0, 9, 15) },
                { "instrument": "c-ssrs", "value": if i.is_multiple_of(4) { "low" } else { "none" }, "time": at(day0, 9, 20) }
            ],
            "vitals": { "time": at(day0, 9, 5), "systolic": if hypertension { 168 } else { 118 + (i % 15) as i64 },
                        "diastolic": if hypertension { 104 } else { 76 + (i % 9) as i64 }, "heart_rate": 64 + (i % 20) as i64,
                        "weight_kg": weight },
            "contraindications": contraindications,
            "eligibility": { "decision": decision, "reason": reason },
            "goals": ["Reduce depressive symptoms", "Return to valued activities"],
            "planned_sessions": { "preparation": 1, "dosing": dosing_planned, "integration": dosing_planned, "follow_up": 1 },
            "summary": format!("Recurrent depression, {} adequate antidepressant trials without remission.", 2 + i % 3),
        }),
        report,
    )
    .await?;
    if arc == Arc::Deferred || arc == Arc::NotEligible {
        return Ok(pid);
    }
    let _ = ev;
    add::<Preparation>(
        kap,
        access,
        &pid,
        json!({
            "clinician": therapist,
            "start": at(day0 + 5, 14, 0),
            "end": at(day0 + 5, 15, 0),
            "topics": { "education": true, "expectations": true, "safety_plan": true, "consent": true },
            "intentions": ["Be kinder to myself", "Understand what keeps me stuck"],
            "informed_consent": { "given": true, "date": at(day0 + 5, 14, 50) },
        }),
        report,
    )
    .await?;
    let sessions = match arc {
        Arc::InProgress => 2 + (i % 3) as u32,
        Arc::Discontinued => 2,
        _ => dosing_planned,
    };
    for s in 0..sessions {
        let day = day0 + 12 + s * 4;
        let dose = if route == "intranasal" {
            json!({ "mg": amount as i64, "start": at(day, 10, 15) })
        } else {
            json!({ "mg_per_kg": amount, "body_weight_kg": weight, "start": at(day, 10, 15),
                    "infusion_minutes": if route == "iv" { 40 } else { 20 } })
        };
        let mut aes = Vec::new();
        if arc == Arc::Discontinued {
            aes.push(
                json!({ "kind": "hypertension", "severity": "moderate", "time": at(day, 10, 40),
                             "action_taken": "Session paused; labetalol 10 mg IV." }),
            );
            aes.push(json!({ "kind": "emergence-reaction", "severity": if s == 1 { "severe" } else { "moderate" },
                             "time": at(day, 11, 0), "action_taken": "Reassurance; midazolam 1 mg." }));
        } else if (i + s as usize).is_multiple_of(5) {
            aes.push(
                json!({ "kind": "nausea", "severity": "mild", "time": at(day, 10, 50),
                             "action_taken": "Ondansetron 4 mg." }),
            );
        }
        let peak_sys = if arc == Arc::Discontinued {
            158
        } else {
            126 + ((i + s as usize) % 12) as i64
        };
        let dosing = add::<Dosing>(
            kap,
            access,
            &pid,
            json!({
                "clinician": clinician,
                "prescriber": { "id": "demo-psychiatrist", "name": "Dr. Jordan Lee" },
                "start": at(day, 10, 0),
                "end": at(day, 12, 15),
                "medication": medication,
                "route": route,
                "dose": dose,
                "pre_dose_vitals": { "time": at(day, 10, 5), "systolic": 120 + (i % 10) as i64, "diastolic": 78, "heart_rate": 70, "spo2": 98 },
                "monitoring_vitals": [
                    { "time": at(day, 10, 35), "systolic": peak_sys, "diastolic": 84, "heart_rate": 82, "spo2": 97, "respiratory_rate": 14 },
                    { "time": at(day, 11, 15), "systolic": 124, "diastolic": 80, "heart_rate": 74, "spo2": 98 }
                ],
                "scores": [
                    { "instrument": "cadss", "value": 10 + ((i * 3 + s as usize) % 25) as i64, "time": at(day, 11, 20) },
                    { "instrument": "moaas", "value": 4 + (s % 2) as i64, "time": at(day, 11, 20) }
                ],
                "adverse_events": aes,
                "set_and_setting": { "music": true, "eye_mask": !(i + s as usize).is_multiple_of(3), "support_person_present": i.is_multiple_of(4) },
                "discharge": { "time": at(day, 12, 10), "criteria_met": true, "escort_present": true },
            }),
            report,
        )
        .await?;
        if arc == Arc::Discontinued && s == 1 {
            break;
        }
        let wellbeing = match arc {
            Arc::Remitter | Arc::Responder => 5 + s.min(4) as i64,
            _ => 4,
        };
        add::<Integration>(
            kap,
            access,
            &pid,
            json!({
                "clinician": therapist,
                "start": at(day + 1, 15, 0),
                "end": at(day + 1, 15, 50),
                "related_dosing_sessions": [dosing["id"]],
                "note": format!("Demo note {}: patient reflected on the session's imagery and one concrete change for the coming week.", s + 1),
                "themes": if s % 2 == 0 { "Self-compassion" } else { "Relationships; routine" },
                "wellbeing": wellbeing,
                "next_steps": "Journal daily; walk three times this week.",
            }),
            report,
        )
        .await?;
    }
    if arc == Arc::InProgress {
        return Ok(pid);
    }
    let phq = match arc {
        Arc::Remitter => 2 + (i % 3) as i64,
        Arc::Responder => baseline / 2 - 1,
        Arc::Discontinued => baseline - 3,
        _ => baseline - 2,
    };
    let decision = match arc {
        Arc::Remitter => "complete",
        Arc::Responder => "maintenance",
        Arc::Discontinued => "discontinue",
        _ => "continue",
    };
    let last = day0 + 12 + sessions * 4 + 21;
    add::<FollowUp>(
        kap,
        access,
        &pid,
        json!({
            "clinician": clinician,
            "start": at(last, 9, 0),
            "end": at(last, 9, 30),
            "scores": [
                { "instrument": "phq-9", "value": phq, "time": at(last, 9, 10) },
                { "instrument": "gad-7", "value": (phq * 2 / 3).max(1), "time": at(last, 9, 10) }
            ],
            "relapse_prevention_plan": "Monthly check-in; booster session if PHQ-9 rises above 10.",
            "course_decision": decision,
        }),
        report,
    )
    .await?;
    Ok(pid)
}
