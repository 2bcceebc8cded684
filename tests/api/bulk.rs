//! `Patient/{id}/$everything` and the Bulk Data export: kick-off, polling, NDJSON downloads, authorization (scopes,
//! patient context, psychotherapy notes, same client), cancel, expiry, and jobs that survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kap_gateway::config::Config;
use kap_gateway::startup::Application;
use kap_gateway::store::db::{Col, Sql};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, app_db, client_with_token, into_resp, spawn_app_with};

const PSY_LABELS: &str = r#"[{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]"#;

fn fast(c: &mut Config) {
    c.bulk.poll_ms = 20;
    c.bulk.retry_after_secs = 1;
}

async fn app() -> TestApp {
    spawn_app_with(fast).await
}

/// Patients alice and bob, each with an Encounter and `n` Observations; a psychotherapy note for alice; a
/// Practitioner (outside every compartment); a Group whose only member is bob.
async fn seed(app: &TestApp, n: usize) {
    for p in ["alice", "bob"] {
        let r = app
            .put(
                &format!("/fhir/Patient/{p}"),
                &json!({"resourceType": "Patient", "id": p}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        app.put(
            &format!("/fhir/Encounter/enc-{p}"),
            &json!({"resourceType": "Encounter", "id": format!("enc-{p}"), "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
        for i in 0..n {
            let id = format!("obs-{p}-{i}");
            let code = if i % 2 == 0 { "44261-6" } else { "70274-6" };
            let r = app
                .put(
                    &format!("/fhir/Observation/{id}"),
                    &json!({"resourceType": "Observation", "id": id, "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                        "subject": {"reference": format!("Patient/{p}")},
                        "valueInteger": i}),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
    }
    let mut note = json!({"resourceType": "Observation", "id": "note-alice", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "subject": {"reference": "Patient/alice"}, "valueString": "Private psychotherapy content"});
    note["meta"] = json!({"security": serde_json::from_str::<Value>(PSY_LABELS).unwrap()});
    assert_eq!(
        app.put("/fhir/Observation/note-alice", &note).await.status,
        201
    );
    app.put(
        "/fhir/Practitioner/dr",
        &json!({"resourceType": "Practitioner", "id": "dr"}),
    )
    .await;
    let r = app
        .put(
            "/fhir/Group/cohort",
            &json!({"resourceType": "Group", "id": "cohort", "type": "person", "actual": true,
                "member": [{"entity": {"reference": "Patient/bob"}}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// A token of another registered client than the default one.
async fn client_of(
    app: &TestApp,
    client_id: &str,
    scope: &str,
    patient: Option<&str>,
) -> reqwest::Client {
    let grant = kap_gateway::auth::tokens::TokenGrant {
        client_id: client_id.into(),
        subject: client_id.into(),
        scope: scope.into(),
        patient: patient.map(str::to_owned),
        lifetime_secs: 600,
        ..Default::default()
    };
    client_with_token(&app.auth.issue_access_token(&grant).await.unwrap().0)
}

async fn kick_off(app: &TestApp, client: &reqwest::Client, path: &str) -> Resp {
    into_resp(
        client
            .get(app.url(path))
            .header("prefer", "respond-async")
            .header("accept", "application/fhir+json")
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Polls a status URL until it stops answering 202; checks the 202s carry `X-Progress` and `Retry-After`.
async fn poll(client: &reqwest::Client, status_url: &str) -> Resp {
    for _ in 0..600 {
        let r = into_resp(client.get(status_url).send().await.unwrap()).await;
        if r.status != 202 {
            return r;
        }
        assert!(r.header("x-progress").is_some(), "202 without X-Progress");
        assert!(r.header("retry-after").is_some(), "202 without Retry-After");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("export did not finish in time");
}

/// Kick-off, poll, then every file downloaded and every line parsed: resource type → ids.
async fn export(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
) -> (Value, BTreeMap<String, Vec<String>>) {
    let k = kick_off(app, client, path).await;
    assert_eq!(k.status, 202, "kick-off {path}: {}", k.text);
    let status_url = k.header("content-location").expect("Content-Location");
    let done = poll(client, &status_url).await;
    assert_eq!(done.status, 200, "status: {}", done.text);
    let manifest = done.body.clone();
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["transactionTime"].is_string());
    assert!(
        manifest["request"]
            .as_str()
            .unwrap()
            .ends_with(path.trim_start_matches("/fhir"))
    );
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in manifest["output"].as_array().unwrap() {
        let t = f["type"].as_str().unwrap();
        let r = client.get(f["url"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/fhir+ndjson"
        );
        let text = r.text().await.unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len() as u64,
            f["count"].as_u64().unwrap(),
            "count of {t}"
        );
        for line in lines {
            let v: Value = serde_json::from_str(line).expect("each line is one JSON resource");
            assert_eq!(v["resourceType"], t, "a {t} file holds only {t}");
            out.entry(t.to_owned())
                .or_default()
                .push(v["id"].as_str().unwrap().to_owned());
        }
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    (manifest, out)
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn everything_pages_through_the_patients_compartment_with_type_and_since() {
    let app = app().await;
    seed(&app, 5).await;
    // AuditEvents are in the patient compartment too; this reader has no AuditEvent scope, so they stay out.
    let reader = app
        .client_for("system/*.rs kap/psychotherapy-notes.read", None)
        .await;
    // Pages of 3, followed through `next` links, hold exactly alice's compartment, each resource once.
    let mut url = app.url("/fhir/Patient/alice/$everything?_count=3");
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let r = into_resp(reader.get(&url).send().await.unwrap()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["type"], "searchset");
        let entries = r.body["entry"].as_array().cloned().unwrap_or_default();
        assert!(entries.len() <= 3);
        for e in entries {
            seen.push(format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            ));
        }
        pages += 1;
        match r.link("next") {
            Some(next) => url = next,
            None => break,
        }
    }
    seen.sort();
    let mut expected: Vec<String> = vec![
        "Patient/alice".into(),
        "Encounter/enc-alice".into(),
        "Observation/note-alice".into(),
    ];
    expected.extend((0..5).map(|i| format!("Observation/obs-alice-{i}")));
    expected.sort();
    assert_eq!(seen, expected);
    assert!(pages >= 3);

    // _type narrows to the named types.
    let r = app
        .get_with(
            &reader,
            "/fhir/Patient/alice/$everything?_type=Encounter,Patient",
        )
        .await;
    let mut got = r.match_ids();
    got.sort();
    assert_eq!(got, sorted(&["alice", "enc-alice"]));

    // _since: only what changed at or after the instant.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since =
        kap_gateway::fhir::datetime::format_instant(kap_gateway::fhir::datetime::now_micros());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let changed = json!({"resourceType": "Observation", "id": "obs-alice-1", "status": "amended",
        "code": {"coding": [{"system": "http://loinc.org", "code": "70274-6"}]},
        "subject": {"reference": "Patient/alice"}, "valueInteger": 99});
    assert_eq!(
        app.put("/fhir/Observation/obs-alice-1", &changed)
            .await
            .status,
        200
    );
    let r = app
        .get_with(
            &reader,
            &format!(
                "/fhir/Patient/alice/$everything?_since={}",
                url::form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>()
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.match_ids(), vec!["obs-alice-1".to_owned()]);

    // Bad input is an OperationOutcome naming it; an unknown patient is 404.
    let r = app
        .get("/fhir/Patient/alice/$everything?_type=Practitioner")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let r = app
        .get("/fhir/Patient/alice/$everything?_since=yesterday")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        app.get("/fhir/Patient/nobody/$everything").await.status,
        404
    );
}

#[tokio::test]
async fn everything_is_authorized_like_a_search() {
    let app = app().await;
    seed(&app, 2).await;
    // A patient-context token sees its own compartment, without the notes it has no scope for…
    let alice = app.client_for("patient/*.rs", Some("alice")).await;
    let r = app
        .get_with(&alice, "/fhir/Patient/alice/$everything")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut got = r.match_ids();
    got.sort();
    assert_eq!(
        got,
        sorted(&["alice", "enc-alice", "obs-alice-0", "obs-alice-1"])
    );
    // …and nothing of another patient.
    let r = app.get_with(&alice, "/fhir/Patient/bob/$everything").await;
    assert_eq!(r.status, 404, "{}", r.text);
    // A token with a broader Patient scope but patient-context Observations never gets alice's Observations in
    // bob's $everything.
    let mixed = app
        .client_for("user/Patient.rs patient/Observation.rs", Some("alice"))
        .await;
    let r = app.get_with(&mixed, "/fhir/Patient/bob/$everything").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.match_ids(), vec!["bob".to_owned()]);
    // Types the token may not search are left out.
    let patients_only = app.client_for("system/Patient.rs", None).await;
    let r = app
        .get_with(&patients_only, "/fhir/Patient/alice/$everything")
        .await;
    assert_eq!(r.match_ids(), vec!["alice".to_owned()]);
}

#[tokio::test]
async fn a_bulk_client_exports_everything_and_the_counts_match_the_database() {
    let app = app().await;
    seed(&app, 30).await;
    let r = app.delete("/fhir/Observation/obs-bob-3").await;
    assert!(r.status == 200 || r.status == 204, "{}", r.text);
    let (manifest, out) = export(&app, &app.client, "/fhir/$export").await;

    // Every current, non-deleted resource up to transactionTime, per type, is in the files exactly once.
    let tt =
        kap_gateway::fhir::datetime::parse_range(manifest["transactionTime"].as_str().unwrap())
            .unwrap()
            .hi;
    let db = app_db(&app).await;
    let mut sql =
        Sql::new("SELECT res_type, id FROM resources WHERE deleted = 0 AND last_updated <= ");
    sql.bind(tt).push(" ORDER BY res_type, id");
    let rows = db.fetch(&sql, &[Col::Text, Col::Text]).await.unwrap();
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        expected.entry(r.text(0)).or_default().push(r.text(1));
    }
    // AuditEvents live in the append-only audit table.
    let mut sql = Sql::new("SELECT id FROM audit_events WHERE recorded <= ");
    sql.bind(tt);
    for r in db.fetch(&sql, &[Col::Text]).await.unwrap() {
        expected
            .entry("AuditEvent".to_owned())
            .or_default()
            .push(r.text(0));
    }
    for ids in expected.values_mut() {
        ids.sort();
    }
    assert_eq!(out, expected);
    assert_eq!(out["Observation"].len(), 60);
    assert!(!out["Observation"].contains(&"obs-bob-3".to_owned()));
    assert!(
        out.contains_key("AuditEvent"),
        "the full-access token reads AuditEvents"
    );
    assert_eq!(manifest["error"], json!([]));

    // The files need a token, and the status and files belong to the client that asked.
    let url = manifest["output"][0]["url"].as_str().unwrap().to_owned();
    let r = into_resp(app.anonymous.get(&url).send().await.unwrap()).await;
    assert_eq!(r.status, 401);
    let other = client_of(&app, "other-client", "system/*.rs", None).await;
    let r = into_resp(other.get(&url).send().await.unwrap()).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert_eq!(
        app.get("/fhir/$export-file/no-such-job/0").await.status,
        404
    );
}

#[tokio::test]
async fn exports_obey_scopes_patient_context_and_the_psychotherapy_label() {
    let app = app().await;
    seed(&app, 3).await;
    // Without the psychotherapy scope, notes stay out; without an AuditEvent scope, AuditEvents too.
    let reader = client_of(&app, "reader", "system/*.rs", None).await;
    let (_, out) = export(&app, &reader, "/fhir/$export").await;
    assert!(!out["Observation"].contains(&"note-alice".to_owned()));
    assert_eq!(out["Observation"].len(), 6);
    assert!(!out.contains_key("AuditEvent"));
    // With it, the note is exported.
    let therapist = client_of(
        &app,
        "therapist",
        "system/Observation.rs kap/psychotherapy-notes.read",
        None,
    )
    .await;
    let (_, out) = export(
        &app,
        &therapist,
        "/fhir/$export?_type=Observation,AuditEvent",
    )
    .await;
    assert!(out["Observation"].contains(&"note-alice".to_owned()));
    // An explicitly requested type the token may not read is reported in the error file.
    let (manifest, _) = export(&app, &therapist, "/fhir/$export?_type=Observation,Patient").await;
    let err_url = manifest["error"][0]["url"].as_str().expect("an error file");
    let text = therapist
        .get(err_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let oo: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Patient")
    );

    // A patient-context token reaches only its own compartment, whatever level it exports at.
    let bob = client_of(&app, "bob-app", "patient/*.rs", Some("bob")).await;
    let (_, out) = export(&app, &bob, "/fhir/$export").await;
    let all: BTreeSet<String> = out.values().flatten().cloned().collect();
    assert!(all.contains("bob") && all.contains("obs-bob-0") && all.contains("enc-bob"));
    assert!(
        !all.iter().any(|id| id.contains("alice")),
        "no alice data: {all:?}"
    );
    let (_, out) = export(&app, &bob, "/fhir/Patient/$export").await;
    let all: BTreeSet<String> = out.values().flatten().cloned().collect();
    assert!(!all.iter().any(|id| id.contains("alice")));
    let alice = client_of(&app, "alice-app", "patient/*.rs", Some("alice")).await;
    // The cohort holds only bob: alice's token may not even read the Group (it is outside her compartment).
    let r = kick_off(&app, &alice, "/fhir/Group/cohort/$export").await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn patient_and_group_exports_hold_compartments_with_type_filter_and_since() {
    let app = app().await;
    seed(&app, 4).await;
    // Group: bob's compartment only.
    let (_, out) = export(&app, &app.client, "/fhir/Group/cohort/$export").await;
    assert_eq!(out["Patient"], vec!["bob".to_owned()]);
    assert_eq!(out["Encounter"], vec!["enc-bob".to_owned()]);
    assert_eq!(out["Observation"].len(), 4);
    assert!(!out.contains_key("Practitioner"));
    // The Group itself is in bob's compartment (Group.member).
    assert_eq!(out["Group"], vec!["cohort".to_owned()]);
    // Patient level: every patient's compartment, no Practitioner.
    let (_, out) = export(
        &app,
        &app.client,
        "/fhir/Patient/$export?_outputFormat=application%2Ffhir%2Bndjson",
    )
    .await;
    assert_eq!(out["Patient"], sorted(&["alice", "bob"]));
    assert_eq!(out["Observation"].len(), 9);
    assert!(!out.contains_key("Practitioner"));
    // _typeFilter: a search per type.
    let (_, out) = export(
        &app,
        &app.client,
        "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C44261-6%26subject%3DPatient%2Falice",
    )
    .await;
    assert_eq!(out["Observation"], sorted(&["obs-alice-0", "obs-alice-2"]));
    assert_eq!(out.len(), 1);
    // _since: only what changed since.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since =
        kap_gateway::fhir::datetime::format_instant(kap_gateway::fhir::datetime::now_micros());
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.put(
        "/fhir/Patient/alice",
        &json!({"resourceType": "Patient", "id": "alice", "active": true}),
    )
    .await;
    let path = format!(
        "/fhir/$export?_type=Patient,Observation&_since={}",
        url::form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>()
    );
    let (_, out) = export(&app, &app.client, &path).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out["Patient"], vec!["alice".to_owned()]);
}

#[tokio::test]
async fn bad_kick_off_requests_get_an_operation_outcome() {
    let app = app().await;
    let r = app.get("/fhir/$export").await;
    assert_eq!(r.status, 400, "no Prefer: respond-async");
    assert!(r.diagnostics().contains("respond-async"));
    for (path, what) in [
        ("/fhir/$export?_outputFormat=text/csv", "_outputFormat"),
        ("/fhir/$export?_type=Banana", "_type"),
        ("/fhir/$export?_typeFilter=Observation%3Fnope%3D1", "nope"),
        (
            "/fhir/$export?_typeFilter=Observation%3F_sort%3Ddate",
            "_sort",
        ),
        ("/fhir/$export?_since=last-week", "_since"),
        ("/fhir/Patient/$export?_type=Practitioner", "Practitioner"),
        (
            "/fhir/$export?includeAssociatedData=LatestProvenanceResources",
            "includeAssociatedData",
        ),
    ] {
        let r = kick_off(&app, &app.client, path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
        assert!(r.text.contains(what), "{path}: {}", r.text);
    }
    let r = kick_off(&app, &app.client, "/fhir/Group/none/$export").await;
    assert_eq!(r.status, 404);
    let writer = app.client_for("system/Patient.c", None).await;
    let r = kick_off(&app, &writer, "/fhir/$export").await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(app.get("/fhir/$export-status/unknown").await.status, 404);

    // The CapabilityStatement announces the operations.
    let cs = app.get("/fhir/metadata").await.body;
    assert_eq!(
        cs["instantiates"][0],
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
    );
    let ops = cs["rest"][0]["operation"].to_string();
    assert!(ops.contains("bulkdata/OperationDefinition/export"));
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .to_string();
    assert!(patient.contains("Patient-everything") && patient.contains("patient-export"));
}

/// A second gateway on the database of `app` (a restart, or another replica): its address and a client with the
/// default full-access token of the test client, issued by that gateway.
async fn second_app(app: &TestApp, adjust: impl FnOnce(&mut Config)) -> (String, reqwest::Client) {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: app.database_url.clone(),
        db_max_connections: 5,
        http_workers: 2,
        ..Config::default()
    };
    fast(&mut config);
    adjust(&mut config);
    let built = Application::build(config).await.expect("second app");
    let address = format!("http://127.0.0.1:{}", built.port());
    let token = crate::helpers::mint(
        &built.state.auth,
        "system/*.cruds system/AuditEvent.rs kap/psychotherapy-notes.read",
        None,
    )
    .await;
    tokio::spawn(built.run_until_stopped());
    (address, client_with_token(&token))
}

async fn job_id_of(k: &Resp) -> String {
    k.header("content-location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_cancelled_export_is_gone_with_its_files() {
    let app = spawn_app_with(|c| {
        fast(c);
        c.bulk.worker = false;
    })
    .await;
    seed(&app, 2).await;
    let k = kick_off(&app, &app.client, "/fhir/$export").await;
    let status_url = k.header("content-location").unwrap();
    let r = into_resp(app.client.get(&status_url).send().await.unwrap()).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-progress").as_deref(), Some("queued"));
    // Another client may not cancel it.
    let other = client_of(&app, "other-client", "system/*.rs", None).await;
    let r = into_resp(other.delete(&status_url).send().await.unwrap()).await;
    assert_eq!(r.status, 403);
    let r = into_resp(app.client.delete(&status_url).send().await.unwrap()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = into_resp(app.client.get(&status_url).send().await.unwrap()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["resourceType"], "OperationOutcome");

    // A completed export's files go on DELETE too.
    let _worker = second_app(&app, |_| {}).await;
    let k = kick_off(&app, &app.client, "/fhir/$export?_type=Patient").await;
    let done = poll(&app.client, &k.header("content-location").unwrap()).await;
    assert_eq!(done.status, 200);
    let file = done.body["output"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(app.client.get(&file).send().await.unwrap().status(), 200);
    let r = app
        .client
        .delete(k.header("content-location").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(app.client.get(&file).send().await.unwrap().status(), 404);
    let db = app_db(&app).await;
    let mut sql = Sql::new("SELECT COUNT(*) FROM bulk_chunks WHERE job_id = ");
    sql.bind(job_id_of(&k).await);
    assert_eq!(db.fetch(&sql, &[Col::Int]).await.unwrap()[0].int(0), 0);
}

#[tokio::test]
async fn export_jobs_survive_a_restart_and_interrupted_ones_resume() {
    // The first gateway only queues (as if it stopped before running anything).
    let app = spawn_app_with(|c| {
        fast(c);
        c.bulk.worker = false;
    })
    .await;
    seed(&app, 10).await;
    let queued = kick_off(&app, &app.client, "/fhir/$export?_type=Patient,Observation").await;
    assert_eq!(queued.status, 202);
    let interrupted = kick_off(&app, &app.client, "/fhir/$export?_type=Observation").await;
    let doomed = kick_off(&app, &app.client, "/fhir/$export?_type=Patient").await;
    // One job was running on a gateway that died half-way: its lease has run out, its first chunk is written.
    let db = app_db(&app).await;
    let first_half: Vec<String> = (0..5)
        .map(|i| format!("obs-alice-{i}"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut sql =
        Sql::new("SELECT pk, content FROM resources WHERE res_type = 'Observation' AND id IN (");
    sql.bind_list(&first_half).push(") ORDER BY pk");
    let rows = db.fetch(&sql, &[Col::Int, Col::Text]).await.unwrap();
    let last_pk = rows.iter().map(|r| r.int(0)).max().unwrap();
    let chunk: String = rows.iter().map(|r| format!("{}\n", r.text(1))).collect();
    let iid = job_id_of(&interrupted).await;
    let mut tx = db.begin_write().await.unwrap();
    let mut sql = Sql::new(
        "UPDATE bulk_jobs SET status = 'running', attempts = 1, lease_owner = 'gone', lease_until = 1, after_pk = ",
    );
    sql.bind(last_pk)
        .push(", exported = 5 WHERE id = ")
        .bind(iid.as_str());
    tx.execute(&sql).await.unwrap();
    let mut sql =
        Sql::new("INSERT INTO bulk_files (job_id, file_no, res_type, line_count) VALUES (");
    sql.bind(iid.as_str()).push(", 0, 'Observation', 5)");
    tx.execute(&sql).await.unwrap();
    let mut sql = Sql::new("INSERT INTO bulk_chunks (job_id, file_no, seq, data) VALUES (");
    sql.bind(iid.as_str())
        .push(", 0, 1, ")
        .bind(chunk)
        .push(")");
    tx.execute(&sql).await.unwrap();
    // And one has been interrupted as often as allowed: it is marked failed, not lost.
    let mut sql = Sql::new(
        "UPDATE bulk_jobs SET status = 'running', attempts = 3, lease_owner = 'gone', lease_until = 1 WHERE id = ",
    );
    sql.bind(job_id_of(&doomed).await);
    tx.execute(&sql).await.unwrap();
    tx.commit().await.unwrap();

    // A new gateway on the same database finishes all of them; status URLs keep working across gateways.
    let (restarted, client) = second_app(&app, |_| {}).await;
    let status_of = |k: &Resp| {
        format!(
            "{restarted}/fhir/$export-status/{}",
            k.header("content-location")
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
        )
    };
    let done = poll(&client, &status_of(&queued)).await;
    assert_eq!(done.status, 200, "{}", done.text);
    let counts: BTreeMap<String, u64> = done.body["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["type"].as_str().unwrap().to_owned(),
                f["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts["Patient"], 2);
    assert_eq!(counts["Observation"], 21);

    let resumed = poll(&client, &status_of(&interrupted)).await;
    assert_eq!(resumed.status, 200, "{}", resumed.text);
    let url = resumed.body["output"][0]["url"].as_str().unwrap();
    let text = client.get(url).send().await.unwrap().text().await.unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap_or_else(|| panic!("not a resource: {l}"))
                .to_owned()
        })
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(
        n, 21,
        "resumed after the written chunk: nothing twice, nothing missing"
    );
    assert_eq!(ids.len(), 21);

    let failed = poll(&client, &status_of(&doomed)).await;
    assert_eq!(failed.status, 500, "{}", failed.text);
    assert_eq!(failed.body["resourceType"], "OperationOutcome");
    assert!(failed.diagnostics().contains("interrupted"));
}

#[tokio::test]
async fn expired_files_are_gone_with_an_operation_outcome() {
    let app = spawn_app_with(|c| {
        fast(c);
        c.bulk.file_ttl_secs = 0;
        c.bulk.cleanup_secs = 1;
    })
    .await;
    seed(&app, 1).await;
    let k = kick_off(&app, &app.client, "/fhir/$export?_type=Patient").await;
    let status_url = k.header("content-location").unwrap();
    let r = poll(&app.client, &status_url).await;
    assert_eq!(r.status, 410, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let r = app
        .get(&format!("/fhir/$export-file/{}/0", job_id_of(&k).await))
        .await;
    assert_eq!(r.status, 410);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    // The periodic cleanup deletes the stored chunks.
    let db = app_db(&app).await;
    let mut sql = Sql::new("SELECT COUNT(*) FROM bulk_chunks WHERE job_id = ");
    sql.bind(job_id_of(&k).await);
    let mut left = 1;
    for _ in 0..100 {
        left = db.fetch(&sql, &[Col::Int]).await.unwrap()[0].int(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0);
}
