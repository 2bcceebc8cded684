//! `openapi.yaml` and the routes the gateway serves describe each other exactly: every route in the spec, every
//! spec path and operation served. The route table `kap_gateway::api::ROUTES` is checked against the resources
//! registered in `src/api` and against the methods the running server answers; the spec against the table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use kap_gateway::api::ROUTES;

use crate::helpers::*;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Paths and their operations in `openapi.yaml` (two-space indented keys under `paths:`).
fn spec_operations() -> BTreeMap<String, BTreeSet<String>> {
    let spec = include_str!("../../openapi.yaml");
    let mut ops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut in_paths = false;
    let mut current: Option<String> = None;
    for line in spec.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_paths = line == "paths:";
            current = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(path) = line.strip_prefix("  /").and_then(|p| p.strip_suffix(':')) {
            let path = format!("/{path}");
            ops.entry(path.clone()).or_default();
            current = Some(path);
        } else if let Some(rest) = line.strip_prefix("    ")
            && !rest.starts_with(' ')
            && let Some((key, _)) = rest.split_once(':')
            && [
                "get", "post", "put", "patch", "delete", "head", "options", "trace",
            ]
            .contains(&key)
            && let Some(path) = &current
        {
            ops.get_mut(path).unwrap().insert(key.to_ascii_uppercase());
        }
    }
    ops
}

/// Every `web::resource("…")` registered anywhere under `src/` (the API modules and the feature modules that
/// register their own routes, such as `bulk`).
fn registered_resources() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("web::resource(\"").skip(1) {
                found.insert(piece.split('"').next().unwrap().to_owned());
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut found,
    );
    found
}

#[test]
fn the_route_table_lists_exactly_the_registered_resources() {
    let table: BTreeSet<String> = ROUTES.iter().map(|r| r.pattern.to_owned()).collect();
    let registered = registered_resources();
    let unlisted: Vec<&String> = registered.difference(&table).collect();
    let unregistered: Vec<&String> = table.difference(&registered).collect();
    assert!(
        unlisted.is_empty(),
        "registered but missing from api::ROUTES: {unlisted:?}"
    );
    assert!(
        unregistered.is_empty(),
        "in api::ROUTES but never registered: {unregistered:?}"
    );
}

#[test]
fn every_route_is_in_openapi_yaml_and_every_spec_operation_is_a_route() {
    let spec = spec_operations();
    let mut table: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in ROUTES {
        table
            .entry(r.openapi.to_owned())
            .or_default()
            .extend(r.methods.iter().map(|m| (*m).to_owned()));
    }
    let mut problems = Vec::new();
    for (path, methods) in &table {
        match spec.get(path) {
            None => problems.push(format!("{path}: served, missing from openapi.yaml")),
            Some(spec_methods) => {
                for m in methods.difference(spec_methods) {
                    problems.push(format!("{m} {path}: served, missing from openapi.yaml"));
                }
                for m in spec_methods.difference(methods) {
                    problems.push(format!("{m} {path}: in openapi.yaml, not served"));
                }
            }
        }
    }
    for path in spec.keys() {
        if !table.contains_key(path) {
            problems.push(format!("{path}: in openapi.yaml, not served"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .replace(
            "{type:StructureDefinition|CodeSystem|ValueSet}",
            "StructureDefinition",
        )
        .replace("{type:Patient}", "Patient")
        .replace("{type:Group}", "Group")
        .replace("{job}", "route-probe")
        .replace("{file}", "route-probe")
        .replace("{type}", "Patient")
        .replace("{id}", "route-probe")
        .replace("{vid}", "1")
}

#[tokio::test]
async fn each_route_answers_exactly_its_methods_and_405_to_the_others() {
    let app = spawn_app().await;
    let mut problems = Vec::new();
    for r in ROUTES {
        let url = format!("{}{}", app.address, concrete(r.pattern));
        for method in METHODS {
            let resp = app
                .client
                .request(method.parse().unwrap(), &url)
                .header("Content-Type", "application/fhir+json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let listed = r.methods.contains(&method);
            if listed && status == 405 {
                problems.push(format!("{method} {}: listed, answered 405", r.pattern));
            }
            if !listed && status != 405 {
                problems.push(format!(
                    "{method} {}: not listed, answered {status}",
                    r.pattern
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn the_spec_is_served_with_a_browsable_page() {
    let app = spawn_app().await;
    let resp = app
        .anonymous
        .get(format!("{}/openapi.yaml", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/yaml")
    );
    assert_eq!(
        resp.text().await.unwrap(),
        include_str!("../../openapi.yaml")
    );
    let resp = app
        .anonymous
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = resp.text().await.unwrap();
    assert!(page.contains(r#"url: "/openapi.yaml""#), "{page}");
    assert!(page.contains(r#"<a href="/openapi.yaml">"#));
    assert!(page.contains(r#"integrity="sha384-"#));
}
