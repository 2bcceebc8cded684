//! Every FHIR access leaves an AuditEvent (IHE BALP style) naming who, which client, what and which patient —
//! and never the search values or note text.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;

use crate::helpers::{into_resp, spawn_app};

#[tokio::test]
async fn a_read_is_audited_with_client_user_resource_and_patient() {
    let app = spawn_app().await;
    app.put(
        "/fhir/Patient/alice",
        &json!({"resourceType": "Patient", "id": "alice"}),
    )
    .await;
    app.put(
        "/fhir/Observation/o1",
        &json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "PHQ-9"},
            "subject": {"reference": "Patient/alice"}, "valueString": "Secret words from the session"}),
    )
    .await;
    let grant = kap_gateway::auth::tokens::TokenGrant {
        client_id: "clinic-app".into(),
        subject: "dr-lee".into(),
        scope: "user/*.rs".into(),
        fhir_user: Some("Practitioner/lee".into()),
        lifetime_secs: 300,
        ..Default::default()
    };
    let (token, _) = app.auth.issue_access_token(&grant).await.unwrap();
    let user = crate::helpers::client_with_token(&token);
    assert_eq!(
        app.get_with(&user, "/fhir/Observation/o1").await.status,
        200
    );
    let search = app
        .get_with(&user, "/fhir/Patient?name=Zebediah&birthdate=1970-01-01")
        .await;
    assert_eq!(search.status, 200);

    let auditor = app.client_for("system/AuditEvent.rs", None).await;
    let events = app
        .get_with(&auditor, "/fhir/AuditEvent?patient=alice&_count=100")
        .await;
    assert_eq!(events.status, 200, "{}", events.text);
    let read = events.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|e| e["subtype"][0]["code"] == "read" && e["agent"].to_string().contains("dr-lee"))
        .expect("an audit event for the read");
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert!(read["agent"].to_string().contains("clinic-app"));
    assert!(read["agent"].to_string().contains("Practitioner/lee"));
    assert!(read["entity"].to_string().contains("Observation/o1"));

    // Nothing of the content or of the search values is in the trail.
    let all = app.get_with(&auditor, "/fhir/AuditEvent?_count=1000").await;
    assert!(
        !all.text.contains("Zebediah"),
        "search value leaked into the audit trail"
    );
    assert!(
        !all.text.contains("1970-01-01"),
        "search value leaked into the audit trail"
    );
    assert!(
        !all.text.contains("Secret words"),
        "content leaked into the audit trail"
    );
    assert!(
        all.text.contains("birthdate,name"),
        "parameter names are recorded"
    );
}

#[tokio::test]
async fn refused_requests_are_audited_too() {
    let app = spawn_app().await;
    let r = into_resp(
        app.anonymous
            .get(app.url("/fhir/Patient/alice"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    let narrow = app.client_for("user/Observation.rs", None).await;
    assert_eq!(
        app.get_with(&narrow, "/fhir/Patient/alice").await.status,
        403
    );
    let auditor = app.client_for("system/AuditEvent.rs", None).await;
    let events = app
        .get_with(&auditor, "/fhir/AuditEvent?outcome=4&_count=100")
        .await;
    let outcomes: Vec<String> = events.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["outcomeDesc"].as_str().unwrap().to_owned())
        .collect();
    assert!(outcomes.contains(&"HTTP 401".to_owned()), "{outcomes:?}");
    assert!(outcomes.contains(&"HTTP 403".to_owned()), "{outcomes:?}");
}

#[tokio::test]
async fn token_grants_and_refusals_are_audited_with_the_client() {
    use kap_gateway::auth::registry::{ClientKind, NewClient};
    let app = spawn_app().await;
    crate::helpers::registry(&app)
        .await
        .add_client(NewClient {
            client_id: "ops".into(),
            name: "Ops".into(),
            kind: ClientKind::ConfidentialSymmetric,
            secret: Some("a-sufficiently-long-secret".into()),
            redirect_uris: vec![],
            allowed_scopes: "system/*.rs".into(),
            jwks: None,
            jwks_uri: None,
        })
        .await
        .unwrap();
    let token = |secret: &'static str| {
        app.anonymous
            .post(app.url("/auth/token"))
            .basic_auth("ops", Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials&scope=system%2F*.rs")
            .send()
    };
    assert_eq!(
        token("a-sufficiently-long-secret")
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        token("wrong-secret-but-long-enough")
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let auditor = app.client_for("system/AuditEvent.rs", None).await;
    let events = app
        .get_with(
            &auditor,
            "/fhir/AuditEvent?subtype=urn:kap-gateway:auth-event|token&_count=50",
        )
        .await;
    let outcomes: Vec<(String, String)> = events.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            (
                r["outcomeDesc"].as_str().unwrap().to_owned(),
                r["agent"][0]["who"]["identifier"]["value"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("HTTP 200".into(), "ops".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("HTTP 401".into(), "ops".into())),
        "{outcomes:?}"
    );
    assert!(!events.text.contains("a-sufficiently-long-secret"));
}

#[tokio::test]
async fn the_audit_trail_is_read_only_and_searchable_by_its_own_parameters() {
    let app = spawn_app().await;
    app.put(
        "/fhir/Patient/alice",
        &json!({"resourceType": "Patient", "id": "alice"}),
    )
    .await;
    assert_eq!(app.get("/fhir/Patient/alice").await.status, 200);
    let auditor = app.client_for("system/AuditEvent.rs", None).await;

    // The read above, found by entity, patient, subtype and date, newest first.
    let found = app
        .get_with(
            &auditor,
            "/fhir/AuditEvent?entity=Patient/alice&patient=alice&subtype=read&date=ge2000-01-01&_sort=-date",
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.text);
    assert_eq!(found.body["total"], 1, "{}", found.text);
    let event = found.body["entry"][0]["resource"].clone();
    let id = event["id"].as_str().unwrap().to_owned();
    assert_eq!(event["meta"]["versionId"], "1");

    // Read and vread of version 1; no other version, no writes.
    let read = app
        .get_with(&auditor, &format!("/fhir/AuditEvent/{id}"))
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, event);
    assert_eq!(
        app.get_with(&auditor, &format!("/fhir/AuditEvent/{id}/_history/1"))
            .await
            .status,
        200
    );
    assert_eq!(
        app.get_with(&auditor, &format!("/fhir/AuditEvent/{id}/_history/2"))
            .await
            .status,
        404
    );
    assert_eq!(
        app.get_with(&auditor, "/fhir/AuditEvent/no-such-event")
            .await
            .status,
        404
    );
    let mut forged = event.clone();
    forged["outcome"] = json!("8");
    let put = app.put(&format!("/fhir/AuditEvent/{id}"), &forged).await;
    assert_eq!(put.status, 405, "{}", put.text);
    assert_eq!(
        app.get_with(&auditor, &format!("/fhir/AuditEvent/{id}"))
            .await
            .body["outcome"],
        "0"
    );

    // Nothing matches what was not done; :missing and :not work on the columns.
    let none = app
        .get_with(&auditor, "/fhir/AuditEvent?entity=Patient/bob")
        .await;
    assert_eq!(none.body["total"], 0);
    let not_read = app
        .get_with(&auditor, "/fhir/AuditEvent?patient=alice&subtype:not=read")
        .await;
    assert!(
        not_read.body["entry"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["resource"]["subtype"][0]["code"] != "read"),
        "{}",
        not_read.text
    );

    // Paging walks every event up to a cut-off once (the searches themselves are audited too, after it).
    let cutoff = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut seen = std::collections::HashSet::new();
    let mut page = app
        .get_with(
            &auditor,
            &format!("/fhir/AuditEvent?_count=2&_lastUpdated=le{cutoff}"),
        )
        .await;
    loop {
        for e in page.body["entry"].as_array().unwrap() {
            assert!(seen.insert(e["resource"]["id"].as_str().unwrap().to_owned()));
        }
        match page.link("next") {
            Some(next) => page = app.get_url(&next).await,
            None => break,
        }
    }
    assert!(seen.len() >= 4, "{seen:?}");
    let count = app
        .get_with(
            &auditor,
            &format!("/fhir/AuditEvent?_summary=count&_lastUpdated=le{cutoff}"),
        )
        .await;
    assert_eq!(count.body["total"].as_u64().unwrap() as usize, seen.len());

    // Parameters the audit trail does not keep are refused, not silently ignored.
    let site = app
        .get_with(&auditor, "/fhir/AuditEvent?site=clinic-a")
        .await;
    assert_eq!(site.status, 400, "{}", site.text);
    let metadata = app.get("/fhir/metadata").await;
    let audit = metadata.body["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .unwrap();
    let params: Vec<&str> = audit["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"patient") && params.contains(&"date"));
    assert!(!params.contains(&"site"));
}

/// The two ways of making events durable (`audit_journal`: a journal imported in batches, or a database commit
/// per group of requests) give the same audit trail, and either way an AuditEvent search sees the events of every
/// request answered before it, on both databases.
#[tokio::test]
async fn journal_and_commit_modes_give_the_same_audit_trail_at_once() {
    let journal_dir = tempfile::tempdir().unwrap();
    let mut trails = Vec::new();
    for mode in [
        "off".to_owned(),
        journal_dir.path().join("audit").display().to_string(),
    ] {
        let app = crate::helpers::spawn_app_with(|c| c.audit_journal = mode.clone()).await;
        app.put(
            "/fhir/Patient/alice",
            &json!({"resourceType": "Patient", "id": "alice"}),
        )
        .await;
        assert_eq!(app.get("/fhir/Patient/alice").await.status, 200);
        assert_eq!(app.get("/fhir/Patient/nobody").await.status, 404);
        assert_eq!(app.get("/fhir/Patient?_id=alice").await.status, 200);
        // Each search sees what came before it, immediately.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let events = app
                .get("/fhir/AuditEvent?entity=Patient/alice&_count=100&_sort=date")
                .await;
            assert_eq!(events.status, 200, "{}", events.text);
            let trail: Vec<(String, String)> = events.body["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["resource"]["subtype"][0]["code"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                        e["resource"]["outcome"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            seen.push(trail);
        }
        // Each AuditEvent search that returned events about alice is itself such an event.
        assert_eq!(seen[1].len(), seen[0].len() + 1, "{mode}: {:?}", seen[1]);
        assert_eq!(seen[2].len(), seen[0].len() + 2, "{mode}: {:?}", seen[2]);
        let all = app.get("/fhir/AuditEvent?_summary=count").await;
        // update, read, 404 read, search, 3 AuditEvent searches (this one is recorded after it is answered).
        assert_eq!(all.body["total"], 7, "{mode}");
        trails.push(seen);
    }
    assert_eq!(trails[0], trails[1]);
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        trails[0][2],
        [
            pair("update", "0"),
            pair("read", "0"),
            pair("search-type", "0"),
            pair("search-type", "0"),
            pair("search-type", "0"),
        ]
    );
}
