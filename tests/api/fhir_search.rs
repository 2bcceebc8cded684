//! Search (https://hl7.org/fhir/R4/search.html): parameter types, prefixes and modifiers, chains, includes, sorting,
//! paging, result shaping, error handling and the POST form.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, into_resp, spawn_app};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// Merges the members of `extra` into `base`.
fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn patient(id: &str, extra: Value) -> Value {
    with(json!({"resourceType": "Patient", "id": id}), extra)
}

fn observation(id: &str, extra: Value) -> Value {
    with(
        json!({
            "resourceType": "Observation",
            "id": id,
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}
        }),
        extra,
    )
}

fn encounter(id: &str, patient_id: &str) -> Value {
    json!({
        "resourceType": "Encounter",
        "id": id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{patient_id}")}
    })
}

fn subject(reference: &str) -> Value {
    json!({"subject": {"reference": reference}})
}

/// Creates a resource under the id it carries (update as create).
async fn put(app: &TestApp, resource: Value) -> String {
    let t = resource["resourceType"].as_str().unwrap().to_owned();
    let id = resource["id"].as_str().unwrap().to_owned();
    let r = app.put(&format!("/fhir/{t}/{id}"), &resource).await;
    assert_eq!(r.status, 201, "PUT {t}/{id}: {}", r.text);
    id
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Asserts that `query` matches exactly `expected`, in any order.
async fn assert_found(app: &TestApp, query: &str, expected: &[&str]) {
    let got = sorted(app.search_ids(query).await);
    let want = sorted(expected.iter().map(|s| (*s).to_owned()).collect());
    assert_eq!(got, want, "{query}");
}

/// `Type/id` of the `include` entries of a searchset, sorted.
fn included(r: &Resp) -> Vec<String> {
    sorted(
        r.body["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|e| e["search"]["mode"] == "include")
                    .map(|e| {
                        format!(
                            "{}/{}",
                            e["resource"]["resourceType"].as_str().unwrap(),
                            e["resource"]["id"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn entry_count(r: &Resp) -> usize {
    r.body["entry"].as_array().map_or(0, Vec::len)
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn get_ok(app: &TestApp, path: &str) -> Resp {
    let r = app.get(path).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text);
    r
}

/// Follows `next` links from `first`, returning every page.
async fn all_pages(app: &TestApp, first: Resp) -> Vec<Resp> {
    let mut pages = vec![first];
    while let Some(next) = pages.last().and_then(|p| p.link("next")) {
        let page = app.get_url(&next).await;
        assert_eq!(page.status, 200, "{next}: {}", page.text);
        pages.push(page);
        assert!(pages.len() < 20, "paging does not end");
    }
    pages
}

#[tokio::test]
async fn token_search_distinguishes_system_and_code_forms() {
    let app = spawn_app().await;
    put(
        &app,
        observation(
            "o1",
            json!({
                "code": {"coding": [{"system": LOINC, "code": "1234-5"}]},
                "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
                "identifier": [{"system": "urn:obs", "value": "A1"}]
            }),
        ),
    )
    .await;
    put(
        &app,
        observation(
            "o2",
            json!({
                "status": "preliminary",
                "code": {"coding": [{"code": "1234-5"}]},
                "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
                "identifier": [{"system": "urn:other", "value": "A2"}]
            }),
        ),
    )
    .await;
    put(
        &app,
        observation(
            "o3",
            json!({"code": {"coding": [{"system": "http://snomed.info/sct", "code": "1234-5"}]}}),
        ),
    )
    .await;
    put(
        &app,
        observation(
            "o4",
            json!({"status": "amended", "code": {"coding": [{"system": LOINC, "code": "9999-9"}]}}),
        ),
    )
    .await;

    assert_found(&app, "Observation?code=http://loinc.org|1234-5", &["o1"]).await;
    assert_found(&app, "Observation?code=1234-5", &["o1", "o2", "o3"]).await;
    assert_found(&app, "Observation?code=|1234-5", &["o2"]).await;
    assert_found(&app, "Observation?code=http://loinc.org|", &["o1", "o4"]).await;
    assert_found(&app, "Observation?code=http://loinc.org|0000-0", &[]).await;
    assert_found(
        &app,
        "Observation?code:not=http://loinc.org|1234-5",
        &["o2", "o3", "o4"],
    )
    .await;
    assert_found(&app, "Observation?code:not=1234-5", &["o4"]).await;

    assert_found(&app, "Observation?identifier=urn:obs|A1", &["o1"]).await;
    assert_found(&app, "Observation?identifier=A2", &["o2"]).await;
    assert_found(&app, "Observation?identifier=urn:other|A1", &[]).await;

    assert_found(&app, "Observation?status=final", &["o1", "o3"]).await;
    assert_found(&app, "Observation?status:not=final", &["o2", "o4"]).await;
    assert_found(
        &app,
        &format!("Observation?category={CATEGORY}|vital-signs"),
        &["o1"],
    )
    .await;
    assert_found(&app, "Observation?category=laboratory", &["o2"]).await;
    // o3 and o4 have no category at all, so they are "not vital-signs" too.
    assert_found(
        &app,
        "Observation?category:not=vital-signs",
        &["o2", "o3", "o4"],
    )
    .await;

    assert_found(&app, "Observation?_id=o1,o3", &["o1", "o3"]).await;
    assert_found(&app, "Observation?_id=nope", &[]).await;
    assert_found(&app, "Observation?_id:not=o1", &["o2", "o3", "o4"]).await;
}

#[tokio::test]
async fn patient_gender_is_a_token_and_commas_or_its_values() {
    let app = spawn_app().await;
    for (id, gender) in [
        ("m", "male"),
        ("f", "female"),
        ("o", "other"),
        ("u", "unknown"),
    ] {
        put(&app, patient(id, json!({"gender": gender}))).await;
    }
    put(&app, patient("none", json!({"active": true}))).await;
    assert_found(&app, "Patient?gender=male", &["m"]).await;
    assert_found(&app, "Patient?gender=male,female", &["m", "f"]).await;
    assert_found(&app, "Patient?gender:not=male,female", &["o", "u", "none"]).await;
    assert_found(&app, "Patient?gender=Male", &[]).await;
}

#[tokio::test]
async fn observation_date_prefixes_follow_r4_range_semantics() {
    let app = spawn_app().await;
    put(
        &app,
        observation("d1", json!({"effectiveDateTime": "2024-05-06T10:00:00Z"})),
    )
    .await;
    put(
        &app,
        observation("d2", json!({"effectiveDateTime": "2024-05-07"})),
    )
    .await;
    put(
        &app,
        observation(
            "d3",
            json!({"effectivePeriod": {"start": "2024-04-20", "end": "2024-05-10"}}),
        ),
    )
    .await;
    put(
        &app,
        observation("d4", json!({"effectiveDateTime": "2021-03-01T08:00:00Z"})),
    )
    .await;
    put(&app, observation("d5", json!({}))).await;

    // eq: the search range contains the whole value.
    assert_found(&app, "Observation?date=2024-05-06", &["d1"]).await;
    assert_found(&app, "Observation?date=eq2024-05", &["d1", "d2"]).await;
    assert_found(&app, "Observation?date=2024", &["d1", "d2", "d3"]).await;
    assert_found(&app, "Observation?date=2024-05-06T10:00:00Z", &["d1"]).await;
    assert_found(
        &app,
        "Observation?date=2024-05-06T12:00:00%2B02:00",
        &["d1"],
    )
    .await;
    assert_found(&app, "Observation?date=2024-05-06T10:00:01Z", &[]).await;
    // ne: the value is not wholly inside the search range; resources without a date never match.
    assert_found(&app, "Observation?date=ne2024-05", &["d3", "d4"]).await;
    // gt/lt: part of the value lies beyond the search range; a value inside that day is not after it.
    assert_found(&app, "Observation?date=gt2024-05-06", &["d2", "d3"]).await;
    assert_found(&app, "Observation?date=lt2024-05-06", &["d3", "d4"]).await;
    assert_found(&app, "Observation?date=ge2024-05-06", &["d1", "d2", "d3"]).await;
    assert_found(&app, "Observation?date=le2024-05-06", &["d1", "d3", "d4"]).await;
    // sa/eb: the whole value lies after/before the search range; the period straddling 2024-05-01 is neither.
    assert_found(&app, "Observation?date=sa2024-05-01", &["d1", "d2"]).await;
    assert_found(&app, "Observation?date=eb2024-05-01", &["d4"]).await;
    assert_found(&app, "Observation?date=sa2024-04-01", &["d1", "d2", "d3"]).await;
    assert_found(
        &app,
        "Observation?date=eb2024-06",
        &["d1", "d2", "d3", "d4"],
    )
    .await;
    // ap: within 10 % of the distance from now, at least a day, either side.
    assert_found(&app, "Observation?date=ap2024-05-08", &["d1", "d2", "d3"]).await;
    assert_found(&app, "Observation?date=ap2021-03-01", &["d4"]).await;
}

#[tokio::test]
async fn birthdate_prefixes_compare_partial_dates_as_ranges() {
    let app = spawn_app().await;
    put(&app, patient("b1", json!({"birthDate": "1980-05-01"}))).await;
    put(&app, patient("b2", json!({"birthDate": "1980"}))).await;
    put(&app, patient("b3", json!({"birthDate": "1981-01-15"}))).await;
    put(&app, patient("b4", json!({"birthDate": "1979-12-31"}))).await;
    put(&app, patient("b5", json!({"gender": "male"}))).await;

    assert_found(&app, "Patient?birthdate=1980", &["b1", "b2"]).await;
    assert_found(&app, "Patient?birthdate=1980-05", &["b1"]).await;
    assert_found(&app, "Patient?birthdate=eq1980-05-01", &["b1"]).await;
    assert_found(&app, "Patient?birthdate=ne1980", &["b3", "b4"]).await;
    assert_found(&app, "Patient?birthdate=gt1980-05-01", &["b2", "b3"]).await;
    assert_found(&app, "Patient?birthdate=lt1980-05-01", &["b2", "b4"]).await;
    assert_found(&app, "Patient?birthdate=ge1980", &["b1", "b2", "b3"]).await;
    assert_found(&app, "Patient?birthdate=le1980", &["b1", "b2", "b4"]).await;
    assert_found(&app, "Patient?birthdate=sa1980", &["b3"]).await;
    assert_found(&app, "Patient?birthdate=eb1980", &["b4"]).await;
    assert_found(
        &app,
        "Patient?birthdate=ap1980-05-01",
        &["b1", "b2", "b3", "b4"],
    )
    .await;
    assert_found(&app, "Patient?birthdate=ap1900", &[]).await;
}

#[tokio::test]
async fn last_updated_compares_with_the_instant_a_version_was_written() {
    let app = spawn_app().await;
    let first = app
        .put(
            "/fhir/Patient/early",
            &patient("early", json!({"active": true})),
        )
        .await;
    assert_eq!(first.status, 201);
    let stamp = first.body["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    put(&app, patient("late", json!({"active": true}))).await;

    assert_found(&app, &format!("Patient?_lastUpdated=gt{stamp}"), &["late"]).await;
    assert_found(&app, &format!("Patient?_lastUpdated=le{stamp}"), &["early"]).await;
    assert_found(&app, &format!("Patient?_lastUpdated={stamp}"), &["early"]).await;
    assert_found(
        &app,
        "Patient?_lastUpdated=gt2000-01-01",
        &["early", "late"],
    )
    .await;
    assert_found(&app, "Patient?_lastUpdated=lt2000-01-01", &[]).await;
}

#[tokio::test]
async fn string_search_is_a_case_and_accent_insensitive_prefix_with_exact_and_contains() {
    let app = spawn_app().await;
    let named = |family: &str, given: &[&str], city: &str| json!({"name": [{"family": family, "given": given}], "address": [{"city": city}]});
    put(
        &app,
        patient("s1", named("Müller", &["Hans", "Peter"], "Zürich")),
    )
    .await;
    put(&app, patient("s2", named("Mullins", &["Anna"], "Bern"))).await;
    put(&app, patient("s3", named("Schmüller", &["Eva"], "Basel"))).await;
    put(
        &app,
        patient("s4", json!({"name": [{"text": "Dr. Ann Lee", "family": "Lee", "given": ["Ann"], "prefix": ["Dr."]}]})),
    )
    .await;

    assert_found(&app, "Patient?family=muller", &["s1"]).await;
    assert_found(
        &app,
        &format!("Patient?family={}", encode("MÜL")),
        &["s1", "s2"],
    )
    .await;
    assert_found(&app, "Patient?family=ller", &[]).await;
    assert_found(
        &app,
        &format!("Patient?family:exact={}", encode("Müller")),
        &["s1"],
    )
    .await;
    assert_found(
        &app,
        &format!("Patient?family:exact={}", encode("müller")),
        &[],
    )
    .await;
    assert_found(&app, "Patient?family:exact=Mull", &[]).await;
    assert_found(&app, "Patient?family:exact=Muller", &[]).await;
    assert_found(&app, "Patient?family:contains=ULLE", &["s1", "s3"]).await;
    assert_found(&app, "Patient?given=pet", &["s1"]).await;
    assert_found(&app, "Patient?given=an", &["s2", "s4"]).await;
    assert_found(&app, "Patient?given:contains=v", &["s3"]).await;
    assert_found(&app, "Patient?name=hans", &["s1"]).await;
    assert_found(&app, "Patient?name=lee", &["s4"]).await;
    assert_found(&app, "Patient?name=dr", &["s4"]).await;
    assert_found(&app, "Patient?name=mull", &["s1", "s2"]).await;
    assert_found(&app, "Patient?address-city=zur", &["s1"]).await;
    assert_found(
        &app,
        &format!("Patient?address-city={}", encode("zürich")),
        &["s1"],
    )
    .await;
    assert_found(&app, "Patient?address-city=bern,basel", &["s2", "s3"]).await;
    assert_found(&app, "Patient?address-city:exact=Zurich", &[]).await;
}

#[tokio::test]
async fn missing_true_and_false_split_resources_by_whether_they_have_a_value() {
    let app = spawn_app().await;
    put(
        &app,
        patient(
            "with",
            json!({"birthDate": "1990-01-01", "gender": "female"}),
        ),
    )
    .await;
    put(&app, patient("without", json!({"gender": "male"}))).await;
    put(&app, patient("bare", json!({"active": false}))).await;
    assert_found(&app, "Patient?birthdate:missing=true", &["without", "bare"]).await;
    assert_found(&app, "Patient?birthdate:missing=false", &["with"]).await;
    assert_found(&app, "Patient?gender:missing=true", &["bare"]).await;
    assert_found(
        &app,
        "Patient?gender:missing=false&birthdate:missing=true",
        &["without"],
    )
    .await;
    // Every resource has an id and a lastUpdated.
    assert_found(
        &app,
        "Patient?_id:missing=false",
        &["with", "without", "bare"],
    )
    .await;
    assert_found(&app, "Patient?_lastUpdated:missing=true", &[]).await;

    put(&app, observation("subj", subject("Patient/with"))).await;
    put(&app, observation("nosubj", json!({}))).await;
    assert_found(&app, "Observation?subject:missing=true", &["nosubj"]).await;
    assert_found(&app, "Observation?subject:missing=false", &["subj"]).await;

    let bad = app.get("/fhir/Patient?gender:missing=maybe").await;
    assert_eq!(bad.status, 400, "{}", bad.text);
}

#[tokio::test]
async fn reference_search_accepts_typed_bare_absolute_and_type_modified_forms() {
    let app = spawn_app().await;
    put(&app, patient("p1", json!({}))).await;
    put(&app, patient("p2", json!({}))).await;
    put(
        &app,
        json!({"resourceType": "Group", "id": "p1", "type": "person", "actual": true}),
    )
    .await;
    put(&app, encounter("e1", "p1")).await;
    put(
        &app,
        observation(
            "r1",
            json!({
                "subject": {"reference": "Patient/p1"},
                "encounter": {"reference": "Encounter/e1"},
                "basedOn": [{"reference": "CarePlan/cp1"}],
                "partOf": [{"reference": "Procedure/pr1"}],
                "focus": [{"reference": "Condition/c1"}]
            }),
        ),
    )
    .await;
    put(
        &app,
        observation("r2", subject(&format!("{}/Patient/p1", app.base))),
    )
    .await;
    put(&app, observation("r3", subject("Patient/p2"))).await;
    put(&app, observation("r4", subject("Group/p1"))).await;

    assert_found(&app, "Observation?subject=Patient/p1", &["r1", "r2"]).await;
    assert_found(&app, "Observation?subject=p1", &["r1", "r2", "r4"]).await;
    assert_found(&app, "Observation?subject:Patient=p1", &["r1", "r2"]).await;
    assert_found(&app, "Observation?subject:Group=p1", &["r4"]).await;
    assert_found(&app, "Observation?patient=p1", &["r1", "r2"]).await;
    assert_found(&app, "Observation?patient=Patient/p2", &["r3"]).await;
    assert_found(
        &app,
        &format!("Observation?subject={}/Patient/p1", app.base),
        &["r1", "r2"],
    )
    .await;
    assert_found(
        &app,
        "Observation?subject=http://elsewhere.example/fhir/Patient/p9",
        &[],
    )
    .await;
    assert_found(
        &app,
        "Observation?subject=Patient/p1,Patient/p2",
        &["r1", "r2", "r3"],
    )
    .await;
    assert_found(&app, "Observation?subject=Patient/p3", &[]).await;

    assert_found(&app, "Observation?encounter=Encounter/e1", &["r1"]).await;
    assert_found(&app, "Observation?encounter=e1", &["r1"]).await;
    assert_found(&app, "Observation?based-on=CarePlan/cp1", &["r1"]).await;
    assert_found(&app, "Observation?part-of=Procedure/pr1", &["r1"]).await;
    assert_found(&app, "Observation?focus=Condition/c1", &["r1"]).await;
    assert_found(&app, "Observation?focus=c1", &["r1"]).await;
    assert_found(&app, "Encounter?subject=Patient/p1", &["e1"]).await;
    assert_found(&app, "Encounter?patient=p2", &[]).await;
}

#[tokio::test]
async fn quantity_search_uses_implicit_precision_prefixes_and_units() {
    let app = spawn_app().await;
    let quantity = |id: &str, value: &str, code: &str, unit: &str| -> Value {
        let q: Value = serde_json::from_str(&format!(
            r#"{{"valueQuantity": {{"value": {value}, "unit": "{unit}", "system": "{UCUM}", "code": "{code}"}}}}"#
        ))
        .unwrap();
        observation(id, q)
    };
    put(&app, quantity("q1", "5.40", "kg", "kg")).await;
    put(&app, quantity("q2", "5.449", "kg", "kg")).await;
    put(&app, quantity("q3", "80.5", "kg", "kg")).await;
    put(&app, quantity("q4", "80.5", "[lb_av]", "lb")).await;
    put(&app, quantity("q5", "100", "kg", "kg")).await;
    put(
        &app,
        observation("q6", json!({"valueString": "not measured"})),
    )
    .await;

    assert_found(&app, "Observation?value-quantity=5.4", &["q1", "q2"]).await;
    assert_found(&app, "Observation?value-quantity=5.40", &["q1"]).await;
    assert_found(&app, "Observation?value-quantity=eq5.449", &["q2"]).await;
    assert_found(
        &app,
        "Observation?value-quantity=ne5.4",
        &["q3", "q4", "q5"],
    )
    .await;
    assert_found(
        &app,
        "Observation?value-quantity=gt5",
        &["q1", "q2", "q3", "q4", "q5"],
    )
    .await;
    assert_found(&app, "Observation?value-quantity=gt80.5", &["q5"]).await;
    assert_found(&app, "Observation?value-quantity=lt80.5", &["q1", "q2"]).await;
    assert_found(
        &app,
        "Observation?value-quantity=le80.5|http://unitsofmeasure.org|kg",
        &["q1", "q2", "q3"],
    )
    .await;
    assert_found(
        &app,
        "Observation?value-quantity=ge80.5|http://unitsofmeasure.org|[lb_av]",
        &["q4"],
    )
    .await;
    assert_found(&app, "Observation?value-quantity=80.5||lb", &["q4"]).await;
    assert_found(&app, "Observation?value-quantity=80.5||kg", &["q3"]).await;
    assert_found(&app, "Observation?value-quantity=ap100", &["q5"]).await;
    assert_found(&app, "Observation?value-quantity=ap85", &["q3", "q4"]).await;
    assert_found(
        &app,
        "Observation?value-quantity=ap85|http://unitsofmeasure.org|kg",
        &["q3"],
    )
    .await;
}

#[tokio::test]
async fn repeated_parameters_are_anded_and_comma_values_ored() {
    let app = spawn_app().await;
    put(
        &app,
        observation(
            "dec",
            json!({"effectiveDateTime": "2023-12-31T23:59:59Z", "status": "final"}),
        ),
    )
    .await;
    put(
        &app,
        observation(
            "jan",
            json!({"effectiveDateTime": "2024-01-15", "status": "final"}),
        ),
    )
    .await;
    put(
        &app,
        observation(
            "jan2",
            json!({"effectiveDateTime": "2024-01-31T23:00:00Z", "status": "amended"}),
        ),
    )
    .await;
    put(
        &app,
        observation(
            "feb",
            json!({"effectiveDateTime": "2024-02-01T00:00:00Z", "status": "final"}),
        ),
    )
    .await;

    assert_found(
        &app,
        "Observation?date=ge2024-01-01&date=lt2024-02-01",
        &["jan", "jan2"],
    )
    .await;
    assert_found(
        &app,
        "Observation?date=ge2024-01-01&date=lt2024-02-01&status=final",
        &["jan"],
    )
    .await;
    assert_found(
        &app,
        "Observation?date=ge2024-01-01&date=lt2024-02-01&status=final,amended",
        &["jan", "jan2"],
    )
    .await;
    assert_found(&app, "Observation?date=2023,2024-02", &["dec", "feb"]).await;
    assert_found(&app, "Observation?status=final&status=amended", &[]).await;
}

#[tokio::test]
async fn one_level_chains_search_the_referenced_resource() {
    let app = spawn_app().await;
    let person = |id: &str, mrn: &str, family: &str| {
        patient(
            id,
            json!({"identifier": [{"system": "urn:mrn", "value": mrn}], "name": [{"family": family}]}),
        )
    };
    put(&app, person("c1", "1", "Smith")).await;
    put(&app, person("c2", "2", "Smithers")).await;
    put(&app, person("c3", "3", "Jones")).await;
    put(
        &app,
        json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true, "identifier": [{"system": "urn:grp", "value": "1"}]}),
    )
    .await;
    put(&app, observation("x1", subject("Patient/c1"))).await;
    put(&app, observation("x2", subject("Patient/c2"))).await;
    put(&app, observation("x3", subject("Patient/c3"))).await;
    put(&app, observation("x4", subject("Group/g1"))).await;

    assert_found(
        &app,
        "Observation?subject:Patient.identifier=urn:mrn|1",
        &["x1"],
    )
    .await;
    assert_found(
        &app,
        "Observation?subject:Patient.identifier=urn:mrn|1,urn:mrn|3",
        &["x1", "x3"],
    )
    .await;
    assert_found(&app, "Observation?subject.family=smith", &["x1", "x2"]).await;
    assert_found(&app, "Observation?subject.family:exact=Smith", &["x1"]).await;
    assert_found(&app, "Observation?patient.identifier=3", &["x3"]).await;
    assert_found(
        &app,
        "Observation?subject:Group.identifier=urn:grp|1",
        &["x4"],
    )
    .await;
    assert_found(&app, "Observation?subject.identifier=1", &["x1", "x4"]).await;
    assert_found(
        &app,
        "Observation?subject.family=smith&subject.identifier=urn:mrn|2",
        &["x2"],
    )
    .await;

    // A deleted target no longer satisfies the chain.
    assert_eq!(app.delete("/fhir/Patient/c2").await.status, 204);
    assert_found(&app, "Observation?subject.family=smith", &["x1"]).await;
}

#[tokio::test]
async fn include_and_revinclude_add_referenced_resources_outside_the_total() {
    let app = spawn_app().await;
    put(&app, patient("ip1", json!({}))).await;
    put(&app, patient("ip2", json!({}))).await;
    put(
        &app,
        json!({"resourceType": "Group", "id": "ig1", "type": "person", "actual": true}),
    )
    .await;
    put(&app, encounter("ie1", "ip2")).await;
    put(&app, observation("io1", json!({"subject": {"reference": "Patient/ip1"}, "encounter": {"reference": "Encounter/ie1"}})))
        .await;
    put(&app, observation("io2", subject("Patient/ip1"))).await;
    put(&app, observation("io3", subject("Patient/ip2"))).await;
    put(&app, observation("io4", subject("Group/ig1"))).await;
    put(
        &app,
        observation("io5", subject(&format!("{}/Patient/ip2", app.base))),
    )
    .await;

    let r = get_ok(
        &app,
        "/fhir/Observation?_id=io1,io2&_include=Observation:subject",
    )
    .await;
    assert_eq!(sorted(r.match_ids()), ["io1", "io2"]);
    assert_eq!(included(&r), ["Patient/ip1"]);
    assert_eq!(r.body["total"], 2);
    assert_eq!(entry_count(&r), 3);

    let r = get_ok(
        &app,
        "/fhir/Observation?_id=io1,io4&_include=Observation:subject",
    )
    .await;
    assert_eq!(included(&r), ["Group/ig1", "Patient/ip1"]);
    let r = get_ok(
        &app,
        "/fhir/Observation?_id=io1,io4&_include=Observation:subject:Patient",
    )
    .await;
    assert_eq!(included(&r), ["Patient/ip1"]);
    assert_eq!(r.body["total"], 2);

    let r = get_ok(
        &app,
        "/fhir/Patient?_id=ip1&_revinclude=Observation:subject",
    )
    .await;
    assert_eq!(r.match_ids(), ["ip1"]);
    assert_eq!(included(&r), ["Observation/io1", "Observation/io2"]);
    // A reference written as an absolute URL on this server is followed both ways.
    let r = get_ok(
        &app,
        "/fhir/Patient?_id=ip2&_revinclude=Observation:subject",
    )
    .await;
    assert_eq!(included(&r), ["Observation/io3", "Observation/io5"]);
    let r = get_ok(
        &app,
        "/fhir/Observation?_id=io5&_include=Observation:subject",
    )
    .await;
    assert_eq!(included(&r), ["Patient/ip2"]);
    assert_eq!(r.body["total"], 1);

    // Observation → Encounter, then (iterating over what was included) Encounter → Patient.
    let r = get_ok(&app, "/fhir/Observation?_id=io1&_include=Observation:encounter&_include:iterate=Encounter:subject").await;
    assert_eq!(r.match_ids(), ["io1"]);
    assert_eq!(included(&r), ["Encounter/ie1", "Patient/ip2"]);
    assert_eq!(r.body["total"], 1);
    // Without :iterate the Encounter's subject is not followed.
    let r = get_ok(
        &app,
        "/fhir/Observation?_id=io1&_include=Observation:encounter&_include=Encounter:subject",
    )
    .await;
    assert_eq!(included(&r), ["Encounter/ie1"]);
}

#[tokio::test]
async fn sort_orders_by_several_keys_with_descending_and_missing_values_last() {
    let app = spawn_app().await;
    put(
        &app,
        observation("s1", json!({"effectiveDateTime": "2024-01-01"})),
    )
    .await;
    put(
        &app,
        observation("s3", json!({"effectiveDateTime": "2024-03-01"})),
    )
    .await;
    put(
        &app,
        observation("s2", json!({"effectiveDateTime": "2024-03-01"})),
    )
    .await;
    put(&app, observation("s4", json!({}))).await;
    put(
        &app,
        observation("s5", json!({"effectiveDateTime": "2024-02-01"})),
    )
    .await;

    assert_eq!(
        app.search_ids("Observation?_sort=-date,_id").await,
        ["s2", "s3", "s5", "s1", "s4"]
    );
    assert_eq!(
        app.search_ids("Observation?_sort=date,-_id").await,
        ["s1", "s5", "s3", "s2", "s4"]
    );
    assert_eq!(
        app.search_ids("Observation?_sort=-_id").await,
        ["s5", "s4", "s3", "s2", "s1"]
    );

    let name = |family: Option<&str>, given: Option<&str>| {
        let mut n = json!({});
        if let Some(f) = family {
            n["family"] = json!(f);
        }
        if let Some(g) = given {
            n["given"] = json!([g]);
        }
        json!({"name": [n]})
    };
    put(&app, patient("n1", name(Some("Brown"), Some("Zoe")))).await;
    put(&app, patient("n2", name(Some("Adams"), Some("Mia")))).await;
    put(&app, patient("n3", name(Some("brown"), Some("Anna")))).await;
    put(&app, patient("n4", json!({"gender": "other"}))).await;
    put(&app, patient("n5", name(Some("Clark"), None))).await;
    put(&app, patient("n6", name(Some("Adams"), Some("Ben")))).await;

    assert_eq!(
        app.search_ids("Patient?_sort=family,given").await,
        ["n6", "n2", "n3", "n1", "n5", "n4"]
    );
    assert_eq!(
        app.search_ids("Patient?_sort=-family,given").await,
        ["n5", "n3", "n1", "n6", "n2", "n4"]
    );
    assert_eq!(
        app.search_ids("Patient?_sort=given,_id").await,
        ["n3", "n6", "n2", "n1", "n4", "n5"]
    );
    assert_eq!(
        app.search_ids("Patient?_sort=-given,_id").await,
        ["n1", "n2", "n6", "n3", "n4", "n5"]
    );
}

/// 25 patients whose family names sort in a different order from their ids.
async fn twenty_five_patients(app: &TestApp) -> Vec<String> {
    let mut by_family = Vec::new();
    for i in 0..25 {
        let id = format!("pg{i:02}");
        let family = format!("Fam{:02}", (i * 7) % 25);
        put(app, patient(&id, json!({"name": [{"family": family}]}))).await;
        by_family.push((family, id));
    }
    by_family.sort();
    by_family.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn count_pages_through_every_match_once_in_sort_order_and_previous_goes_back() {
    let app = spawn_app().await;
    let expected = twenty_five_patients(&app).await;

    let first = get_ok(&app, "/fhir/Patient?_sort=family&_count=10").await;
    assert!(first.link("previous").is_none());
    let pages = all_pages(&app, first).await;
    let sizes: Vec<usize> = pages.iter().map(|p| p.match_ids().len()).collect();
    assert_eq!(sizes, [10, 10, 5]);
    for p in &pages {
        assert_eq!(p.body["total"], 25);
        // Paging links keep the search parameters.
        let next_or_self = p.link("next").unwrap_or_else(|| p.link("self").unwrap());
        assert!(
            next_or_self.contains("_sort=family") && next_or_self.contains("_count=10"),
            "{next_or_self}"
        );
    }
    let seen: Vec<String> = pages.iter().flat_map(Resp::match_ids).collect();
    assert_eq!(seen, expected);

    // previous from page 2 gives page 1 again, which has no previous page of its own.
    let back = app
        .get_url(&pages[1].link("previous").expect("previous link on page 2"))
        .await;
    assert_eq!(back.status, 200, "{}", back.text);
    assert_eq!(back.match_ids(), pages[0].match_ids());
    assert!(back.link("previous").is_none());
    let forward = app
        .get_url(&back.link("next").expect("next link after going back"))
        .await;
    assert_eq!(forward.match_ids(), pages[1].match_ids());
    // previous from the last page gives page 2.
    let back = app.get_url(&pages[2].link("previous").unwrap()).await;
    assert_eq!(back.match_ids(), pages[1].match_ids());

    // The default order pages just as well; a last page that is exactly full has no next link.
    let pages = all_pages(&app, get_ok(&app, "/fhir/Patient?_count=5").await).await;
    assert_eq!(pages.len(), 5);
    assert!(pages.iter().all(|p| p.match_ids().len() == 5));
    let seen: Vec<String> = pages.iter().flat_map(Resp::match_ids).collect();
    assert_eq!(sorted(seen), sorted(expected.clone()));

    // Descending on several keys.
    let pages = all_pages(
        &app,
        get_ok(&app, "/fhir/Patient?_sort=-family,_id&_count=7").await,
    )
    .await;
    let seen: Vec<String> = pages.iter().flat_map(Resp::match_ids).collect();
    assert_eq!(seen, expected.iter().rev().cloned().collect::<Vec<_>>());
}

#[tokio::test]
async fn resources_created_while_paging_cause_no_duplicates_and_hide_no_existing_rows() {
    let app = spawn_app().await;
    let expected = twenty_five_patients(&app).await;

    for query in [
        "/fhir/Patient?_sort=family&_count=10",
        "/fhir/Patient?_count=10",
    ] {
        let page1 = get_ok(&app, query).await;
        let mut seen = page1.match_ids();
        assert_eq!(seen.len(), 10);
        // Sorts before everything, inside page 1, inside the unseen pages and after everything.
        let tag = if query.contains("_sort") { "a" } else { "b" };
        for (id, family) in [
            ("Aaa", "Aaa"),
            ("Fam05x", "Fam05x"),
            ("Fam15x", "Fam15x"),
            ("Zed", "Zed"),
        ] {
            put(
                &app,
                patient(
                    &format!("{id}-{tag}"),
                    json!({"name": [{"family": family}]}),
                ),
            )
            .await;
        }
        let mut next = page1.link("next");
        while let Some(url) = next {
            let page = app.get_url(&url).await;
            assert_eq!(page.status, 200, "{}", page.text);
            seen.extend(page.match_ids());
            next = page.link("next");
        }
        let unique: std::collections::HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "duplicates in {seen:?}");
        for id in &expected {
            assert!(seen.contains(id), "{query}: {id} was skipped");
        }
        if query.contains("_sort") {
            // Rows created after the cursor's position are found, those before it are not.
            let original: Vec<String> = seen
                .iter()
                .filter(|id| id.starts_with("pg"))
                .cloned()
                .collect();
            assert_eq!(original, expected);
            assert!(
                seen.contains(&"Fam15x-a".to_owned()) && seen.contains(&"Zed-a".to_owned()),
                "{seen:?}"
            );
            assert!(
                !seen.contains(&"Aaa-a".to_owned()) && !seen.contains(&"Fam05x-a".to_owned()),
                "{seen:?}"
            );
        } else {
            // In the default order new resources come last, so all four are found.
            assert_eq!(seen.len(), 25 + 4 + 4, "{seen:?}");
            assert!(seen[..10].iter().all(|id| id.starts_with("pg")));
        }
    }
}

#[tokio::test]
async fn summary_count_total_and_elements_shape_the_bundle() {
    let app = spawn_app().await;
    for i in 0..3 {
        put(
            &app,
            observation(
                &format!("e{i}"),
                json!({"subject": {"reference": "Patient/x"}, "valueString": "v"}),
            ),
        )
        .await;
    }

    let r = get_ok(&app, "/fhir/Observation?_summary=count").await;
    assert_eq!(r.body["type"], "searchset");
    assert_eq!(r.body["total"], 3);
    assert!(r.body.get("entry").is_none(), "{}", r.text);

    let r = get_ok(&app, "/fhir/Observation?_total=none").await;
    assert!(r.body.get("total").is_none(), "{}", r.text);
    assert_eq!(r.match_ids().len(), 3);

    let r = get_ok(&app, "/fhir/Observation?_total=accurate&_count=1").await;
    assert_eq!(r.body["total"], 3);
    assert_eq!(r.match_ids().len(), 1);

    let r = get_ok(&app, "/fhir/Observation?_elements=id,status&_id=e1").await;
    assert_eq!(r.match_ids(), ["e1"]);
    let resource = &r.body["entry"][0]["resource"];
    assert_eq!(resource["status"], "final");
    assert_eq!(resource["resourceType"], "Observation");
    for gone in ["code", "subject", "valueString"] {
        assert!(resource.get(gone).is_none(), "{gone} kept: {resource}");
    }
    let tags = resource["meta"]["tag"].as_array().unwrap();
    assert!(tags.iter().any(|t| t["code"] == "SUBSETTED"), "{resource}");
    // The stored resource is untouched.
    let read = app.get("/fhir/Observation/e1").await;
    assert_eq!(read.body["valueString"], "v");
    assert!(read.body["meta"].get("tag").is_none());
}

#[tokio::test]
async fn unknown_parameters_are_ignored_unless_handling_is_strict_and_bad_values_are_refused() {
    let app = spawn_app().await;
    put(
        &app,
        patient("m", json!({"gender": "male", "birthDate": "1980-01-01"})),
    )
    .await;
    put(&app, patient("f", json!({"gender": "female"}))).await;

    let r = get_ok(&app, "/fhir/Patient?foo=bar&gender=male").await;
    assert_eq!(r.match_ids(), ["m"]);
    assert_eq!(r.body["total"], 1);
    let self_link = r.link("self").unwrap();
    assert!(self_link.contains("gender=male"), "{self_link}");
    assert!(!self_link.contains("foo"), "{self_link}");
    // The ignored parameter is reported in an outcome entry.
    let outcome = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("outcome entry");
    assert!(outcome["resource"].to_string().contains("foo"), "{outcome}");

    let strict = app
        .send(
            Method::GET,
            "/fhir/Patient?foo=bar&gender=male",
            None,
            &[("prefer", "handling=strict")],
        )
        .await;
    assert_eq!(strict.status, 400, "{}", strict.text);
    assert_eq!(strict.body["resourceType"], "OperationOutcome");
    assert!(
        strict.diagnostics().contains("foo"),
        "{}",
        strict.diagnostics()
    );
    let lenient = app
        .send(
            Method::GET,
            "/fhir/Patient?foo=bar&gender=male",
            None,
            &[("prefer", "handling=lenient")],
        )
        .await;
    assert_eq!(lenient.status, 200);
    assert_eq!(lenient.match_ids(), ["m"]);

    for bad in [
        "birthdate=notadate",
        "birthdate=2024-13-01",
        "birthdate=ge",
        "_lastUpdated=yesterday",
        "_count=ten",
        "_sort=shoe-size",
        "family:fuzzy=x",
        "_include=Patient:nothing",
    ] {
        let r = app.get(&format!("/fhir/Patient?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome", "{bad}");
    }
    let r = app.get("/fhir/Observation?value-quantity=heavy").await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn post_search_with_a_form_body_matches_the_get_search() {
    let app = spawn_app().await;
    put(
        &app,
        patient(
            "a",
            json!({"gender": "male", "name": [{"family": "Smith"}]}),
        ),
    )
    .await;
    put(
        &app,
        patient(
            "b",
            json!({"gender": "female", "name": [{"family": "Smith"}]}),
        ),
    )
    .await;
    put(
        &app,
        patient(
            "c",
            json!({"gender": "male", "name": [{"family": "Jones"}]}),
        ),
    )
    .await;

    let get = get_ok(
        &app,
        "/fhir/Patient?family=smith&gender=male,female&_sort=-_id",
    )
    .await;
    let post = into_resp(
        app.client
            .post(app.url("/fhir/Patient/_search"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("family=smith&gender=male%2Cfemale&_sort=-_id")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 200, "{}", post.text);
    assert_eq!(post.match_ids(), ["b", "a"]);
    assert_eq!(post.match_ids(), get.match_ids());
    assert_eq!(post.body["total"], get.body["total"]);
    assert_eq!(post.link("self"), get.link("self"));

    // Parameters in the URL and in the body combine.
    let post = into_resp(
        app.client
            .post(app.url("/fhir/Patient/_search?gender=male"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("family=smith")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 200, "{}", post.text);
    assert_eq!(post.match_ids(), ["a"]);
}

#[tokio::test]
async fn deleted_resources_never_match_and_updated_ones_match_only_their_new_values() {
    let app = spawn_app().await;
    put(
        &app,
        patient("u1", json!({"name": [{"family": "Old"}], "gender": "male"})),
    )
    .await;
    put(
        &app,
        patient(
            "u2",
            json!({"name": [{"family": "Keep"}], "gender": "male"}),
        ),
    )
    .await;
    put(
        &app,
        patient(
            "u3",
            json!({"name": [{"family": "Gone"}], "gender": "male"}),
        ),
    )
    .await;
    put(&app, observation("ou3", subject("Patient/u3"))).await;
    put(&app, observation("ou2", subject("Patient/u2"))).await;

    assert_eq!(app.delete("/fhir/Patient/u3").await.status, 204);
    assert_found(&app, "Patient?family=gone", &[]).await;
    assert_found(&app, "Patient?_id=u3", &[]).await;
    assert_found(&app, "Patient?gender=male", &["u1", "u2"]).await;
    assert_found(&app, "Patient?gender:missing=true", &[]).await;
    assert_eq!(get_ok(&app, "/fhir/Patient").await.body["total"], 2);
    // The Observation pointing at it is still found, but the deleted Patient is not included.
    let r = get_ok(
        &app,
        "/fhir/Observation?subject=Patient/u3&_include=Observation:subject",
    )
    .await;
    assert_eq!(r.match_ids(), ["ou3"]);
    assert!(included(&r).is_empty(), "{}", r.text);

    assert_eq!(app.delete("/fhir/Observation/ou2").await.status, 204);
    let r = get_ok(&app, "/fhir/Patient?_id=u2&_revinclude=Observation:subject").await;
    assert!(included(&r).is_empty(), "{}", r.text);

    let r = app
        .put(
            "/fhir/Patient/u1",
            &patient(
                "u1",
                json!({"name": [{"family": "New"}], "gender": "female"}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_found(&app, "Patient?family=old", &[]).await;
    assert_found(&app, "Patient?family=new", &["u1"]).await;
    assert_found(&app, "Patient?gender=male", &["u2"]).await;
    assert_found(&app, "Patient?gender=female", &["u1"]).await;

    // Re-creating a deleted resource makes it findable again, by its new content only.
    let r = app
        .put(
            "/fhir/Patient/u3",
            &patient("u3", json!({"name": [{"family": "Back"}]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_found(&app, "Patient?family=back", &["u3"]).await;
    assert_found(&app, "Patient?family=gone", &[]).await;
}

#[tokio::test]
async fn paging_over_tied_and_missing_sort_values_returns_every_row_once_in_both_directions() {
    let app = spawn_app().await;
    // (value, date) per observation; ids o00.. in creation order, so ties fall back to id order.
    let mut rows: Vec<(Option<f64>, Option<&str>)> = Vec::new();
    for i in 0..14 {
        let value = [None, Some(2.5), Some(10.0), Some(0.75)][i % 4];
        let date = [Some("2024-01-01"), Some("2024-02-01"), None][i % 3];
        let mut extra = json!({});
        if let Some(v) = value {
            extra["valueQuantity"] = json!({"value": v, "system": UCUM, "code": "kg"});
        }
        if let Some(d) = date {
            extra["effectiveDateTime"] = json!(d);
        }
        put(&app, observation(&format!("o{i:02}"), extra)).await;
        rows.push((value, date));
    }
    // Missing values last in either direction; `desc` reverses present values only.
    fn order<T: PartialOrd>(a: Option<T>, b: Option<T>, desc: bool) -> std::cmp::Ordering {
        use std::cmp::Ordering::*;
        match (a, b) {
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(&y).unwrap();
                if desc { o.reverse() } else { o }
            }
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (None, None) => Equal,
        }
    }
    let expect = |cmp: &dyn Fn(usize, usize) -> std::cmp::Ordering| {
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.sort_by(|&a, &b| cmp(a, b).then(a.cmp(&b)));
        idx.into_iter()
            .map(|i| format!("o{i:02}"))
            .collect::<Vec<_>>()
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "_sort=value-quantity",
            expect(&|a, b| order(rows[a].0, rows[b].0, false)),
        ),
        (
            "_sort=-value-quantity,-date",
            expect(&|a, b| {
                order(rows[a].0, rows[b].0, true).then(order(rows[a].1, rows[b].1, true))
            }),
        ),
        (
            "_sort=date",
            expect(&|a, b| order(rows[a].1, rows[b].1, false)),
        ),
        ("_sort=-date,-_id", {
            let mut idx: Vec<usize> = (0..rows.len()).collect();
            idx.sort_by(|&a, &b| order(rows[a].1, rows[b].1, true).then(b.cmp(&a)));
            idx.into_iter().map(|i| format!("o{i:02}")).collect()
        }),
        (
            "_sort=_lastUpdated",
            expect(&|_, _| std::cmp::Ordering::Equal),
        ),
        ("_sort=-_lastUpdated", {
            let mut ids = expect(&|_, _| std::cmp::Ordering::Equal);
            ids.reverse();
            ids
        }),
    ];
    for (sort, expected) in cases {
        let unpaged = app
            .search_ids(&format!("Observation?{sort}&_count=100"))
            .await;
        assert_eq!(unpaged, expected, "{sort}");

        let pages = all_pages(
            &app,
            get_ok(&app, &format!("/fhir/Observation?{sort}&_count=3")).await,
        )
        .await;
        assert_eq!(pages.len(), 5, "{sort}");
        let forward: Vec<String> = pages.iter().flat_map(Resp::match_ids).collect();
        assert_eq!(forward, expected, "{sort} forward");

        // Back from the last page to the first through `previous` links.
        let mut backward: Vec<Vec<String>> = vec![pages[4].match_ids()];
        let mut prev = pages[4].link("previous");
        while let Some(url) = prev {
            let page = app.get_url(&url).await;
            assert_eq!(page.status, 200, "{}", page.text);
            backward.push(page.match_ids());
            prev = page.link("previous");
            assert!(backward.len() <= 5, "{sort}: previous links do not end");
        }
        backward.reverse();
        assert_eq!(backward.concat(), expected, "{sort} backward");
        assert_eq!(backward[0], pages[0].match_ids(), "{sort}");
    }
}

#[tokio::test]
async fn escaped_separators_and_like_wildcards_are_literal_characters_in_values() {
    let app = spawn_app().await;
    put(
        &app,
        observation(
            "pipe",
            json!({"code": {"coding": [{"code": "a|b"}]}, "identifier": [{"system": "urn:x", "value": "1|2"}]}),
        ),
    )
    .await;
    put(
        &app,
        observation(
            "split",
            json!({"code": {"coding": [{"system": "a", "code": "b"}]}}),
        ),
    )
    .await;
    put(
        &app,
        patient(
            "comma",
            json!({"name": [{"family": "O,Neil"}, {"family": "100%_x"}]}),
        ),
    )
    .await;
    put(
        &app,
        patient("plain", json!({"name": [{"family": "100ab"}]})),
    )
    .await;

    // `\|` is a literal pipe, a bare `|` separates system and code.
    assert_found(&app, "Observation?code=a%5C|b", &["pipe"]).await;
    assert_found(&app, "Observation?code=a|b", &["split"]).await;
    assert_found(&app, "Observation?identifier=urn:x|1%5C|2", &["pipe"]).await;
    assert_found(&app, "Observation?code=a%5C|b,a|b", &["pipe", "split"]).await;
    // `\,` is a literal comma, a bare `,` separates alternatives.
    assert_found(&app, "Patient?family=o%5C,neil", &["comma"]).await;
    assert_found(&app, "Patient?family:exact=O%5C,Neil", &["comma"]).await;
    assert_found(&app, "Patient?family=o%5C,neil,100ab", &["comma", "plain"]).await;
    // `%` and `_` are not wildcards.
    assert_found(&app, "Patient?family=100%25_", &["comma"]).await;
    assert_found(&app, "Patient?family=100", &["comma", "plain"]).await;
}

#[tokio::test]
async fn a_reference_to_another_server_never_matches_a_local_resource_of_the_same_id() {
    let app = spawn_app().await;
    app.put(
        "/fhir/Patient/p1",
        &json!({"resourceType": "Patient", "id": "p1"}),
    )
    .await;
    let foreign = app
        .create(&json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
            "subject": {"reference": "http://other.example.org/fhir/Patient/p1"}}))
        .await;
    let local = app
        .create(&json!({"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "y"},
            "subject": {"reference": format!("{}/Patient/p1", app.base)}}))
        .await;
    assert_eq!(
        app.search_ids("Goal?subject=Patient/p1").await,
        vec![local.clone()]
    );
    assert_eq!(
        app.search_ids("Goal?subject=http://other.example.org/fhir/Patient/p1")
            .await,
        vec![foreign.clone()]
    );
    let with_include = app
        .get(&format!("/fhir/Goal?_id={foreign}&_include=Goal:subject"))
        .await;
    assert_eq!(
        with_include.body["entry"].as_array().unwrap().len(),
        1,
        "{}",
        with_include.text
    );
}

/// `patient=X&code=Y` is answered from the token rows keyed by patient (migration 6): the results must be exactly
/// those of the general plan, whatever the patient's form, the code's form, extra criteria, updates that move a
/// resource to another patient or code, a Group subject and a deletion.
#[tokio::test]
async fn one_patients_resources_with_a_code_come_from_the_patient_keyed_index_with_the_same_results()
 {
    let app = spawn_app().await;
    for p in ["pa", "pb"] {
        put(&app, patient(p, json!({}))).await;
    }
    put(
        &app,
        json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true}),
    )
    .await;
    let obs = |id: &str, subj: &str, code: &str, status: &str| {
        with(
            observation(id, subject(subj)),
            json!({"status": status, "code": {"coding": [{"system": LOINC, "code": code}]}}),
        )
    };
    put(&app, obs("k1", "Patient/pa", "44261-6", "final")).await;
    put(&app, obs("k2", "Patient/pa", "44261-6", "preliminary")).await;
    put(&app, obs("k3", "Patient/pa", "70274-6", "final")).await;
    put(&app, obs("k4", "Patient/pb", "44261-6", "final")).await;
    put(&app, obs("k5", "Group/g1", "44261-6", "final")).await;
    put(&app, obs("k6", "Patient/pa", "44261-6", "final")).await;
    // k6 moves to the other patient, k2 to another code; k1's twin k7 is deleted.
    for changed in [
        obs("k6", "Patient/pb", "44261-6", "final"),
        obs("k2", "Patient/pa", "70274-6", "preliminary"),
    ] {
        let id = changed["id"].as_str().unwrap().to_owned();
        let r = app.put(&format!("/fhir/Observation/{id}"), &changed).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    put(&app, obs("k7", "Patient/pa", "44261-6", "final")).await;
    let r = app.delete("/fhir/Observation/k7").await;
    assert!(r.status == 200 || r.status == 204, "{}", r.text);

    assert_found(&app, "Observation?patient=pa&code=44261-6", &["k1"]).await;
    assert_found(
        &app,
        "Observation?patient=Patient/pa&code=http://loinc.org|44261-6",
        &["k1"],
    )
    .await;
    assert_found(
        &app,
        "Observation?patient=pa&code=44261-6,70274-6",
        &["k1", "k2", "k3"],
    )
    .await;
    assert_found(&app, "Observation?patient=pb&code=44261-6", &["k4", "k6"]).await;
    assert_found(
        &app,
        "Observation?patient=pa&code=70274-6&status=final",
        &["k3"],
    )
    .await;
    assert_found(&app, "Observation?patient=pa&code=|44261-6", &[]).await;
    assert_found(
        &app,
        "Observation?patient=pa&code:not=44261-6",
        &["k2", "k3"],
    )
    .await;
    assert_found(&app, "Observation?subject=Group/g1&code=44261-6", &["k5"]).await;
    assert_found(&app, "Observation?code=44261-6", &["k1", "k4", "k5", "k6"]).await;
    // A search by patient and another token takes the general plan.
    put(&app, encounter("e1", "pa")).await;
    put(&app, encounter("e2", "pb")).await;
    assert_found(&app, "Encounter?patient=pa&status=finished", &["e1"]).await;
}
