//! The KAP records as the clinic-facing JSON API reads and writes them. Field names are plain clinic language;
//! every record is rebuilt from FHIR on read (see `mapping`). Fields marked "computed" are filled in by the gateway
//! and ignored on input.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// A clinician taking part: a Practitioner id (when the clinic keeps Practitioners) and/or a display name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Clinician {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierRec {
    pub system: String,
    pub value: String,
}

/// A patient enrolled in KAP (the FHIR Patient).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatientRecord {
    /// Computed: the FHIR Patient id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<String>,
    /// Other identifiers, such as the EHR's MRN.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<IdentifierRec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// Links an existing FHIR Patient (by id, or by an identifier such as an EHR MRN) to KAP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    #[serde(default)]
    pub fhir_id: Option<String>,
    #[serde(default)]
    pub identifier: Option<IdentifierRec>,
}

/// A score on one instrument: `phq-9`, `gad-7`, `pcl-5`, `c-ssrs` (value `none|low|moderate|high`), `cadss`,
/// `moaas`, `wellbeing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    pub instrument: String,
    pub value: Value,
    /// When the score was taken; defaults to the record's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// One set of vital signs taken at one time. Any subset may be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VitalReading {
    /// When the reading was taken; defaults to the record's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systolic: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diastolic: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heart_rate: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spo2: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respiratory_rate: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_kg: Option<Number>,
    /// Computed: `H` or `L` for each value outside the normal adult range.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub flags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diagnosis {
    /// `icd-10-cm` or `snomed`.
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contraindication {
    pub item: String,
    pub present: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Eligibility {
    /// `eligible`, `not-eligible` or `deferred`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Planned number of sessions of each kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PlannedSessions {
    #[serde(default)]
    pub preparation: u32,
    #[serde(default)]
    pub dosing: u32,
    #[serde(default)]
    pub integration: u32,
    #[serde(default)]
    pub follow_up: u32,
}

/// The fields every session-like record shares, and accessors for them (serde's `flatten` cannot be combined with
/// `deny_unknown_fields`, so the fields are repeated in each record by this macro).
macro_rules! session_record {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Computed: the record id (the FHIR Encounter id).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub id: Option<String>,
            /// Computed: the patient.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub patient_id: Option<String>,
            /// The course (CarePlan id). Sessions default to the patient's active course; an evaluation creates one.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub course_id: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub clinician: Option<Clinician>,
            pub start: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub end: Option<String>,
            $($body)*
        }

        impl SessionFields for $name {
            fn fields(&self) -> Common<'_> {
                Common {
                    id: self.id.as_deref(),
                    course_id: self.course_id.as_deref(),
                    clinician: self.clinician.as_ref(),
                    start: &self.start,
                    end: self.end.as_deref(),
                }
            }
            fn set_ids(&mut self, id: &str, patient_id: &str, course_id: &str) {
                self.id = Some(id.to_owned());
                self.patient_id = Some(patient_id.to_owned());
                self.course_id = Some(course_id.to_owned());
            }
        }
    };
}

/// Read access to the shared fields of a session-like record.
pub struct Common<'a> {
    pub id: Option<&'a str>,
    pub course_id: Option<&'a str>,
    pub clinician: Option<&'a Clinician>,
    pub start: &'a str,
    pub end: Option<&'a str>,
}

pub trait SessionFields {
    fn fields(&self) -> Common<'_>;
    fn set_ids(&mut self, id: &str, patient_id: &str, course_id: &str);
}

session_record! {
    pub struct Evaluation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnoses: Vec<Diagnosis>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Score>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vitals: Option<VitalReading>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contraindications: Vec<Contraindication>,
    pub eligibility: Eligibility,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub goals: Vec<String>,
    #[serde(default)]
    pub planned_sessions: PlannedSessions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PreparationTopics {
    #[serde(default)]
    pub education: bool,
    #[serde(default)]
    pub expectations: bool,
    #[serde(default)]
    pub safety_plan: bool,
    #[serde(default)]
    pub consent: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InformedConsent {
    pub given: bool,
    /// When consent was given; defaults to the session start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

session_record! {
    pub struct Preparation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<PreparationTopics>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intentions: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub informed_consent: Option<InformedConsent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}
}

/// The dose: either `mg`, or `mg_per_kg` with `body_weight_kg` (then `mg` is computed and both are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dose {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mg: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mg_per_kg: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_weight_kg: Option<Number>,
    /// When administration started; defaults to the session start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Infusion or administration time in minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infusion_minutes: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdverseEvent {
    /// `nausea`, `vomiting`, `hypertension`, `anxiety`, `dizziness`, `headache`, `emergence-reaction`,
    /// `excessive-sedation`, `other-adverse-event`.
    pub kind: String,
    /// `mild`, `moderate`, `severe`.
    pub severity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_taken: Option<String>,
    /// Defaults to the session start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SetAndSetting {
    #[serde(default)]
    pub music: bool,
    #[serde(default)]
    pub eye_mask: bool,
    #[serde(default)]
    pub support_person_present: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discharge {
    pub time: String,
    #[serde(default)]
    pub criteria_met: bool,
    #[serde(default)]
    pub escort_present: bool,
}

session_record! {
    pub struct Dosing {
    /// Computed: 1-based position of this session among the course's dosing sessions, by start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prescriber: Option<Clinician>,
    /// `ketamine` (racemic) or `esketamine`.
    pub medication: String,
    /// `iv`, `im`, `intranasal`, `sublingual`, `oral`.
    pub route: String,
    pub dose: Dose,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_dose_vitals: Option<VitalReading>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub monitoring_vitals: Vec<VitalReading>,
    /// Dissociation (CADSS) and sedation (MOAA/S) scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Score>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adverse_events: Vec<AdverseEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_and_setting: Option<SetAndSetting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discharge: Option<Discharge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}
}

session_record! {
    pub struct Integration {
    /// The dosing sessions this session integrates (record ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_dosing_sessions: Vec<String>,
    /// The psychotherapy note. Returned only to tokens allowed to see psychotherapy notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub themes: Option<String>,
    /// Wellbeing rating 0–10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wellbeing: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_steps: Option<String>,
    /// Computed: true when the note exists but this token may not see it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub note_withheld: bool,
}
}

/// Computed by the gateway on a follow-up with a PHQ-9 score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreatmentResponse {
    pub baseline_phq9: i64,
    pub phq9: i64,
    pub percent_change: Number,
    /// PHQ-9 dropped by 50 % or more from baseline.
    pub response: bool,
    /// PHQ-9 below 5.
    pub remission: bool,
}

session_record! {
    pub struct FollowUp {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Score>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relapse_prevention_plan: Option<String>,
    /// `continue`, `maintenance`, `complete` (ends the course) or `discontinue` (revokes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub course_decision: Option<String>,
    /// Computed: response and remission against the baseline PHQ-9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub treatment_response: Option<TreatmentResponse>,
}
}
