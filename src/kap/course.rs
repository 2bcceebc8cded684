//! `GET /kap/v1/patients/{id}/course`: the whole course as one document, rebuilt from FHIR — plan status and
//! progress, sessions in order, score trends with change from baseline, dose history with the cumulative dose,
//! adverse events and the latest treatment response.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::codes::{self, KAP};
use super::fhirjson::{
    as_f64, compare_times, decimal, effective, has_code, kap_code, number_of, ref_id, str_of,
};
use super::mapping::{self, Gathered};
use super::service::KapService;
use crate::auth::access::Access;
use crate::error::{Error, Result};

impl KapService {
    pub async fn course_view(
        &self,
        access: &Access,
        patient: &str,
        course_id: Option<&str>,
    ) -> Result<Value> {
        self.read(access, "Patient", patient).await?;
        let plan = match course_id {
            Some(id) => {
                let plan = self.read(access, "CarePlan", id).await?;
                if ref_id(&plan["subject"], "Patient") != Some(patient)
                    || !mapping::is_course(&plan)
                {
                    return Err(Error::not_found(format!(
                        "patient {patient} has no course {id}"
                    )));
                }
                plan
            }
            None => {
                let courses = self.courses(access, patient).await?;
                let open = courses
                    .iter()
                    .find(|p| p["status"] == "active" || p["status"] == "draft")
                    .cloned();
                match open.or_else(|| courses.into_iter().next()) {
                    Some(p) => p,
                    None => {
                        return Err(Error::not_found(format!(
                            "patient {patient} has no KAP course"
                        )));
                    }
                }
            }
        };
        let course = str_of(&plan["id"]).unwrap_or_default();
        let encounters = self.course_sessions(access, patient, &course, "").await?;
        let ids: Vec<String> = encounters.iter().filter_map(|e| str_of(&e["id"])).collect();
        let subject = format!("Patient/{patient}");
        let in_course = |r: &Value, field: &str| {
            ref_id(&r[field], "Encounter").is_some_and(|e| ids.iter().any(|i| i == e))
        };
        let observations: Vec<Value> = self
            .search(access, "Observation", &[("subject", &subject)])
            .await?
            .into_iter()
            .filter(|o| in_course(o, "encounter"))
            .collect();
        let administrations: Vec<Value> = self
            .search(access, "MedicationAdministration", &[("subject", &subject)])
            .await?
            .into_iter()
            .filter(|m| in_course(m, "context"))
            .collect();

        let kind_of = |id: &str| -> &'static str {
            encounters
                .iter()
                .find(|e| e["id"] == id)
                .and_then(mapping::encounter_kind)
                .and_then(codes::session_kind)
                .unwrap_or("")
        };
        let sessions: Vec<Value> = encounters
            .iter()
            .map(|e| {
                json!({
                    "kind": mapping::encounter_kind(e).and_then(codes::session_kind),
                    "id": e["id"],
                    "start": e["period"]["start"],
                    "end": e["period"]["end"],
                    "status": e["status"],
                })
            })
            .collect();

        // Plan progress per session kind.
        let planned = mapping::planned_of(&plan);
        let mut progress = serde_json::Map::new();
        for (kind, code) in codes::SESSION_KINDS {
            let done = encounters
                .iter()
                .filter(|e| mapping::encounter_kind(e) == Some(code))
                .count();
            let planned_n = match *kind {
                "evaluation" => 1,
                "preparation" => planned.preparation,
                "dosing" => planned.dosing,
                "integration" => planned.integration,
                _ => planned.follow_up,
            };
            let status = plan["activity"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| has_code(&a["detail"]["code"], KAP, code))
                .and_then(|a| a["detail"]["status"].as_str())
                .unwrap_or("not-started");
            progress.insert(
                (*kind).to_owned(),
                json!({ "planned": planned_n, "recorded": done, "status": status }),
            );
        }

        // Eligibility, from the evaluation.
        let eligibility = observations
            .iter()
            .find(|o| has_code(&o["code"], KAP, "eligibility"))
            .map(|o| {
                json!({
                    "decision": kap_code(&o["valueCodeableConcept"]),
                    "reason": o["note"][0]["text"],
                })
            });

        // Score trends: every numeric score, in time order, with change from the first (baseline) value.
        let mut trends: BTreeMap<&str, Vec<(String, i64, String)>> = BTreeMap::new();
        for o in &observations {
            let Some(inst) = crate::kap::fhirjson::first_code(&o["code"])
                .and_then(|(s, c)| codes::instrument_by_code(s, c))
            else {
                continue;
            };
            let Some(v) = o["valueInteger"].as_i64() else {
                continue;
            };
            let session = ref_id(&o["encounter"], "Encounter")
                .unwrap_or("")
                .to_owned();
            trends.entry(inst.name).or_default().push((
                effective(o).unwrap_or_default(),
                v,
                session,
            ));
        }
        let mut score_trend = Vec::new();
        for (instrument, mut points) in trends {
            points.sort_by(|a, b| compare_times(&a.0, &b.0).unwrap_or(std::cmp::Ordering::Equal));
            let Some(baseline) = points.first().map(|p| p.1) else {
                continue;
            };
            let latest = points.last().map(|p| p.1).unwrap_or(baseline);
            let pct = |v: i64| -> Value {
                if baseline == 0 {
                    Value::Null
                } else {
                    Value::Number(decimal((v - baseline) as f64 / baseline as f64 * 100.0, 1))
                }
            };
            score_trend.push(json!({
                "instrument": instrument,
                "baseline": baseline,
                "latest": latest,
                "change_from_baseline": latest - baseline,
                "percent_change": pct(latest),
                "points": points.iter().map(|(t, v, s)| json!({
                    "time": t,
                    "value": v,
                    "session_id": s,
                    "session_kind": kind_of(s),
                    "change_from_baseline": v - baseline,
                    "percent_change": pct(*v),
                })).collect::<Vec<_>>(),
            }));
        }

        // Dose history, per dosing session in order, with the running total.
        let dosing: Vec<&Value> = encounters
            .iter()
            .filter(|e| mapping::encounter_kind(e) == Some("dosing-session"))
            .collect();
        let mut cumulative = 0.0_f64;
        let mut doses = Vec::new();
        for (n, enc) in dosing.iter().enumerate() {
            let eid = enc["id"].as_str().unwrap_or("");
            let g = Gathered {
                encounter: (*enc).clone(),
                observations: Vec::new(),
                administrations: administrations
                    .iter()
                    .filter(|m| ref_id(&m["context"], "Encounter") == Some(eid))
                    .cloned()
                    .collect(),
                ..Gathered::default()
            };
            let d = mapping::dosing_from_fhir(&g);
            let mg = d.dose.mg.clone();
            cumulative += mg.as_ref().and_then(as_f64).unwrap_or(0.0);
            doses.push(json!({
                "session_id": eid,
                "session_number": n + 1,
                "start": enc["period"]["start"],
                "medication": d.medication,
                "route": d.route,
                "mg": mg,
                "mg_per_kg": d.dose.mg_per_kg,
                "body_weight_kg": d.dose.body_weight_kg,
                "cumulative_mg": decimal(cumulative, 3),
            }));
        }

        // Adverse events, in time order.
        let mut adverse: Vec<(String, Value)> = observations
            .iter()
            .filter(|o| has_code(&o["code"], KAP, "adverse-event"))
            .map(|o| {
                let mut ev = json!({
                    "session_id": ref_id(&o["encounter"], "Encounter"),
                    "kind": kap_code(&o["valueCodeableConcept"]),
                    "time": effective(o),
                });
                for (code, c) in crate::kap::fhirjson::components(o) {
                    match code {
                        "adverse-event-severity" => {
                            ev["severity"] = json!(
                                crate::kap::fhirjson::first_code(&c["valueCodeableConcept"])
                                    .map(|(_, c)| c)
                            );
                        }
                        "action-taken" => ev["action_taken"] = c["valueString"].clone(),
                        _ => {}
                    }
                }
                if let Some(t) = o["valueCodeableConcept"]["text"].as_str() {
                    ev["description"] = json!(t);
                }
                (effective(o).unwrap_or_default(), ev)
            })
            .collect();
        adverse.sort_by(|a, b| compare_times(&a.0, &b.0).unwrap_or(std::cmp::Ordering::Equal));

        // The latest treatment response the gateway computed at a follow-up.
        let mut responses: Vec<&Value> = observations
            .iter()
            .filter(|o| has_code(&o["code"], KAP, "treatment-response"))
            .collect();
        responses.sort_by(|a, b| {
            compare_times(
                &effective(a).unwrap_or_default(),
                &effective(b).unwrap_or_default(),
            )
            .unwrap_or(std::cmp::Ordering::Equal)
        });
        let latest_response = responses.last().map(|o| {
            let mut r =
                json!({ "time": effective(o), "session_id": ref_id(&o["encounter"], "Encounter") });
            for (code, c) in crate::kap::fhirjson::components(o) {
                match code {
                    "response" => r["response"] = c["valueBoolean"].clone(),
                    "remission" => r["remission"] = c["valueBoolean"].clone(),
                    "percent-change" => {
                        r["percent_change"] = json!(number_of(&c["valueQuantity"]["value"]))
                    }
                    _ => {}
                }
            }
            r
        });

        let mut doc = json!({
            "course_id": course,
            "patient_id": patient,
            "status": plan["status"],
            "start": plan["period"]["start"],
            "planned_sessions": planned,
            "progress": progress,
            "sessions": sessions,
            "score_trend": score_trend,
            "doses": doses,
            "cumulative_mg": decimal(cumulative, 3),
            "adverse_events": adverse.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        });
        if let Some(end) = plan["period"]["end"].as_str() {
            doc["end"] = json!(end);
        }
        if let Some(e) = eligibility {
            doc["eligibility"] = e;
        }
        if let Some(s) = plan["description"].as_str() {
            doc["summary"] = json!(s);
        }
        if let Some(r) = latest_response {
            doc["latest_response"] = r;
        }
        Ok(doc)
    }
}
