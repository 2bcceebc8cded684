//! Every official R4 example of a supported type is accepted and comes back unchanged apart from `id` and `meta`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::helpers::{spawn_app, without_server_fields};

#[tokio::test]
async fn every_official_r4_example_of_a_supported_type_round_trips_unchanged() {
    let app = spawn_app().await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/r4-examples");
    let mut checked = 0;
    for dir in std::fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().path();
        let t = dir.file_name().unwrap().to_string_lossy().into_owned();
        if !kap_gateway::fhir::registry::is_supported_type(&t) {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let sent: serde_json::Value = serde_json::from_str(&text).unwrap();
            let id = sent["id"].as_str().unwrap().to_owned();
            // PUT keeps the example's id so that its references between examples stay meaningful.
            let r = app.put(&format!("/fhir/{t}/{id}"), &sent).await;
            assert!(
                r.status == 201 || r.status == 200,
                "{}: {} {}",
                path.display(),
                r.status,
                r.text
            );
            let back = app.get(&format!("/fhir/{t}/{id}")).await;
            assert_eq!(back.status, 200);
            // Numbers compare by their exact text (arbitrary_precision), so 1.50 vs 1.5 would fail here.
            assert_eq!(
                without_server_fields(back.body.clone()),
                without_server_fields(sent.clone()),
                "{} changed in storage",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} examples checked");
}
