//! The search-parameter registry (https://hl7.org/fhir/R4/searchparameter-registry.html): the one
//! table of supported resource types and their R4 search parameters that drives indexing, search
//! parsing and the CapabilityStatement, plus the R4 Patient compartment
//! (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).
//!
//! Paths are simple element paths from the resource root with choice types spelled out, because
//! the extractor walks JSON and does not evaluate FHIRPath. Where R4 narrows a parameter with
//! `.where(resolve() is X)`, the narrowing is expressed through `targets`.
//!
//! Not supported (left out of the table):
//! - composite parameters: Observation `code-value-concept`, `code-value-date`,
//!   `code-value-quantity`, `code-value-string`, `combo-code-value-concept`,
//!   `combo-code-value-quantity`, `component-code-value-concept`,
//!   `component-code-value-quantity`; Group `characteristic-value`;
//! - `phonetic` on Patient, Practitioner and Organization (no phonetic algorithm is defined);
//! - `_text`, `_content`, `_list`, `_has`, `_query` and `_filter`;
//! - the SampledData alternatives of Observation `value-quantity`, `component-value-quantity`
//!   and `combo-value-quantity` (only Quantity values are indexed).

/// The resource types this server stores and searches.
pub const SUPPORTED_TYPES: &[&str] = &[
    "Patient",
    "Practitioner",
    "Organization",
    "CarePlan",
    "Encounter",
    "Observation",
    "MedicationAdministration",
    "Condition",
    "Goal",
    "Group",
    "Provenance",
    "AuditEvent",
    "AllergyIntolerance",
    "MedicationStatement",
];

/// The FHIR SearchParamType of a parameter (https://hl7.org/fhir/R4/valueset-search-param-type.html).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Token,
    String,
    Date,
    Reference,
    Quantity,
    Number,
    Uri,
}

impl ParamKind {
    /// The SearchParamType code, as written in a CapabilityStatement.
    pub fn as_str(&self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::String => "string",
            ParamKind::Date => "date",
            ParamKind::Reference => "reference",
            ParamKind::Quantity => "quantity",
            ParamKind::Number => "number",
            ParamKind::Uri => "uri",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug)]
pub struct SearchParamDef {
    /// The parameter's code, as used in a search URL (e.g. `subject`).
    pub name: &'static str,
    pub kind: ParamKind,
    /// Dot-separated element paths from the resource root, choice types spelled out
    /// (e.g. `effectiveDateTime`); every path contributes values.
    pub paths: &'static [&'static str],
    /// For reference parameters, the allowed target types; empty means any type.
    pub targets: &'static [&'static str],
    /// One line, as in the R4 specification.
    pub description: &'static str,
}

const fn sp(
    name: &'static str,
    kind: ParamKind,
    paths: &'static [&'static str],
    targets: &'static [&'static str],
    description: &'static str,
) -> SearchParamDef {
    SearchParamDef {
        name,
        kind,
        paths,
        targets,
        description,
    }
}

use ParamKind::{Date, Quantity, Reference, String as Str, Token, Uri};

const ANY: &[&str] = &[];
const PATIENT: &[&str] = &["Patient"];
const SUBJECT_GROUP_PATIENT: &[&str] = &["Group", "Patient"];
/// The R4 targets of Provenance.agent.who, AuditEvent.agent.who and AuditEvent.source.observer.
const AGENT: &[&str] = &[
    "Practitioner",
    "Organization",
    "Device",
    "Patient",
    "PractitionerRole",
    "RelatedPerson",
];

static COMMON: &[SearchParamDef] = &[
    sp("_id", Token, &["id"], ANY, "Logical id of this artifact"),
    sp(
        "_lastUpdated",
        Date,
        &["meta.lastUpdated"],
        ANY,
        "When the resource version last changed",
    ),
    sp(
        "_tag",
        Token,
        &["meta.tag"],
        ANY,
        "Tags applied to this resource",
    ),
    sp(
        "_security",
        Token,
        &["meta.security"],
        ANY,
        "Security Labels applied to this resource",
    ),
    sp(
        "_profile",
        Uri,
        &["meta.profile"],
        ANY,
        "Profiles this resource claims to conform to",
    ),
    sp(
        "_source",
        Uri,
        &["meta.source"],
        ANY,
        "Identifies where the resource comes from",
    ),
];

static PATIENT_PARAMS: &[SearchParamDef] = &[
    sp(
        "active",
        Token,
        &["active"],
        ANY,
        "Whether the patient record is active",
    ),
    sp(
        "address",
        Str,
        &["address"],
        ANY,
        "A server defined search that may match any of the string fields in the Address, including line, city, district, state, country, postalCode, and/or text",
    ),
    sp(
        "address-city",
        Str,
        &["address.city"],
        ANY,
        "A city specified in an address",
    ),
    sp(
        "address-country",
        Str,
        &["address.country"],
        ANY,
        "A country specified in an address",
    ),
    sp(
        "address-postalcode",
        Str,
        &["address.postalCode"],
        ANY,
        "A postalCode specified in an address",
    ),
    sp(
        "address-state",
        Str,
        &["address.state"],
        ANY,
        "A state specified in an address",
    ),
    sp(
        "address-use",
        Token,
        &["address.use"],
        ANY,
        "A use code specified in an address",
    ),
    sp(
        "birthdate",
        Date,
        &["birthDate"],
        ANY,
        "The patient's date of birth",
    ),
    sp(
        "death-date",
        Date,
        &["deceasedDateTime"],
        ANY,
        "The date of death has been provided and satisfies this search value",
    ),
    sp(
        "deceased",
        Token,
        &["deceasedBoolean", "deceasedDateTime"],
        ANY,
        "This patient has been marked as deceased, or as a death date entered",
    ),
    sp(
        "email",
        Token,
        &["telecom"],
        ANY,
        "A value in an email contact",
    ),
    sp(
        "family",
        Str,
        &["name.family"],
        ANY,
        "A portion of the family name of the patient",
    ),
    sp("gender", Token, &["gender"], ANY, "Gender of the patient"),
    sp(
        "general-practitioner",
        Reference,
        &["generalPractitioner"],
        &["Practitioner", "Organization", "PractitionerRole"],
        "Patient's nominated general practitioner, not the organization that manages the record",
    ),
    sp(
        "given",
        Str,
        &["name.given"],
        ANY,
        "A portion of the given name of the patient",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "A patient identifier",
    ),
    sp(
        "language",
        Token,
        &["communication.language"],
        ANY,
        "Language code (irrespective of use value)",
    ),
    sp(
        "link",
        Reference,
        &["link.other"],
        &["Patient", "RelatedPerson"],
        "All patients linked to the given patient",
    ),
    sp(
        "name",
        Str,
        &["name"],
        ANY,
        "A server defined search that may match any of the string fields in the HumanName, including family, give, prefix, suffix, suffix, and/or text",
    ),
    sp(
        "organization",
        Reference,
        &["managingOrganization"],
        &["Organization"],
        "The organization that is the custodian of the patient record",
    ),
    sp(
        "phone",
        Token,
        &["telecom"],
        ANY,
        "A value in a phone contact",
    ),
    sp(
        "telecom",
        Token,
        &["telecom"],
        ANY,
        "The value in any kind of telecom details of the patient",
    ),
];

static PRACTITIONER_PARAMS: &[SearchParamDef] = &[
    sp(
        "active",
        Token,
        &["active"],
        ANY,
        "Whether the practitioner record is active",
    ),
    sp(
        "address",
        Str,
        &["address"],
        ANY,
        "A server defined search that may match any of the string fields in the Address, including line, city, district, state, country, postalCode, and/or text",
    ),
    sp(
        "address-city",
        Str,
        &["address.city"],
        ANY,
        "A city specified in an address",
    ),
    sp(
        "address-country",
        Str,
        &["address.country"],
        ANY,
        "A country specified in an address",
    ),
    sp(
        "address-postalcode",
        Str,
        &["address.postalCode"],
        ANY,
        "A postalCode specified in an address",
    ),
    sp(
        "address-state",
        Str,
        &["address.state"],
        ANY,
        "A state specified in an address",
    ),
    sp(
        "address-use",
        Token,
        &["address.use"],
        ANY,
        "A use code specified in an address",
    ),
    sp(
        "communication",
        Token,
        &["communication"],
        ANY,
        "One of the languages that the practitioner can communicate with",
    ),
    sp(
        "email",
        Token,
        &["telecom"],
        ANY,
        "A value in an email contact",
    ),
    sp(
        "family",
        Str,
        &["name.family"],
        ANY,
        "A portion of the family name",
    ),
    sp(
        "gender",
        Token,
        &["gender"],
        ANY,
        "Gender of the practitioner",
    ),
    sp(
        "given",
        Str,
        &["name.given"],
        ANY,
        "A portion of the given name",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "A practitioner's Identifier",
    ),
    sp(
        "name",
        Str,
        &["name"],
        ANY,
        "A server defined search that may match any of the string fields in the HumanName, including family, give, prefix, suffix, suffix, and/or text",
    ),
    sp(
        "phone",
        Token,
        &["telecom"],
        ANY,
        "A value in a phone contact",
    ),
    sp(
        "telecom",
        Token,
        &["telecom"],
        ANY,
        "The value in any kind of contact",
    ),
];

static ORGANIZATION_PARAMS: &[SearchParamDef] = &[
    sp(
        "active",
        Token,
        &["active"],
        ANY,
        "Is the Organization record active",
    ),
    sp(
        "address",
        Str,
        &["address"],
        ANY,
        "A server defined search that may match any of the string fields in the Address, including line, city, district, state, country, postalCode, and/or text",
    ),
    sp(
        "address-city",
        Str,
        &["address.city"],
        ANY,
        "A city specified in an address",
    ),
    sp(
        "address-country",
        Str,
        &["address.country"],
        ANY,
        "A country specified in an address",
    ),
    sp(
        "address-postalcode",
        Str,
        &["address.postalCode"],
        ANY,
        "A postal code specified in an address",
    ),
    sp(
        "address-state",
        Str,
        &["address.state"],
        ANY,
        "A state specified in an address",
    ),
    sp(
        "address-use",
        Token,
        &["address.use"],
        ANY,
        "A use code specified in an address",
    ),
    sp(
        "endpoint",
        Reference,
        &["endpoint"],
        &["Endpoint"],
        "Technical endpoints providing access to services operated for the organization",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "Any identifier for the organization (not the accreditation issuer's identifier)",
    ),
    sp(
        "name",
        Str,
        &["name", "alias"],
        ANY,
        "A portion of the organization's name or alias",
    ),
    sp(
        "partof",
        Reference,
        &["partOf"],
        &["Organization"],
        "An organization of which this organization forms a part",
    ),
    sp(
        "type",
        Token,
        &["type"],
        ANY,
        "A code for the type of organization",
    ),
];

static CAREPLAN_PARAMS: &[SearchParamDef] = &[
    sp(
        "activity-code",
        Token,
        &["activity.detail.code"],
        ANY,
        "Detail type of activity",
    ),
    sp(
        "activity-date",
        Date,
        &[
            "activity.detail.scheduledTiming",
            "activity.detail.scheduledPeriod",
        ],
        ANY,
        "Specified date occurs within period specified by CarePlan.activity.detail.scheduled[x]",
    ),
    sp(
        "activity-reference",
        Reference,
        &["activity.reference"],
        &[
            "Appointment",
            "MedicationRequest",
            "Task",
            "NutritionOrder",
            "RequestGroup",
            "VisionPrescription",
            "DeviceRequest",
            "ServiceRequest",
            "CommunicationRequest",
        ],
        "Activity details defined in specific resource",
    ),
    sp(
        "based-on",
        Reference,
        &["basedOn"],
        &["CarePlan"],
        "Fulfills CarePlan",
    ),
    sp(
        "care-team",
        Reference,
        &["careTeam"],
        &["CareTeam"],
        "Who's involved in plan?",
    ),
    sp("category", Token, &["category"], ANY, "Type of plan"),
    sp(
        "condition",
        Reference,
        &["addresses"],
        &["Condition"],
        "Health issues this plan addresses",
    ),
    sp("date", Date, &["period"], ANY, "Time period plan covers"),
    sp(
        "encounter",
        Reference,
        &["encounter"],
        &["Encounter"],
        "Encounter created as part of",
    ),
    sp(
        "goal",
        Reference,
        &["goal"],
        &["Goal"],
        "Desired outcome of plan",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "External Ids for this plan",
    ),
    sp(
        "instantiates-canonical",
        Reference,
        &["instantiatesCanonical"],
        &[
            "Questionnaire",
            "Measure",
            "PlanDefinition",
            "OperationDefinition",
            "ActivityDefinition",
        ],
        "Instantiates FHIR protocol or definition",
    ),
    sp(
        "instantiates-uri",
        Uri,
        &["instantiatesUri"],
        ANY,
        "Instantiates external protocol or definition",
    ),
    sp(
        "intent",
        Token,
        &["intent"],
        ANY,
        "proposal | plan | order | option",
    ),
    sp(
        "part-of",
        Reference,
        &["partOf"],
        &["CarePlan"],
        "Part of referenced CarePlan",
    ),
    sp(
        "patient",
        Reference,
        &["subject"],
        PATIENT,
        "Who the care plan is for",
    ),
    sp(
        "performer",
        Reference,
        &["activity.detail.performer"],
        &[
            "Practitioner",
            "Organization",
            "CareTeam",
            "Device",
            "Patient",
            "HealthcareService",
            "PractitionerRole",
            "RelatedPerson",
        ],
        "Matches if the practitioner is listed as a performer in any of the \"simple\" activities.  (For performers of the detailed activities, chain through the activitydetail search parameter.)",
    ),
    sp(
        "replaces",
        Reference,
        &["replaces"],
        &["CarePlan"],
        "CarePlan replaced by this CarePlan",
    ),
    sp(
        "status",
        Token,
        &["status"],
        ANY,
        "draft | active | on-hold | revoked | completed | entered-in-error | unknown",
    ),
    sp(
        "subject",
        Reference,
        &["subject"],
        SUBJECT_GROUP_PATIENT,
        "Who the care plan is for",
    ),
];

static ENCOUNTER_PARAMS: &[SearchParamDef] = &[
    sp(
        "account",
        Reference,
        &["account"],
        &["Account"],
        "The set of accounts that may be used for billing for this Encounter",
    ),
    sp(
        "appointment",
        Reference,
        &["appointment"],
        &["Appointment"],
        "The appointment that scheduled this encounter",
    ),
    sp(
        "based-on",
        Reference,
        &["basedOn"],
        &["ServiceRequest"],
        "The ServiceRequest that initiated this encounter",
    ),
    sp(
        "class",
        Token,
        &["class"],
        ANY,
        "Classification of patient encounter",
    ),
    sp(
        "date",
        Date,
        &["period"],
        ANY,
        "A date within the period the Encounter lasted",
    ),
    sp(
        "diagnosis",
        Reference,
        &["diagnosis.condition"],
        &["Condition", "Procedure"],
        "The diagnosis or procedure relevant to the encounter",
    ),
    sp(
        "episode-of-care",
        Reference,
        &["episodeOfCare"],
        &["EpisodeOfCare"],
        "Episode(s) of care that this encounter should be recorded against",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "Identifier(s) by which this encounter is known",
    ),
    sp(
        "length",
        Quantity,
        &["length"],
        ANY,
        "Length of encounter in days",
    ),
    sp(
        "location",
        Reference,
        &["location.location"],
        &["Location"],
        "Location the encounter takes place",
    ),
    sp(
        "location-period",
        Date,
        &["location.period"],
        ANY,
        "Time period during which the patient was present at the location",
    ),
    sp(
        "part-of",
        Reference,
        &["partOf"],
        &["Encounter"],
        "Another Encounter this encounter is part of",
    ),
    sp(
        "participant",
        Reference,
        &["participant.individual"],
        &["Practitioner", "PractitionerRole", "RelatedPerson"],
        "Persons involved in the encounter other than the patient",
    ),
    sp(
        "participant-type",
        Token,
        &["participant.type"],
        ANY,
        "Role of participant in encounter",
    ),
    sp(
        "patient",
        Reference,
        &["subject"],
        PATIENT,
        "The patient or group present at the encounter",
    ),
    sp(
        "practitioner",
        Reference,
        &["participant.individual"],
        &["Practitioner"],
        "Persons involved in the encounter other than the patient",
    ),
    sp(
        "reason-code",
        Token,
        &["reasonCode"],
        ANY,
        "Coded reason the encounter takes place",
    ),
    sp(
        "reason-reference",
        Reference,
        &["reasonReference"],
        &[
            "Condition",
            "Observation",
            "Procedure",
            "ImmunizationRecommendation",
        ],
        "Reason the encounter takes place (reference)",
    ),
    sp(
        "service-provider",
        Reference,
        &["serviceProvider"],
        &["Organization"],
        "The organization (facility) responsible for this encounter",
    ),
    sp(
        "special-arrangement",
        Token,
        &["hospitalization.specialArrangement"],
        ANY,
        "Wheelchair, translator, stretcher, etc.",
    ),
    sp(
        "status",
        Token,
        &["status"],
        ANY,
        "planned | arrived | triaged | in-progress | onleave | finished | cancelled +",
    ),
    sp(
        "subject",
        Reference,
        &["subject"],
        SUBJECT_GROUP_PATIENT,
        "The patient or group present at the encounter",
    ),
    sp("type", Token, &["type"], ANY, "Specific type of encounter"),
];

static OBSERVATION_PARAMS: &[SearchParamDef] = &[
    sp(
        "based-on",
        Reference,
        &["basedOn"],
        &[
            "CarePlan",
            "MedicationRequest",
            "NutritionOrder",
            "DeviceRequest",
            "ServiceRequest",
            "ImmunizationRecommendation",
        ],
        "Reference to the service request.",
    ),
    sp(
        "category",
        Token,
        &["category"],
        ANY,
        "The classification of the type of observation",
    ),
    sp(
        "code",
        Token,
        &["code"],
        ANY,
        "The code of the observation type",
    ),
    sp(
        "combo-code",
        Token,
        &["code", "component.code"],
        ANY,
        "The code of the observation type or component type",
    ),
    sp(
        "combo-data-absent-reason",
        Token,
        &["dataAbsentReason", "component.dataAbsentReason"],
        ANY,
        "The reason why the expected value in the element Observation.value[x] or Observation.component.value[x] is missing.",
    ),
    sp(
        "combo-value-concept",
        Token,
        &["valueCodeableConcept", "component.valueCodeableConcept"],
        ANY,
        "The value or component value of the observation, if the value is a CodeableConcept",
    ),
    sp(
        "combo-value-quantity",
        Quantity,
        &["valueQuantity", "component.valueQuantity"],
        ANY,
        "The value or component value of the observation, if the value is a Quantity, or a SampledData (just search on the bounds of the values in sampled data)",
    ),
    sp(
        "component-code",
        Token,
        &["component.code"],
        ANY,
        "The component code of the observation type",
    ),
    sp(
        "component-data-absent-reason",
        Token,
        &["component.dataAbsentReason"],
        ANY,
        "The reason why the expected value in the element Observation.component.value[x] is missing.",
    ),
    sp(
        "component-value-concept",
        Token,
        &["component.valueCodeableConcept"],
        ANY,
        "The value of the component observation, if the value is a CodeableConcept",
    ),
    sp(
        "component-value-quantity",
        Quantity,
        &["component.valueQuantity"],
        ANY,
        "The value of the component observation, if the value is a Quantity, or a SampledData (just search on the bounds of the values in sampled data)",
    ),
    sp(
        "data-absent-reason",
        Token,
        &["dataAbsentReason"],
        ANY,
        "The reason why the expected value in the element Observation.value[x] is missing.",
    ),
    sp(
        "date",
        Date,
        &[
            "effectiveDateTime",
            "effectivePeriod",
            "effectiveTiming",
            "effectiveInstant",
        ],
        ANY,
        "Obtained date/time. If the obtained element is a period, a date that falls in the period",
    ),
    sp(
        "derived-from",
        Reference,
        &["derivedFrom"],
        &[
            "Media",
            "Observation",
            "ImagingStudy",
            "MolecularSequence",
            "QuestionnaireResponse",
            "DocumentReference",
        ],
        "Related measurements the observation is made from",
    ),
    sp(
        "device",
        Reference,
        &["device"],
        &["Device", "DeviceMetric"],
        "The Device that generated the observation data.",
    ),
    sp(
        "encounter",
        Reference,
        &["encounter"],
        &["Encounter", "EpisodeOfCare"],
        "Encounter related to the observation",
    ),
    sp(
        "focus",
        Reference,
        &["focus"],
        ANY,
        "The focus of an observation when the focus is not the patient of record.",
    ),
    sp(
        "has-member",
        Reference,
        &["hasMember"],
        &["Observation", "MolecularSequence", "QuestionnaireResponse"],
        "Related resource that belongs to the Observation group",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "The unique id for a particular observation",
    ),
    sp(
        "method",
        Token,
        &["method"],
        ANY,
        "The method used for the observation",
    ),
    sp(
        "part-of",
        Reference,
        &["partOf"],
        &[
            "Immunization",
            "MedicationDispense",
            "MedicationAdministration",
            "Procedure",
            "ImagingStudy",
            "MedicationStatement",
        ],
        "Part of referenced event",
    ),
    sp(
        "patient",
        Reference,
        &["subject"],
        PATIENT,
        "The subject that the observation is about (if patient)",
    ),
    sp(
        "performer",
        Reference,
        &["performer"],
        &[
            "Practitioner",
            "Organization",
            "CareTeam",
            "Patient",
            "PractitionerRole",
            "RelatedPerson",
        ],
        "Who performed the observation",
    ),
    sp(
        "specimen",
        Reference,
        &["specimen"],
        &["Specimen"],
        "Specimen used for this observation",
    ),
    sp(
        "status",
        Token,
        &["status"],
        ANY,
        "The status of the observation",
    ),
    sp(
        "subject",
        Reference,
        &["subject"],
        &["Group", "Device", "Patient", "Location"],
        "The subject that the observation is about",
    ),
    sp(
        "value-concept",
        Token,
        &["valueCodeableConcept"],
        ANY,
        "The value of the observation, if the value is a CodeableConcept",
    ),
    sp(
        "value-date",
        Date,
        &["valueDateTime", "valuePeriod"],
        ANY,
        "The value of the observation, if the value is a date or period of time",
    ),
    sp(
        "value-quantity",
        Quantity,
        &["valueQuantity"],
        ANY,
        "The value of the observation, if the value is a Quantity, or a SampledData (just search on the bounds of the values in sampled data)",
    ),
    sp(
        "value-string",
        Str,
        &["valueString", "valueCodeableConcept.text"],
        ANY,
        "The value of the observation, if the value is a string, and also searches in CodeableConcept.text",
    ),
];

static MEDICATION_ADMINISTRATION_PARAMS: &[SearchParamDef] = &[
    sp(
        "code",
        Token,
        &["medicationCodeableConcept"],
        ANY,
        "Return administrations of this medication code",
    ),
    sp(
        "context",
        Reference,
        &["context"],
        &["EpisodeOfCare", "Encounter"],
        "Return administrations that share this encounter or episode of care",
    ),
    sp(
        "device",
        Reference,
        &["device"],
        &["Device"],
        "Return administrations with this administration device identity",
    ),
    sp(
        "effective-time",
        Date,
        &["effectiveDateTime", "effectivePeriod"],
        ANY,
        "Date administration happened (or did not happen)",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "Return administrations with this external identifier",
    ),
    sp(
        "medication",
        Reference,
        &["medicationReference"],
        &["Medication"],
        "Return administrations of this medication resource",
    ),
    sp(
        "patient",
        Reference,
        &["subject"],
        PATIENT,
        "The identity of a patient to list administrations  for",
    ),
    sp(
        "performer",
        Reference,
        &["performer.actor"],
        &[
            "Practitioner",
            "Device",
            "Patient",
            "PractitionerRole",
            "RelatedPerson",
        ],
        "The identity of the individual who administered the medication",
    ),
    sp(
        "reason-given",
        Token,
        &["reasonCode"],
        ANY,
        "Reasons for administering the medication",
    ),
    sp(
        "reason-not-given",
        Token,
        &["statusReason"],
        ANY,
        "Reasons for not administering the medication",
    ),
    sp(
        "request",
        Reference,
        &["request"],
        &["MedicationRequest"],
        "The identity of a request to list administrations from",
    ),
    sp(
        "status",
        Token,
        &["status"],
        ANY,
        "MedicationAdministration event status (for example one of active/paused/completed/nullified)",
    ),
    sp(
        "subject",
        Reference,
        &["subject"],
        SUBJECT_GROUP_PATIENT,
        "The identity of the individual or group to list administrations for",
    ),
];

/// AllergyIntolerance (https://hl7.org/fhir/R4/allergyintolerance.html#search): pulled from EHRs for the
/// contraindication screen.
static ALLERGY_INTOLERANCE_PARAMS: &[SearchParamDef] = &[
    sp(
        "asserter",
        Reference,
        &["asserter"],
        &[
            "Patient",
            "RelatedPerson",
            "Practitioner",
            "PractitionerRole",
        ],
        "Source of the information about the allergy",
    ),
    sp(
        "category",
        Token,
        &["category"],
        ANY,
        "food | medication | environment | biologic",
    ),
    sp(
        "clinical-status",
        Token,
        &["clinicalStatus"],
        ANY,
        "active | inactive | resolved",
    ),
    sp(
        "code",
        Token,
        &["code", "reaction.substance"],
        ANY,
        "Code that identifies the allergy or intolerance",
    ),
    sp(
        "criticality",
        Token,
        &["criticality"],
        ANY,
        "low | high | unable-to-assess",
    ),
    sp(
        "date",
        Date,
        &["recordedDate"],
        ANY,
        "Date first version of the resource instance was recorded",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "External ids for this item",
    ),
    sp(
        "last-date",
        Date,
        &["lastOccurrence"],
        ANY,
        "Date(/time) of last known occurrence of a reaction",
    ),
    sp(
        "manifestation",
        Token,
        &["reaction.manifestation"],
        ANY,
        "Clinical symptoms/signs associated with the Event",
    ),
    sp(
        "onset",
        Date,
        &["reaction.onset"],
        ANY,
        "Date(/time) when manifestations showed",
    ),
    sp(
        "patient",
        Reference,
        &["patient"],
        PATIENT,
        "Who the sensitivity is for",
    ),
    sp(
        "recorder",
        Reference,
        &["recorder"],
        &[
            "Patient",
            "RelatedPerson",
            "Practitioner",
            "PractitionerRole",
        ],
        "Who recorded the sensitivity",
    ),
    sp(
        "route",
        Token,
        &["reaction.exposureRoute"],
        ANY,
        "How the subject was exposed to the substance",
    ),
    sp(
        "severity",
        Token,
        &["reaction.severity"],
        ANY,
        "mild | moderate | severe (of event as a whole)",
    ),
    sp(
        "type",
        Token,
        &["type"],
        ANY,
        "allergy | intolerance - Underlying mechanism (if known)",
    ),
    sp(
        "verification-status",
        Token,
        &["verificationStatus"],
        ANY,
        "unconfirmed | confirmed | refuted | entered-in-error",
    ),
];

/// MedicationStatement (https://hl7.org/fhir/R4/medicationstatement.html#search): pulled from EHRs for the
/// contraindication screen.
static MEDICATION_STATEMENT_PARAMS: &[SearchParamDef] = &[
    sp(
        "category",
        Token,
        &["category"],
        ANY,
        "Returns statements of this category of medicationstatement",
    ),
    sp(
        "code",
        Token,
        &["medicationCodeableConcept"],
        ANY,
        "Return statements of this medication code",
    ),
    sp(
        "context",
        Reference,
        &["context"],
        &["Encounter", "EpisodeOfCare"],
        "Returns statements for a specific context (episode or episode of Care).",
    ),
    sp(
        "effective",
        Date,
        &["effectiveDateTime", "effectivePeriod"],
        ANY,
        "Date when patient was taking (or not taking) the medication",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "Return statements with this external identifier",
    ),
    sp(
        "medication",
        Reference,
        &["medicationReference"],
        &["Medication"],
        "Return statements of this medication reference",
    ),
    sp(
        "part-of",
        Reference,
        &["partOf"],
        &[
            "MedicationAdministration",
            "MedicationDispense",
            "MedicationStatement",
            "Procedure",
            "Observation",
        ],
        "Returns statements that are part of another event.",
    ),
    sp(
        "patient",
        Reference,
        &["subject"],
        PATIENT,
        "Returns statements for a specific patient.",
    ),
    sp(
        "source",
        Reference,
        &["informationSource"],
        &[
            "Patient",
            "Practitioner",
            "PractitionerRole",
            "RelatedPerson",
            "Organization",
        ],
        "Who or where the information in the statement came from",
    ),
    sp(
        "status",
        Token,
        &["status"],
        ANY,
        "Return statements that match the given status",
    ),
    sp(
        "subject",
        Reference,
        &["subject"],
        &["Patient", "Group"],
        "The identity of a patient, animal or group to list statements for",
    ),
];

static CONDITION_PARAMS: &[SearchParamDef] = &[
    sp(
        "abatement-age",
        Quantity,
        &["abatementAge", "abatementRange"],
        ANY,
        "Abatement as age or age range",
    ),
    sp(
        "abatement-date",
        Date,
        &["abatementDateTime", "abatementPeriod"],
        ANY,
        "Date-related abatements (dateTime and period)",
    ),
    sp(
        "abatement-string",
        Str,
        &["abatementString"],
        ANY,
        "Abatement as a string",
    ),
    sp(
        "asserter",
        Reference,
        &["asserter"],
        &[
            "Practitioner",
            "Patient",
            "PractitionerRole",
            "RelatedPerson",
        ],
        "Person who asserts this condition",
    ),
    sp(
        "body-site",
        Token,
        &["bodySite"],
        ANY,
        "Anatomical location, if relevant",
    ),
    sp(
        "category",
        Token,
        &["category"],
        ANY,
        "The category of the condition",
    ),
    sp(
        "clinical-status",
        Token,
        &["clinicalStatus"],
        ANY,
        "The clinical status of the condition",
    ),
    sp("code", Token, &["code"], ANY, "Code for the condition"),
    sp(
        "encounter",
        Reference,
        &["encounter"],
        &["Encounter"],
        "Encounter created as part of",
    ),
    sp(
        "evidence",
        Token,
        &["evidence.code"],
        ANY,
        "Manifestation/symptom",
    ),
    sp(
        "evidence-detail",
        Reference,
        &["evidence.detail"],
        ANY,
        "Supporting information found elsewhere",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "A unique identifier of the condition record",
    ),
    sp(
        "onset-age",
        Quantity,
        &["onsetAge", "onsetRange"],
        ANY,
        "Onsets as age or age range",
    ),
    sp(
        "onset-date",
        Date,
        &["onsetDateTime", "onsetPeriod"],
        ANY,
        "Date related onsets (dateTime and Period)",
    ),
    sp(
        "onset-info",
        Str,
        &["onsetString"],
        ANY,
        "Onsets as a string",
    ),
    sp(
        "patient",
        Reference,
        &["subject"],
        PATIENT,
        "Who has the condition?",
    ),
    sp(
        "recorded-date",
        Date,
        &["recordedDate"],
        ANY,
        "Date record was first recorded",
    ),
    sp(
        "severity",
        Token,
        &["severity"],
        ANY,
        "The severity of the condition",
    ),
    sp(
        "stage",
        Token,
        &["stage.summary"],
        ANY,
        "Simple summary (disease specific)",
    ),
    sp(
        "subject",
        Reference,
        &["subject"],
        SUBJECT_GROUP_PATIENT,
        "Who has the condition?",
    ),
    sp(
        "verification-status",
        Token,
        &["verificationStatus"],
        ANY,
        "unconfirmed | provisional | differential | confirmed | refuted | entered-in-error",
    ),
];

static GOAL_PARAMS: &[SearchParamDef] = &[
    sp(
        "achievement-status",
        Token,
        &["achievementStatus"],
        ANY,
        "in-progress | improving | worsening | no-change | achieved | sustaining | not-achieved | no-progress | not-attainable",
    ),
    sp(
        "category",
        Token,
        &["category"],
        ANY,
        "E.g. Treatment, dietary, behavioral, etc.",
    ),
    sp(
        "identifier",
        Token,
        &["identifier"],
        ANY,
        "External Ids for this goal",
    ),
    sp(
        "lifecycle-status",
        Token,
        &["lifecycleStatus"],
        ANY,
        "proposed | planned | accepted | active | on-hold | completed | cancelled | entered-in-error | rejected",
    ),
    sp(
        "patient",
        Reference,
        &["subject"],
        PATIENT,
        "Who this goal is intended for",
    ),
    sp(
        "start-date",
        Date,
        &["startDate"],
        ANY,
        "When goal pursuit begins",
    ),
    sp(
        "subject",
        Reference,
        &["subject"],
        &["Group", "Organization", "Patient"],
        "Who this goal is intended for",
    ),
    sp(
        "target-date",
        Date,
        &["target.dueDate"],
        ANY,
        "Reach goal on or before",
    ),
];

static GROUP_PARAMS: &[SearchParamDef] = &[
    sp("actual", Token, &["actual"], ANY, "Descriptive or actual"),
    sp(
        "characteristic",
        Token,
        &["characteristic.code"],
        ANY,
        "Kind of characteristic",
    ),
    sp(
        "code",
        Token,
        &["code"],
        ANY,
        "The kind of resources contained",
    ),
    sp(
        "exclude",
        Token,
        &["characteristic.exclude"],
        ANY,
        "Group includes or excludes",
    ),
    sp("identifier", Token, &["identifier"], ANY, "Unique id"),
    sp(
        "managing-entity",
        Reference,
        &["managingEntity"],
        &[
            "Practitioner",
            "Organization",
            "PractitionerRole",
            "RelatedPerson",
        ],
        "Entity that is the custodian of the Group's definition",
    ),
    sp(
        "member",
        Reference,
        &["member.entity"],
        &[
            "Practitioner",
            "Group",
            "Device",
            "Medication",
            "Patient",
            "Substance",
            "PractitionerRole",
        ],
        "Reference to the group member",
    ),
    sp(
        "type",
        Token,
        &["type"],
        ANY,
        "The type of resources the group contains",
    ),
    sp(
        "value",
        Token,
        &[
            "characteristic.valueCodeableConcept",
            "characteristic.valueBoolean",
        ],
        ANY,
        "Value held by characteristic",
    ),
];

static PROVENANCE_PARAMS: &[SearchParamDef] = &[
    sp(
        "agent",
        Reference,
        &["agent.who"],
        AGENT,
        "Who participated",
    ),
    sp(
        "agent-role",
        Token,
        &["agent.role"],
        ANY,
        "What the agents role was",
    ),
    sp(
        "agent-type",
        Token,
        &["agent.type"],
        ANY,
        "How the agent participated",
    ),
    sp(
        "entity",
        Reference,
        &["entity.what"],
        ANY,
        "Identity of entity",
    ),
    sp(
        "location",
        Reference,
        &["location"],
        &["Location"],
        "Where the activity occurred, if relevant",
    ),
    sp(
        "patient",
        Reference,
        &["target"],
        PATIENT,
        "Target Reference(s) (usually version specific)",
    ),
    sp(
        "recorded",
        Date,
        &["recorded"],
        ANY,
        "When the activity was recorded / updated",
    ),
    sp(
        "signature-type",
        Token,
        &["signature.type"],
        ANY,
        "Indication of the reason the entity signed the object(s)",
    ),
    sp(
        "target",
        Reference,
        &["target"],
        ANY,
        "Target Reference(s) (usually version specific)",
    ),
    sp(
        "when",
        Date,
        &["occurredDateTime"],
        ANY,
        "When the activity occurred",
    ),
];

static AUDIT_EVENT_PARAMS: &[SearchParamDef] = &[
    sp(
        "action",
        Token,
        &["action"],
        ANY,
        "Type of action performed during the event",
    ),
    sp(
        "address",
        Str,
        &["agent.network.address"],
        ANY,
        "Identifier for the network access point of the user device",
    ),
    sp(
        "agent",
        Reference,
        &["agent.who"],
        AGENT,
        "Identifier of who",
    ),
    sp(
        "agent-name",
        Str,
        &["agent.name"],
        ANY,
        "Human friendly name for the agent",
    ),
    sp(
        "agent-role",
        Token,
        &["agent.role"],
        ANY,
        "Agent role in the event",
    ),
    sp(
        "altid",
        Token,
        &["agent.altId"],
        ANY,
        "Alternative User identity",
    ),
    sp(
        "date",
        Date,
        &["recorded"],
        ANY,
        "Time when the event was recorded",
    ),
    sp(
        "entity",
        Reference,
        &["entity.what"],
        ANY,
        "Specific instance of resource",
    ),
    sp(
        "entity-name",
        Str,
        &["entity.name"],
        ANY,
        "Descriptor for entity",
    ),
    sp(
        "entity-role",
        Token,
        &["entity.role"],
        ANY,
        "What role the entity played",
    ),
    sp(
        "entity-type",
        Token,
        &["entity.type"],
        ANY,
        "Type of entity involved",
    ),
    sp(
        "outcome",
        Token,
        &["outcome"],
        ANY,
        "Whether the event succeeded or failed",
    ),
    sp(
        "patient",
        Reference,
        &["agent.who", "entity.what"],
        PATIENT,
        "Identifier of who",
    ),
    sp(
        "policy",
        Uri,
        &["agent.policy"],
        ANY,
        "Policy that authorized event",
    ),
    sp(
        "site",
        Token,
        &["source.site"],
        ANY,
        "Logical source location within the enterprise",
    ),
    sp(
        "source",
        Reference,
        &["source.observer"],
        AGENT,
        "The identity of source detecting the event",
    ),
    sp(
        "subtype",
        Token,
        &["subtype"],
        ANY,
        "More specific type/id for the event",
    ),
    sp("type", Token, &["type"], ANY, "Type/identifier of event"),
];

/// Parameters common to all types (https://hl7.org/fhir/R4/search.html#all): `_id`,
/// `_lastUpdated`, `_tag`, `_security`, `_profile` and `_source`.
pub fn common_params() -> &'static [SearchParamDef] {
    COMMON
}

/// The R4 standard parameters of one supported type, without the common ones; None for a type
/// this server does not support.
pub fn type_params(resource_type: &str) -> Option<&'static [SearchParamDef]> {
    let params = match resource_type {
        "Patient" => PATIENT_PARAMS,
        "Practitioner" => PRACTITIONER_PARAMS,
        "Organization" => ORGANIZATION_PARAMS,
        "CarePlan" => CAREPLAN_PARAMS,
        "Encounter" => ENCOUNTER_PARAMS,
        "Observation" => OBSERVATION_PARAMS,
        "MedicationAdministration" => MEDICATION_ADMINISTRATION_PARAMS,
        "Condition" => CONDITION_PARAMS,
        "Goal" => GOAL_PARAMS,
        "Group" => GROUP_PARAMS,
        "Provenance" => PROVENANCE_PARAMS,
        "AuditEvent" => AUDIT_EVENT_PARAMS,
        "AllergyIntolerance" => ALLERGY_INTOLERANCE_PARAMS,
        "MedicationStatement" => MEDICATION_STATEMENT_PARAMS,
        _ => return None,
    };
    Some(params)
}

/// Looks a parameter up among the type's and the common ones; None for an unsupported type or an
/// unknown name.
pub fn find(resource_type: &str, name: &str) -> Option<&'static SearchParamDef> {
    type_params(resource_type)?
        .iter()
        .chain(COMMON)
        .find(|p| p.name == name)
}

/// Whether `t` is one of [`SUPPORTED_TYPES`] (case-sensitive, as FHIR type names are).
pub fn is_supported_type(t: &str) -> bool {
    SUPPORTED_TYPES.contains(&t)
}

/// The parameters of `resource_type` that place a resource in a patient's compartment, per the R4
/// Patient CompartmentDefinition (https://hl7.org/fhir/R4/compartmentdefinition-patient.html).
///
/// A Patient is also in its own compartment by id, which the caller handles; types that are never
/// in the compartment (Practitioner, Organization) and unsupported types give an empty list.
pub fn patient_compartment_params(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "AuditEvent" => &["patient"],
        "CarePlan" => &["patient", "performer"],
        "Condition" => &["patient", "asserter"],
        "Encounter" => &["patient"],
        "Goal" => &["patient"],
        "Group" => &["member"],
        "MedicationAdministration" => &["patient", "performer", "subject"],
        "Observation" => &["subject", "performer"],
        "Patient" => &["link"],
        "Provenance" => &["patient"],
        "AllergyIntolerance" => &["patient", "recorder", "asserter"],
        "MedicationStatement" => &["subject"],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_defs() -> impl Iterator<Item = (&'static str, &'static SearchParamDef)> {
        SUPPORTED_TYPES.iter().flat_map(|t| {
            type_params(t)
                .unwrap_or_default()
                .iter()
                .chain(common_params())
                .map(move |p| (*t, p))
        })
    }

    #[test]
    fn every_supported_type_has_parameters_and_others_have_none() {
        for t in SUPPORTED_TYPES {
            assert!(is_supported_type(t));
            assert!(type_params(t).is_some_and(|p| !p.is_empty()), "{t}");
        }
        for t in ["Medication", "Bundle", "patient", ""] {
            assert!(!is_supported_type(t));
            assert!(type_params(t).is_none());
            assert!(find(t, "_id").is_none());
        }
    }

    #[test]
    fn parameter_names_are_unique_within_a_type_including_common_ones() {
        for t in SUPPORTED_TYPES {
            let mut names: Vec<_> = type_params(t)
                .unwrap_or_default()
                .iter()
                .chain(common_params())
                .map(|p| p.name)
                .collect();
            let before = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), before, "duplicate parameter on {t}");
        }
    }

    #[test]
    fn every_definition_has_paths_a_description_and_targets_only_when_a_reference() {
        for (t, p) in all_defs() {
            assert!(!p.paths.is_empty(), "{t}.{}", p.name);
            assert!(!p.description.is_empty(), "{t}.{}", p.name);
            assert!(
                p.paths
                    .iter()
                    .all(|path| !path.is_empty() && !path.contains(['[', '(', ' '])),
                "{t}.{} has a non-simple path",
                p.name
            );
            if p.kind != ParamKind::Reference {
                assert!(p.targets.is_empty(), "{t}.{} has targets", p.name);
            }
        }
    }

    #[test]
    fn the_parameters_ehrs_and_apps_rely_on_are_present_for_each_type() {
        let expected: &[(&str, &[&str])] = &[
            (
                "Patient",
                &[
                    "identifier",
                    "name",
                    "family",
                    "given",
                    "birthdate",
                    "gender",
                    "active",
                    "address",
                    "address-city",
                    "address-postalcode",
                    "telecom",
                    "phone",
                    "email",
                    "general-practitioner",
                    "organization",
                    "link",
                    "deceased",
                ],
            ),
            (
                "Practitioner",
                &[
                    "identifier",
                    "name",
                    "family",
                    "given",
                    "active",
                    "telecom",
                    "gender",
                ],
            ),
            (
                "Organization",
                &["identifier", "name", "active", "type", "partof", "address"],
            ),
            (
                "CarePlan",
                &[
                    "identifier",
                    "patient",
                    "subject",
                    "encounter",
                    "category",
                    "status",
                    "date",
                    "based-on",
                    "part-of",
                    "intent",
                    "activity-code",
                    "activity-date",
                    "activity-reference",
                    "goal",
                    "condition",
                    "care-team",
                    "instantiates-canonical",
                    "performer",
                    "replaces",
                ],
            ),
            (
                "Encounter",
                &[
                    "identifier",
                    "patient",
                    "subject",
                    "status",
                    "date",
                    "based-on",
                    "part-of",
                    "class",
                    "type",
                    "participant",
                    "practitioner",
                    "service-provider",
                    "reason-code",
                    "reason-reference",
                    "episode-of-care",
                    "location",
                ],
            ),
            (
                "Observation",
                &[
                    "identifier",
                    "patient",
                    "subject",
                    "encounter",
                    "code",
                    "category",
                    "status",
                    "date",
                    "based-on",
                    "part-of",
                    "focus",
                    "value-quantity",
                    "value-concept",
                    "value-string",
                    "value-date",
                    "derived-from",
                    "has-member",
                    "performer",
                    "component-code",
                    "component-value-quantity",
                    "data-absent-reason",
                    "method",
                ],
            ),
            (
                "MedicationAdministration",
                &[
                    "identifier",
                    "patient",
                    "subject",
                    "code",
                    "status",
                    "medication",
                    "context",
                    "effective-time",
                    "performer",
                    "request",
                    "reason-given",
                    "reason-not-given",
                    "device",
                ],
            ),
            (
                "Condition",
                &[
                    "identifier",
                    "patient",
                    "subject",
                    "encounter",
                    "code",
                    "category",
                    "clinical-status",
                    "verification-status",
                    "onset-date",
                    "abatement-date",
                    "recorded-date",
                    "severity",
                    "body-site",
                    "evidence",
                    "asserter",
                ],
            ),
            (
                "Goal",
                &[
                    "identifier",
                    "patient",
                    "subject",
                    "category",
                    "lifecycle-status",
                    "achievement-status",
                    "target-date",
                    "start-date",
                ],
            ),
            (
                "Group",
                &[
                    "identifier",
                    "code",
                    "type",
                    "actual",
                    "member",
                    "managing-entity",
                    "characteristic",
                ],
            ),
            (
                "Provenance",
                &[
                    "patient",
                    "target",
                    "agent",
                    "agent-type",
                    "agent-role",
                    "entity",
                    "recorded",
                    "when",
                    "location",
                    "signature-type",
                ],
            ),
            (
                "AuditEvent",
                &[
                    "patient",
                    "date",
                    "agent",
                    "altid",
                    "entity",
                    "entity-type",
                    "entity-role",
                    "entity-name",
                    "type",
                    "subtype",
                    "action",
                    "outcome",
                    "source",
                    "site",
                    "address",
                    "policy",
                    "agent-name",
                    "agent-role",
                ],
            ),
        ];
        for (t, names) in expected {
            for name in *names {
                assert!(find(t, name).is_some(), "{t}.{name} is missing");
            }
        }
    }

    #[test]
    fn definitions_follow_the_r4_expressions() {
        let date = find("Encounter", "date");
        assert!(date.is_some_and(|p| p.kind == ParamKind::Date && p.paths == ["period"]));
        let date = find("CarePlan", "date");
        assert!(date.is_some_and(|p| p.paths == ["period"]));
        let date = find("Observation", "date");
        assert!(date.is_some_and(|p| p.paths.contains(&"effectiveDateTime")
            && p.paths.contains(&"effectivePeriod")
            && p.paths.contains(&"effectiveInstant")));
        let patient = find("Observation", "patient");
        assert!(patient.is_some_and(|p| p.paths == ["subject"] && p.targets == ["Patient"]));
        let patient = find("Provenance", "patient");
        assert!(patient.is_some_and(|p| p.paths == ["target"] && p.targets == ["Patient"]));
        let patient = find("AuditEvent", "patient");
        assert!(
            patient.is_some_and(
                |p| p.paths == ["agent.who", "entity.what"] && p.targets == ["Patient"]
            )
        );
        let code = find("MedicationAdministration", "code");
        assert!(code.is_some_and(|p| p.paths == ["medicationCodeableConcept"]));
        let characteristic = find("Group", "characteristic");
        assert!(
            characteristic
                .is_some_and(|p| p.kind == ParamKind::Token && p.paths == ["characteristic.code"])
        );
        let family = find("Patient", "family");
        assert!(family.is_some_and(|p| p.kind == ParamKind::String && p.paths == ["name.family"]));
    }

    #[test]
    fn common_parameters_are_found_on_every_supported_type() {
        for t in SUPPORTED_TYPES {
            let id = find(t, "_id");
            assert!(id.is_some_and(|p| p.kind == ParamKind::Token && p.paths == ["id"]));
            let updated = find(t, "_lastUpdated");
            assert!(updated.is_some_and(|p| p.kind == ParamKind::Date));
            assert!(find(t, "_tag").is_some());
            assert!(find(t, "_security").is_some());
            assert!(find(t, "_profile").is_some_and(|p| p.kind == ParamKind::Uri));
            assert!(find(t, "_source").is_some_and(|p| p.kind == ParamKind::Uri));
            assert!(find(t, "no-such-param").is_none());
        }
    }

    #[test]
    fn kinds_are_named_by_their_search_param_type_code() {
        let codes: Vec<_> = [
            ParamKind::Token,
            ParamKind::String,
            ParamKind::Date,
            ParamKind::Reference,
            ParamKind::Quantity,
            ParamKind::Number,
            ParamKind::Uri,
        ]
        .iter()
        .map(ParamKind::as_str)
        .collect();
        assert_eq!(
            codes,
            [
                "token",
                "string",
                "date",
                "reference",
                "quantity",
                "number",
                "uri"
            ]
        );
    }

    #[test]
    fn compartment_parameters_exist_and_are_references() {
        for t in SUPPORTED_TYPES {
            for name in patient_compartment_params(t) {
                let def = find(t, name);
                assert!(
                    def.is_some_and(|p| p.kind == ParamKind::Reference),
                    "{t}.{name}"
                );
            }
        }
        assert_eq!(
            patient_compartment_params("Observation"),
            ["subject", "performer"]
        );
        assert_eq!(patient_compartment_params("Patient"), ["link"]);
        assert!(patient_compartment_params("Practitioner").is_empty());
        assert!(patient_compartment_params("Organization").is_empty());
        assert!(patient_compartment_params("Unknown").is_empty());
    }
}
