//! The KAP API's operations: each write is one FHIR transaction (the record's resources, the course update and a
//! Provenance) through the FHIR service, so it is validated, authorized, indexed and versioned like any other
//! write; each read is rebuilt from FHIR with the caller's access.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::codes::{self, KAP};
use super::fhirjson::{compare_times, ref_id, str_of};
use super::mapping::{self, Ctx, Gathered};
use super::model::*;
use super::rules::{self, KapSettings};
use crate::auth::access::Access;
use crate::error::{Error, ErrorKind, Result};
use crate::fhir::outcome::Issue;
use crate::service::FhirService;

/// A session-like KAP record kind.
pub trait KapRecord: SessionFields + Serialize + DeserializeOwned + Clone + Send + 'static {
    /// Path segment of the API (`dosing-sessions`).
    const PATH: &'static str;
    /// The session kind code in `kap`.
    const CODE: &'static str;
    /// Prefix of record ids.
    const PREFIX: &'static str;
    fn check(&self, settings: &KapSettings) -> Result<()>;
}

impl KapRecord for Evaluation {
    const PATH: &'static str = "evaluations";
    const CODE: &'static str = "psychiatric-evaluation";
    const PREFIX: &'static str = "ev";
    fn check(&self, _: &KapSettings) -> Result<()> {
        rules::check_evaluation(self)
    }
}

impl KapRecord for Preparation {
    const PATH: &'static str = "preparation-sessions";
    const CODE: &'static str = "preparation-session";
    const PREFIX: &'static str = "prep";
    fn check(&self, _: &KapSettings) -> Result<()> {
        rules::check_preparation(self)
    }
}

impl KapRecord for Dosing {
    const PATH: &'static str = "dosing-sessions";
    const CODE: &'static str = "dosing-session";
    const PREFIX: &'static str = "dose";
    fn check(&self, settings: &KapSettings) -> Result<()> {
        rules::check_dosing(self, settings)
    }
}

impl KapRecord for Integration {
    const PATH: &'static str = "integration-sessions";
    const CODE: &'static str = "integration-session";
    const PREFIX: &'static str = "int";
    fn check(&self, _: &KapSettings) -> Result<()> {
        rules::check_integration(self)
    }
}

impl KapRecord for FollowUp {
    const PATH: &'static str = "follow-ups";
    const CODE: &'static str = "follow-up";
    const PREFIX: &'static str = "fu";
    fn check(&self, _: &KapSettings) -> Result<()> {
        rules::check_follow_up(self)
    }
}

#[derive(Clone)]
pub struct KapService {
    pub fhir: FhirService,
    pub settings: KapSettings,
}

fn new_id(prefix: &str) -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &u[..16])
}

fn unprocessable(path: &str, message: impl Into<String>) -> Error {
    Error::unprocessable(vec![Issue::error("business-rule", message).at(path)])
}

fn json_of(r: &crate::store::StoredResource) -> Result<Value> {
    r.json()
        .ok_or_else(|| Error::internal(anyhow::anyhow!("stored {} is not JSON", r.reference())))
}

/// Whether an error is a lost race on a version check (the course changed under us): worth one more try.
fn is_version_conflict(e: &Error) -> bool {
    matches!(e.kind, ErrorKind::PreconditionFailed | ErrorKind::Conflict)
}

impl KapService {
    pub fn new(fhir: FhirService, settings: KapSettings) -> KapService {
        KapService { fhir, settings }
    }

    // -------------------------------------------------------------------------------------------------------
    // FHIR access helpers

    pub(super) async fn read(&self, access: &Access, res_type: &str, id: &str) -> Result<Value> {
        json_of(&self.fhir.read(access, res_type, id).await?)
    }

    async fn read_versioned(
        &self,
        access: &Access,
        res_type: &str,
        id: &str,
    ) -> Result<(Value, i64)> {
        let r = self.fhir.read(access, res_type, id).await?;
        Ok((json_of(&r)?, r.version))
    }

    pub(super) async fn search(
        &self,
        access: &Access,
        res_type: &str,
        params: &[(&str, &str)],
    ) -> Result<Vec<Value>> {
        let mut p: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        p.push(("_count".into(), crate::fhir::search::MAX_COUNT.to_string()));
        p.push(("_total".into(), "none".into()));
        let q = self.fhir.parse_search(res_type, &p, true)?;
        let page = self.fhir.search(access, &q).await?;
        page.matches.iter().map(json_of).collect()
    }

    async fn transaction(&self, access: &Access, entries: Vec<Value>) -> Result<Value> {
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
        self.fhir.process_bundle(access, bundle).await
    }

    fn provenance_entry(&self, access: &Access, targets: &[String], activity: &str) -> Value {
        let mut who = serde_json::Map::new();
        if let Some(user) = &access.fhir_user
            && let Some(local) = user
                .rsplit_once("/fhir/")
                .map(|(_, l)| l)
                .or(Some(user.as_str()))
            && (local.starts_with("Practitioner/") || local.starts_with("Patient/"))
        {
            who.insert("reference".into(), json!(local));
        }
        let display = if access.subject == access.client_id {
            format!("client {}", access.client_id)
        } else {
            format!("{} (client {})", access.subject, access.client_id)
        };
        who.insert("display".into(), json!(display));
        let recorded = crate::fhir::datetime::format_instant(crate::fhir::datetime::now_micros());
        json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": mapping::provenance(targets, activity, Value::Object(who), &recorded),
            "request": { "method": "POST", "url": "Provenance" },
        })
    }

    fn put_entry(resource: Value, if_match: Option<i64>) -> Option<(String, Value)> {
        let t = resource["resourceType"].as_str()?.to_owned();
        let id = resource["id"].as_str()?.to_owned();
        let url = format!("{t}/{id}");
        let mut request = json!({ "method": "PUT", "url": url.clone() });
        if let Some(v) = if_match {
            request["ifMatch"] = json!(format!("W/\"{v}\""));
        }
        Some((url, json!({ "resource": resource, "request": request })))
    }

    // -------------------------------------------------------------------------------------------------------
    // Patients

    pub async fn enrol(&self, access: &Access, rec: PatientRecord) -> Result<PatientRecord> {
        rules::check_patient(&rec)?;
        let id = uuid::Uuid::new_v4().to_string();
        let resource = mapping::patient_to_fhir(&id, &rec, None);
        self.write_patient(access, resource, "CREATE").await?;
        self.patient(access, &id).await
    }

    async fn write_patient(&self, access: &Access, resource: Value, activity: &str) -> Result<()> {
        let (url, entry) = Self::put_entry(resource, None)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("patient without id")))?;
        let prov = self.provenance_entry(access, &[url], activity);
        self.transaction(access, vec![entry, prov]).await?;
        Ok(())
    }

    /// Links an existing FHIR Patient: adds the KAP identifier and profile, keeping everything else.
    pub async fn link(&self, access: &Access, req: LinkRequest) -> Result<PatientRecord> {
        let existing = match (&req.fhir_id, &req.identifier) {
            (Some(id), None) => self.read(access, "Patient", id).await?,
            (None, Some(ident)) => {
                let token = format!("{}|{}", ident.system, ident.value);
                let found = self
                    .search(access, "Patient", &[("identifier", &token)])
                    .await?;
                match found.len() {
                    0 => {
                        return Err(Error::not_found(format!(
                            "no Patient has the identifier {token}"
                        )));
                    }
                    1 => found.into_iter().next().unwrap_or_default(),
                    n => {
                        return Err(unprocessable(
                            "identifier",
                            format!(
                                "{n} Patients have the identifier {token}; link one by fhir_id"
                            ),
                        ));
                    }
                }
            }
            _ => {
                return Err(unprocessable(
                    "fhir_id",
                    "give exactly one of fhir_id or identifier",
                ));
            }
        };
        let id = str_of(&existing["id"]).unwrap_or_default();
        let mut resource = existing.clone();
        let kap_system = codes::identifier_system("patient");
        let ids = resource
            .as_object_mut()
            .map(|m| m.entry("identifier").or_insert_with(|| json!([])));
        if let Some(Value::Array(ids)) = ids
            && !ids.iter().any(|i| i["system"] == kap_system.as_str())
        {
            ids.insert(0, json!({ "system": kap_system, "value": id }));
        }
        let profile = json!(codes::profile("kap-patient"));
        let meta = resource
            .as_object_mut()
            .map(|m| m.entry("meta").or_insert_with(|| json!({})));
        if let Some(Value::Object(meta)) = meta {
            let profiles = meta.entry("profile").or_insert_with(|| json!([]));
            if let Value::Array(ps) = profiles
                && !ps.contains(&profile)
            {
                ps.push(profile);
            }
            meta.remove("versionId");
            meta.remove("lastUpdated");
        }
        if resource != existing {
            self.write_patient(access, resource, "UPDATE").await?;
        }
        self.patient(access, &id).await
    }

    pub async fn patient(&self, access: &Access, id: &str) -> Result<PatientRecord> {
        Ok(mapping::patient_from_fhir(
            &self.read(access, "Patient", id).await?,
        ))
    }

    pub async fn update_patient(
        &self,
        access: &Access,
        id: &str,
        rec: PatientRecord,
    ) -> Result<PatientRecord> {
        rules::check_patient(&rec)?;
        let mut existing = self.read(access, "Patient", id).await?;
        if let Some(meta) = existing.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
        }
        let resource = mapping::patient_to_fhir(id, &rec, Some(&existing));
        self.write_patient(access, resource, "UPDATE").await?;
        self.patient(access, id).await
    }

    // -------------------------------------------------------------------------------------------------------
    // Courses

    /// The patient's courses, newest first.
    pub(super) async fn courses(&self, access: &Access, patient: &str) -> Result<Vec<Value>> {
        let subject = format!("Patient/{patient}");
        let category = format!("{KAP}|treatment-course");
        let mut plans = self
            .search(
                access,
                "CarePlan",
                &[("subject", &subject), ("category", &category)],
            )
            .await?;
        plans.sort_by(|a, b| {
            let (x, y) = (
                a["period"]["start"].as_str().unwrap_or(""),
                b["period"]["start"].as_str().unwrap_or(""),
            );
            compare_times(y, x).unwrap_or(std::cmp::Ordering::Equal)
        });
        Ok(plans)
    }

    /// The course a session is recorded against: the one named, or the patient's active course. It must belong to
    /// the patient and, for a new session, be active (a correction of an existing record is allowed in any state).
    async fn session_course(
        &self,
        access: &Access,
        patient: &str,
        course_id: Option<&str>,
        require_active: bool,
    ) -> Result<(Value, i64)> {
        let (plan, version) = match course_id {
            Some(id) => match self.read_versioned(access, "CarePlan", id).await {
                Ok(found) => found,
                Err(e) if e.kind == ErrorKind::NotFound || e.kind == ErrorKind::Gone => {
                    return Err(unprocessable(
                        "course_id",
                        format!("course {id} does not exist"),
                    ));
                }
                Err(e) => return Err(e),
            },
            None => {
                let active = self
                    .courses(access, patient)
                    .await?
                    .into_iter()
                    .find(|p| p["status"] == "active");
                let Some(p) = active else {
                    return Err(unprocessable(
                        "course_id",
                        "the patient has no active course: record an evaluation that finds the patient eligible first",
                    ));
                };
                // A search hit carries its version: no second read.
                match p["meta"]["versionId"]
                    .as_str()
                    .and_then(|v| v.parse::<i64>().ok())
                {
                    Some(version) => (p, version),
                    None => {
                        let id = str_of(&p["id"]).unwrap_or_default();
                        self.read_versioned(access, "CarePlan", &id).await?
                    }
                }
            }
        };
        let id = str_of(&plan["id"]).unwrap_or_default();
        if !mapping::is_course(&plan) {
            return Err(unprocessable(
                "course_id",
                format!("CarePlan/{id} is not a KAP treatment course"),
            ));
        }
        if ref_id(&plan["subject"], "Patient") != Some(patient) {
            return Err(unprocessable(
                "course_id",
                format!("course {id} belongs to another patient"),
            ));
        }
        let status = plan["status"].as_str().unwrap_or("unknown");
        if require_active && status != "active" {
            return Err(unprocessable(
                "course_id",
                format!(
                    "course {id} is {status}; sessions are recorded only against an active course"
                ),
            ));
        }
        Ok((plan, version))
    }

    // -------------------------------------------------------------------------------------------------------
    // Records

    async fn gather(&self, access: &Access, enc: Value) -> Result<Gathered> {
        let id = str_of(&enc["id"]).unwrap_or_default();
        let patient = ref_id(&enc["subject"], "Patient").unwrap_or("").to_owned();
        let encounter = format!("Encounter/{id}");
        let observations = self
            .search(access, "Observation", &[("encounter", &encounter)])
            .await?;
        let kind = mapping::encounter_kind(&enc);
        let conditions = if kind == Some("psychiatric-evaluation") {
            self.search(access, "Condition", &[("encounter", &encounter)])
                .await?
        } else {
            Vec::new()
        };
        let administrations = if kind == Some("dosing-session") {
            self.search(
                access,
                "MedicationAdministration",
                &[("context", &encounter)],
            )
            .await?
        } else {
            Vec::new()
        };
        let goals = if matches!(kind, Some("psychiatric-evaluation" | "preparation-session")) {
            let subject = format!("Patient/{patient}");
            self.search(access, "Goal", &[("subject", &subject)])
                .await?
        } else {
            Vec::new()
        };
        let mut withheld = false;
        if kind == Some("integration-session") && !access.psychotherapy {
            let code = format!("{KAP}|integration-note");
            let all = self
                .search(
                    &Access::internal(),
                    "Observation",
                    &[("encounter", &encounter), ("code", &code)],
                )
                .await?;
            withheld = !all.is_empty();
        }
        Ok(Gathered {
            encounter: enc,
            observations,
            conditions,
            administrations,
            goals,
            withheld,
        })
    }

    /// Reads one record of kind `R`, rebuilt from FHIR.
    pub async fn get<R: KapRecord>(&self, access: &Access, id: &str) -> Result<Value> {
        let enc = self.read(access, "Encounter", id).await?;
        if mapping::encounter_kind(&enc) != Some(R::CODE) {
            return Err(Error::not_found(format!(
                "no {} has the id {id}",
                R::PATH.trim_end_matches('s')
            )));
        }
        let g = self.gather(access, enc).await?;
        self.assemble::<R>(access, &g, None).await
    }

    /// Rebuilds a record from its gathered resources. `dosing_sessions` (the patient's dosing Encounters in start
    /// order), when the caller has them, numbers a dosing session without another search.
    async fn assemble<R: KapRecord>(
        &self,
        access: &Access,
        g: &Gathered,
        dosing_sessions: Option<&[Value]>,
    ) -> Result<Value> {
        let h = mapping::header_of(&g.encounter);
        let value = match R::CODE {
            "psychiatric-evaluation" => {
                let plan = match &h.course_id {
                    Some(c) => self.read(access, "CarePlan", c).await.ok(),
                    None => None,
                };
                serde_json::to_value(mapping::evaluation_from_fhir(g, plan.as_ref()))
            }
            "preparation-session" => serde_json::to_value(mapping::preparation_from_fhir(g)),
            "dosing-session" => {
                let mut d = mapping::dosing_from_fhir(g);
                d.session_number = match dosing_sessions {
                    Some(sessions) => number_among(sessions, &h),
                    None => self.session_number(access, &h).await?,
                };
                serde_json::to_value(d)
            }
            "integration-session" => serde_json::to_value(mapping::integration_from_fhir(g)),
            _ => {
                let baseline = match &h.course_id {
                    Some(c) => self.baseline_phq9(access, c).await?.map(|(v, _)| v),
                    None => None,
                };
                serde_json::to_value(mapping::follow_up_from_fhir(g, baseline))
            }
        };
        value.map_err(Error::internal)
    }

    /// 1-based position of a dosing session among its course's dosing sessions, by start time.
    async fn session_number(&self, access: &Access, h: &mapping::HeaderOut) -> Result<Option<u32>> {
        let (Some(patient), Some(course)) = (&h.patient_id, &h.course_id) else {
            return Ok(None);
        };
        let sessions = self
            .course_sessions(access, patient, course, "dosing-session")
            .await?;
        Ok(number_among(&sessions, h))
    }

    /// The Encounters of a course of one kind (or all kinds with `None`), by start time.
    pub(super) async fn course_sessions(
        &self,
        access: &Access,
        patient: &str,
        course: &str,
        kind: &str,
    ) -> Result<Vec<Value>> {
        let subject = format!("Patient/{patient}");
        let ty = format!("{KAP}|{kind}");
        let mut params = vec![("subject", subject.as_str())];
        if !kind.is_empty() {
            params.push(("type", ty.as_str()));
        }
        let mut encs: Vec<Value> = self
            .search(access, "Encounter", &params)
            .await?
            .into_iter()
            .filter(|e| mapping::header_of(e).course_id.as_deref() == Some(course))
            .collect();
        sort_by_start(&mut encs);
        Ok(encs)
    }

    /// The baseline PHQ-9 of a course (value, Observation id): the PHQ-9 of its evaluation.
    pub(super) async fn baseline_phq9(
        &self,
        access: &Access,
        course: &str,
    ) -> Result<Option<(i64, String)>> {
        let plan = match self.read(access, "CarePlan", course).await {
            Ok(p) => p,
            Err(_) => return Ok(None),
        };
        let Some(ev) = mapping::activity_sessions(&plan, "psychiatric-evaluation")
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let encounter = format!("Encounter/{ev}");
        let code = format!("{}|44261-6", codes::LOINC);
        let found = self
            .search(
                access,
                "Observation",
                &[("encounter", &encounter), ("code", &code)],
            )
            .await?;
        Ok(found
            .iter()
            .find_map(|o| Some((o["valueInteger"].as_i64()?, str_of(&o["id"])?))))
    }

    /// Lists a patient's records of kind `R`, oldest first.
    pub async fn list<R: KapRecord>(&self, access: &Access, patient: &str) -> Result<Vec<Value>> {
        self.read(access, "Patient", patient).await?;
        let subject = format!("Patient/{patient}");
        let ty = format!("{KAP}|{}", R::CODE);
        let mut encs = self
            .search(access, "Encounter", &[("subject", &subject), ("type", &ty)])
            .await?;
        sort_by_start(&mut encs);
        let mut out = Vec::with_capacity(encs.len());
        for enc in &encs {
            let g = self.gather(access, enc.clone()).await?;
            out.push(self.assemble::<R>(access, &g, Some(&encs)).await?);
        }
        Ok(out)
    }

    /// Creates a record for `patient`. Retries once when the course changed concurrently.
    pub async fn create<R: KapRecord>(
        &self,
        access: &Access,
        patient: &str,
        rec: R,
    ) -> Result<Value> {
        rec.check(&self.settings)?;
        self.read(access, "Patient", patient)
            .await
            .map_err(|e| match e.kind {
                ErrorKind::NotFound | ErrorKind::Gone => {
                    Error::not_found(format!("patient {patient} is not known"))
                }
                _ => e,
            })?;
        let id = new_id(R::PREFIX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.write::<R>(access, patient, &id, &rec, None).await {
                Err(e) if attempt < 3 && is_version_conflict(&e) => continue,
                Err(e) => return Err(e),
                Ok(()) => return self.get::<R>(access, &id).await,
            }
        }
    }

    /// Replaces record `id` of kind `R`.
    pub async fn update<R: KapRecord>(&self, access: &Access, id: &str, rec: R) -> Result<Value> {
        let enc = self.read(access, "Encounter", id).await?;
        if mapping::encounter_kind(&enc) != Some(R::CODE) {
            return Err(Error::not_found(format!(
                "no {} has the id {id}",
                R::PATH.trim_end_matches('s')
            )));
        }
        rec.check(&self.settings)?;
        let h = mapping::header_of(&enc);
        let patient = h.patient_id.clone().unwrap_or_default();
        if let Some(c) = rec.fields().course_id
            && h.course_id.as_deref() != Some(c)
        {
            return Err(unprocessable(
                "course_id",
                "a record cannot move to another course",
            ));
        }
        let old = self.gather(access, enc).await?;
        let old_rec: R = serde_json::from_value(self.assemble::<R>(access, &old, None).await?)
            .map_err(Error::internal)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .write::<R>(
                    access,
                    &patient,
                    id,
                    &rec,
                    Some((&old_rec, h.course_id.as_deref())),
                )
                .await
            {
                Err(e) if attempt < 3 && is_version_conflict(&e) => continue,
                Err(e) => return Err(e),
                Ok(()) => return self.get::<R>(access, id).await,
            }
        }
    }

    /// Builds and runs the transaction of one record write.
    async fn write<R: KapRecord>(
        &self,
        access: &Access,
        patient: &str,
        id: &str,
        rec: &R,
        old: Option<(&R, Option<&str>)>,
    ) -> Result<()> {
        let value = serde_json::to_value(rec).map_err(Error::internal)?;
        let mut entries = Vec::new();
        let mut targets = Vec::new();
        let resources: Vec<Value>;
        let is_update = old.is_some();
        if R::CODE == "psychiatric-evaluation" {
            let ev: Evaluation = serde_json::from_value(value).map_err(Error::internal)?;
            let (course_id, existing) = match old.and_then(|(_, c)| c) {
                Some(c) => {
                    let (plan, v) = self.read_versioned(access, "CarePlan", c).await?;
                    (c.to_owned(), Some((plan, v)))
                }
                None => {
                    if let Some(open) = self
                        .courses(access, patient)
                        .await?
                        .into_iter()
                        .find(|p| p["status"] == "active" || p["status"] == "draft")
                    {
                        return Err(unprocessable(
                            "patient",
                            format!(
                                "the patient already has an open course ({}); complete or revoke it before a new evaluation",
                                open["id"].as_str().unwrap_or("")
                            ),
                        ));
                    }
                    (new_id("crs"), None)
                }
            };
            let ctx = Ctx {
                record_id: id,
                patient_id: patient,
                course_id: &course_id,
            };
            resources = mapping::evaluation_to_fhir(&ctx, &ev);
            let plan =
                mapping::course_plan(&ctx, &ev, &resources, existing.as_ref().map(|(p, _)| p));
            let (url, entry) = Self::put_entry(plan, existing.map(|(_, v)| v))
                .ok_or_else(|| Error::internal(anyhow::anyhow!("course without id")))?;
            entries.push(entry);
            targets.push(url);
        } else {
            let (mut plan, version) = self
                .session_course(
                    access,
                    patient,
                    rec.fields().course_id.or(old.and_then(|(_, c)| c)),
                    old.is_none(),
                )
                .await?;
            let course_id = str_of(&plan["id"]).unwrap_or_default();
            let ctx = Ctx {
                record_id: id,
                patient_id: patient,
                course_id: &course_id,
            };
            resources = match R::CODE {
                "preparation-session" => mapping::preparation_to_fhir(
                    &ctx,
                    &serde_json::from_value(value).map_err(Error::internal)?,
                ),
                "dosing-session" => mapping::dosing_to_fhir(
                    &ctx,
                    &serde_json::from_value(value).map_err(Error::internal)?,
                ),
                "integration-session" => {
                    let s: Integration = serde_json::from_value(value).map_err(Error::internal)?;
                    self.check_related(access, patient, &s).await?;
                    mapping::integration_to_fhir(&ctx, &s)
                }
                _ => {
                    let f: FollowUp = serde_json::from_value(value).map_err(Error::internal)?;
                    let baseline = self.baseline_phq9(access, &course_id).await?;
                    let start_date: String = f.start.chars().take(10).collect();
                    match f.course_decision.as_deref() {
                        Some("complete") => {
                            plan["status"] = json!("completed");
                            plan["period"]["end"] = json!(start_date);
                        }
                        Some("discontinue") => {
                            plan["status"] = json!("revoked");
                            plan["period"]["end"] = json!(start_date);
                        }
                        _ => {}
                    }
                    mapping::follow_up_to_fhir(
                        &ctx,
                        &f,
                        baseline.as_ref().map(|(v, id)| (*v, id.as_str())),
                    )
                }
            };
            mapping::record_session(&mut plan, R::CODE, id);
            if let Some(meta) = plan.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove("versionId");
                meta.remove("lastUpdated");
            }
            let (url, entry) = Self::put_entry(plan, Some(version))
                .ok_or_else(|| Error::internal(anyhow::anyhow!("course without id")))?;
            entries.push(entry);
            targets.push(url);
        }
        // On update, resources of the old record that the new one no longer has are deleted.
        if let Some((old_rec, Some(course))) = old {
            let ctx = Ctx {
                record_id: id,
                patient_id: patient,
                course_id: course,
            };
            let old_value = serde_json::to_value(old_rec).map_err(Error::internal)?;
            let old_resources = self.to_fhir_value::<R>(&ctx, old_value, access).await?;
            for r in old_resources {
                let (Some(t), Some(rid)) = (r["resourceType"].as_str(), r["id"].as_str()) else {
                    continue;
                };
                if !resources
                    .iter()
                    .any(|n| n["resourceType"] == t && n["id"] == rid)
                {
                    entries.push(
                        json!({ "request": { "method": "DELETE", "url": format!("{t}/{rid}") } }),
                    );
                }
            }
        }
        for r in resources {
            if let Some((url, entry)) = Self::put_entry(r, None) {
                targets.push(url);
                entries.push(entry);
            }
        }
        entries.push(self.provenance_entry(
            access,
            &targets,
            if is_update { "UPDATE" } else { "CREATE" },
        ));
        self.transaction(access, entries).await?;
        Ok(())
    }

    /// The resources an already stored record maps to (to find what an update removes).
    async fn to_fhir_value<R: KapRecord>(
        &self,
        ctx: &Ctx<'_>,
        value: Value,
        access: &Access,
    ) -> Result<Vec<Value>> {
        Ok(match R::CODE {
            "psychiatric-evaluation" => mapping::evaluation_to_fhir(ctx, &de(value.clone())?),
            "preparation-session" => mapping::preparation_to_fhir(ctx, &de(value.clone())?),
            "dosing-session" => mapping::dosing_to_fhir(ctx, &de(value.clone())?),
            "integration-session" => mapping::integration_to_fhir(ctx, &de(value.clone())?),
            _ => {
                let baseline = self.baseline_phq9(access, ctx.course_id).await?;
                mapping::follow_up_to_fhir(
                    ctx,
                    &de(value.clone())?,
                    baseline.as_ref().map(|(v, id)| (*v, id.as_str())),
                )
            }
        })
    }

    /// The dosing sessions an integration session names must be this patient's dosing sessions.
    async fn check_related(&self, access: &Access, patient: &str, s: &Integration) -> Result<()> {
        let mut issues = rules::Issues::default();
        for (i, id) in s.related_dosing_sessions.iter().enumerate() {
            let path = format!("related_dosing_sessions[{i}]");
            match self.read(access, "Encounter", id).await {
                Ok(enc) => {
                    if mapping::encounter_kind(&enc) != Some("dosing-session") {
                        issues.add(&path, format!("{id} is not a dosing session"));
                    } else if ref_id(&enc["subject"], "Patient") != Some(patient) {
                        issues.add(
                            &path,
                            format!("dosing session {id} belongs to another patient"),
                        );
                    }
                }
                Err(_) => issues.add(&path, format!("dosing session {id} does not exist")),
            }
        }
        issues.into_result()
    }
}

fn de<T: DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(Error::internal)
}

/// Sorts Encounters by the start of their period.
fn sort_by_start(encounters: &mut [Value]) {
    encounters.sort_by(|a, b| {
        compare_times(
            a["period"]["start"].as_str().unwrap_or(""),
            b["period"]["start"].as_str().unwrap_or(""),
        )
        .unwrap_or(std::cmp::Ordering::Equal)
    });
}

/// 1-based position of the session `h` among the dosing sessions (in start order) of its course.
fn number_among(dosing_sessions: &[Value], h: &mapping::HeaderOut) -> Option<u32> {
    let (Some(course), Some(id)) = (&h.course_id, &h.id) else {
        return None;
    };
    dosing_sessions
        .iter()
        .filter(|e| mapping::header_of(e).course_id.as_deref() == Some(course.as_str()))
        .position(|e| e["id"] == id.as_str())
        .and_then(|i| u32::try_from(i + 1).ok())
}
