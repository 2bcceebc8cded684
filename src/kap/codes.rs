//! Every code the KAP mapping uses, in one place (see `profiles/README.md` for the choices). A wrong code is a
//! one-line fix here.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Value, json};

pub const KAP: &str = "http://kap-gateway.org/fhir/CodeSystem/kap";
pub const PROFILE_BASE: &str = "http://kap-gateway.org/fhir/StructureDefinition/";
pub const LOINC: &str = "http://loinc.org";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
pub const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
pub const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
pub const INTERPRETATION: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
pub const AE_SEVERITY: &str = "http://terminology.hl7.org/CodeSystem/adverse-event-severity";
pub const DATA_OPERATION: &str = "http://terminology.hl7.org/CodeSystem/v3-DataOperation";
pub const PROVENANCE_AGENT: &str =
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
pub const MED_PERFORM_FUNCTION: &str =
    "http://terminology.hl7.org/CodeSystem/med-admin-perform-function";
pub const CLINICAL_STATUS: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";

/// Business identifier system of a KAP record kind: `urn:kap-gateway:<kind>`.
pub fn identifier_system(kind: &str) -> String {
    format!("urn:kap-gateway:{kind}")
}

pub fn profile(id: &str) -> String {
    format!("{PROFILE_BASE}{id}")
}

pub fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

pub fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [coding(system, code, display)] })
}

pub fn kap(code: &str) -> Value {
    concept(KAP, code, kap_display(code))
}

/// Display of a code of the `kap` CodeSystem, read from the published `profiles/CodeSystem-kap.json` (one source).
pub fn kap_display(code: &str) -> &'static str {
    static DISPLAYS: LazyLock<HashMap<String, String>> = LazyLock::new(|| {
        fn walk(concepts: &Value, out: &mut HashMap<String, String>) {
            for c in concepts.as_array().into_iter().flatten() {
                if let (Some(code), Some(display)) = (c["code"].as_str(), c["display"].as_str()) {
                    out.insert(code.to_owned(), display.to_owned());
                }
                walk(&c["concept"], out);
            }
        }
        let mut out = HashMap::new();
        for r in crate::fhir::profile::conformance_resources() {
            if r["resourceType"] == "CodeSystem" && r["url"] == KAP {
                walk(&r["concept"], &mut out);
            }
        }
        out
    });
    DISPLAYS.get(code).map(String::as_str).unwrap_or("")
}

/// A session kind as the KAP API names it and its `kap` code.
pub const SESSION_KINDS: &[(&str, &str)] = &[
    ("evaluation", "psychiatric-evaluation"),
    ("preparation", "preparation-session"),
    ("dosing", "dosing-session"),
    ("integration", "integration-session"),
    ("follow_up", "follow-up"),
];

pub fn session_kind(code: &str) -> Option<&'static str> {
    SESSION_KINDS
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(k, _)| *k)
}

/// A score instrument: KAP name, code system, code, display, and its valid range (None = coded value).
pub struct Instrument {
    pub name: &'static str,
    pub system: &'static str,
    pub code: &'static str,
    pub display: &'static str,
    pub range: Option<(i64, i64)>,
}

pub const INSTRUMENTS: &[Instrument] = &[
    Instrument {
        name: "phq-9",
        system: LOINC,
        code: "44261-6",
        display: "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
        range: Some((0, 27)),
    },
    Instrument {
        name: "gad-7",
        system: LOINC,
        code: "70274-6",
        display: "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]",
        range: Some((0, 21)),
    },
    Instrument {
        name: "pcl-5",
        system: LOINC,
        code: "101698-9",
        display: "PTSD PCL-5 score",
        range: Some((0, 80)),
    },
    Instrument {
        name: "c-ssrs",
        system: LOINC,
        code: "93374-7",
        display: "Suicide risk level",
        range: None,
    },
    Instrument {
        name: "cadss",
        system: KAP,
        code: "cadss-total",
        display: "CADSS total score",
        range: Some((0, 92)),
    },
    Instrument {
        name: "moaas",
        system: KAP,
        code: "moaas",
        display: "MOAA/S score",
        range: Some((0, 5)),
    },
    Instrument {
        name: "wellbeing",
        system: KAP,
        code: "wellbeing-rating",
        display: "Wellbeing rating",
        range: Some((0, 10)),
    },
];

/// C-SSRS risk levels (`kap` codes `risk-<level>`).
pub const CSSRS_LEVELS: &[&str] = &["none", "low", "moderate", "high"];

pub fn instrument(name: &str) -> Option<&'static Instrument> {
    INSTRUMENTS.iter().find(|i| i.name == name)
}

pub fn instrument_by_code(system: &str, code: &str) -> Option<&'static Instrument> {
    INSTRUMENTS
        .iter()
        .find(|i| i.system == system && i.code == code)
}

/// Routes: KAP name, SNOMED code, display.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("iv", "47625008", "Intravenous route"),
    ("im", "78421000", "Intramuscular route"),
    ("intranasal", "46713006", "Nasal route"),
    ("sublingual", "37839007", "Sublingual route"),
    ("oral", "26643006", "Oral route"),
];

/// Medications: KAP name, RxNorm code, display.
pub const MEDICATIONS: &[(&str, &str, &str)] = &[
    ("ketamine", "6130", "ketamine"),
    ("esketamine", "2201623", "esketamine Nasal Spray"),
];

/// Vital signs: KAP field, LOINC code, display, UCUM unit, printable unit.
pub struct Vital {
    pub field: &'static str,
    pub code: &'static str,
    pub display: &'static str,
    pub ucum: &'static str,
    pub unit: &'static str,
    /// Physiologically possible range (outside → refused).
    pub possible: (f64, f64),
    /// Normal adult range (outside → flagged L or H).
    pub normal: (f64, f64),
}

pub const BP_PANEL: (&str, &str) = ("85354-9", "Blood pressure panel with all children optional");

pub const VITALS: &[Vital] = &[
    Vital {
        field: "systolic",
        code: "8480-6",
        display: "Systolic blood pressure",
        ucum: "mm[Hg]",
        unit: "mmHg",
        possible: (40.0, 300.0),
        normal: (90.0, 140.0),
    },
    Vital {
        field: "diastolic",
        code: "8462-4",
        display: "Diastolic blood pressure",
        ucum: "mm[Hg]",
        unit: "mmHg",
        possible: (20.0, 200.0),
        normal: (60.0, 90.0),
    },
    Vital {
        field: "heart_rate",
        code: "8867-4",
        display: "Heart rate",
        ucum: "/min",
        unit: "beats/minute",
        possible: (20.0, 300.0),
        normal: (50.0, 100.0),
    },
    Vital {
        field: "spo2",
        code: "59408-5",
        display: "Oxygen saturation in Arterial blood by Pulse oximetry",
        ucum: "%",
        unit: "%",
        possible: (40.0, 100.0),
        normal: (94.0, 100.0),
    },
    Vital {
        field: "respiratory_rate",
        code: "9279-1",
        display: "Respiratory rate",
        ucum: "/min",
        unit: "breaths/minute",
        possible: (2.0, 80.0),
        normal: (10.0, 20.0),
    },
    Vital {
        field: "weight_kg",
        code: "29463-7",
        display: "Body weight",
        ucum: "kg",
        unit: "kg",
        possible: (1.0, 500.0),
        normal: (0.0, f64::MAX),
    },
];

pub fn vital(field: &str) -> Option<&'static Vital> {
    VITALS.iter().find(|v| v.field == field)
}

pub fn vital_by_code(code: &str) -> Option<&'static Vital> {
    VITALS.iter().find(|v| v.code == code)
}

pub const CONTRAINDICATIONS: &[&str] = &[
    "uncontrolled-hypertension",
    "psychosis-or-mania-history",
    "pregnancy",
    "active-substance-use-disorder",
    "ketamine-hypersensitivity",
    "raised-intracranial-or-intraocular-pressure",
    "severe-cardiovascular-disease",
];

pub const ELIGIBILITY: &[&str] = &["eligible", "not-eligible", "deferred"];

pub const ADVERSE_EVENTS: &[&str] = &[
    "nausea",
    "vomiting",
    "hypertension",
    "anxiety",
    "dizziness",
    "headache",
    "emergence-reaction",
    "excessive-sedation",
    "other-adverse-event",
];

pub const SEVERITIES: &[&str] = &["mild", "moderate", "severe"];

pub const PREPARATION_TOPICS: &[(&str, &str)] = &[
    ("education", "education"),
    ("expectations", "expectations"),
    ("safety_plan", "safety-plan"),
    ("consent", "consent"),
];

pub const SET_AND_SETTING: &[(&str, &str)] = &[
    ("music", "music"),
    ("eye_mask", "eye-mask"),
    ("support_person_present", "support-person-present"),
];

pub const DISCHARGE: &[(&str, &str)] = &[
    ("criteria_met", "criteria-met"),
    ("escort_present", "escort-present"),
];

pub const COURSE_DECISIONS: &[&str] = &["continue", "maintenance", "complete", "discontinue"];

/// Looks up `code` in a `(kap field, kap code)` table by field.
pub fn code_of(table: &[(&'static str, &'static str)], field: &str) -> Option<&'static str> {
    table.iter().find(|(f, _)| *f == field).map(|(_, c)| *c)
}

/// Looks up a field in a `(kap field, kap code)` table by code.
pub fn field_of(table: &[(&'static str, &'static str)], code: &str) -> Option<&'static str> {
    table.iter().find(|(_, c)| *c == code).map(|(f, _)| *f)
}

/// Display text for local codes that have no entry in [`kap_display`]: the code with dashes as spaces, capitalised.
pub fn humanize(code: &str) -> String {
    let text = code.replace('-', " ");
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}
