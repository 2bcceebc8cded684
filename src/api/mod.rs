//! The HTTP layer: actix-web handlers only (extract → one call → respond) for `/fhir`, `/auth`, `/health`, `/metrics`
//! and the API description, and the composition of the application (`create_app`) used by `main` and by the tests.

pub mod admin;
pub mod audit;
pub mod conformance;
pub mod docs;
pub mod fhir;
pub mod guard;
pub mod health;
pub mod kap;
pub mod oauth;
pub mod response;

use actix_web::{App, web};

use crate::auth::tokens::Authenticator;
use crate::config::Config;
use crate::fhir::capability::CapabilityInput;
use crate::service::FhirService;
use crate::store::Store;

/// Shared state of every request.
#[derive(Clone)]
pub struct AppState {
    pub config: Config,
    pub base_url: String,
    pub store: Store,
    pub fhir: FhirService,
    pub kap: crate::kap::service::KapService,
    pub capability: CapabilityInput,
    pub auth: Authenticator,
    pub audit: crate::audit::AuditLog,
    /// Prometheus metrics (`/metrics`); clone the `Arc` into workers that count things.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Background workers: readiness reports them, shutdown stops them (see `crate::workers`).
    pub workers: crate::workers::Workers,
}

/// One route: its actix pattern, its path in `openapi.yaml`, and the methods it answers (others get 405).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub pattern: &'static str,
    pub openapi: &'static str,
    pub methods: &'static [&'static str],
}

const fn route(
    pattern: &'static str,
    openapi: &'static str,
    methods: &'static [&'static str],
) -> Route {
    Route {
        pattern,
        openapi,
        methods,
    }
}

/// Every route of the gateway. **Add a line here with every `web::resource` you register** (in any `src/api`
/// file): `tests/api/openapi_routes.rs` checks this table against the registered resources, against the methods
/// the running server answers, and against the paths and operations of `openapi.yaml`, in both directions.
pub const ROUTES: &[Route] = &[
    route("/health/live", "/health/live", &["GET"]),
    route("/health/ready", "/health/ready", &["GET"]),
    route("/metrics", "/metrics", &["GET"]),
    route("/openapi.yaml", "/openapi.yaml", &["GET"]),
    route("/docs", "/docs", &["GET"]),
    route("/fhir/metadata", "/fhir/metadata", &["GET"]),
    route(
        "/.well-known/smart-configuration",
        "/.well-known/smart-configuration",
        &["GET"],
    ),
    route(
        "/fhir/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
        &["GET"],
    ),
    route(
        "/fhir/.well-known/openid-configuration",
        "/fhir/.well-known/openid-configuration",
        &["GET"],
    ),
    route("/auth/jwks", "/auth/jwks", &["GET"]),
    route("/auth/authorize", "/auth/authorize", &["GET"]),
    route("/auth/login", "/auth/login", &["POST"]),
    route("/auth/patient", "/auth/patient", &["POST"]),
    route("/auth/consent", "/auth/consent", &["POST"]),
    route("/auth/token", "/auth/token", &["POST"]),
    route("/auth/introspect", "/auth/introspect", &["POST"]),
    route("/auth/revoke", "/auth/revoke", &["POST"]),
    route("/auth/launch", "/auth/launch", &["POST"]),
    route("/fhir", "/fhir", &["POST"]),
    route("/fhir/_history", "/fhir/_history", &["GET"]),
    route(
        "/fhir/{type}/$validate",
        "/fhir/{type}/$validate",
        &["POST"],
    ),
    route(
        "/fhir/{type}/{id}/$validate",
        "/fhir/{type}/{id}/$validate",
        &["POST"],
    ),
    route(
        "/fhir/{type:StructureDefinition|CodeSystem|ValueSet}",
        "/fhir/{conformanceType}",
        &["GET"],
    ),
    route(
        "/fhir/{type:StructureDefinition|CodeSystem|ValueSet}/{id}",
        "/fhir/{conformanceType}/{id}",
        &["GET"],
    ),
    route(
        "/fhir/{type}",
        "/fhir/{type}",
        &["GET", "POST", "PUT", "DELETE"],
    ),
    route("/fhir/{type}/_search", "/fhir/{type}/_search", &["POST"]),
    route("/fhir/{type}/_history", "/fhir/{type}/_history", &["GET"]),
    route(
        "/fhir/{type}/{id}",
        "/fhir/{type}/{id}",
        &["GET", "PUT", "PATCH", "DELETE"],
    ),
    route(
        "/fhir/{type}/{id}/_history",
        "/fhir/{type}/{id}/_history",
        &["GET"],
    ),
    route(
        "/fhir/{type}/{id}/_history/{vid}",
        "/fhir/{type}/{id}/_history/{vid}",
        &["GET"],
    ),
    route("/fhir/$export", "/fhir/$export", &["GET"]),
    route(
        "/fhir/{type:Patient}/$export",
        "/fhir/Patient/$export",
        &["GET"],
    ),
    route(
        "/fhir/{type:Group}/{id}/$export",
        "/fhir/Group/{id}/$export",
        &["GET"],
    ),
    route(
        "/fhir/$export-status/{job}",
        "/fhir/$export-status/{job}",
        &["GET", "DELETE"],
    ),
    route(
        "/fhir/$export-file/{job}/{file}",
        "/fhir/$export-file/{job}/{file}",
        &["GET"],
    ),
    route(
        "/fhir/{type:Patient}/{id}/$everything",
        "/fhir/Patient/{id}/$everything",
        &["GET"],
    ),
    route("/admin/sync", "/admin/sync", &["GET"]),
    route("/admin/sync/metrics", "/admin/sync/metrics", &["GET"]),
    route("/admin/sync/retry", "/admin/sync/retry", &["POST"]),
    route(
        "/admin/sync/authorizations",
        "/admin/sync/authorizations",
        &["POST"],
    ),
    route("/kap/v1/patients", "/kap/v1/patients", &["POST"]),
    route("/kap/v1/patients/link", "/kap/v1/patients/link", &["POST"]),
    route(
        "/kap/v1/patients/{id}",
        "/kap/v1/patients/{id}",
        &["GET", "PUT"],
    ),
    route(
        "/kap/v1/patients/{id}/course",
        "/kap/v1/patients/{id}/course",
        &["GET"],
    ),
    route(
        "/kap/v1/patients/{id}/evaluations",
        "/kap/v1/patients/{id}/evaluations",
        &["GET", "POST"],
    ),
    route(
        "/kap/v1/evaluations/{id}",
        "/kap/v1/evaluations/{id}",
        &["GET", "PUT"],
    ),
    route(
        "/kap/v1/patients/{id}/preparation-sessions",
        "/kap/v1/patients/{id}/preparation-sessions",
        &["GET", "POST"],
    ),
    route(
        "/kap/v1/preparation-sessions/{id}",
        "/kap/v1/preparation-sessions/{id}",
        &["GET", "PUT"],
    ),
    route(
        "/kap/v1/patients/{id}/dosing-sessions",
        "/kap/v1/patients/{id}/dosing-sessions",
        &["GET", "POST"],
    ),
    route(
        "/kap/v1/dosing-sessions/{id}",
        "/kap/v1/dosing-sessions/{id}",
        &["GET", "PUT"],
    ),
    route(
        "/kap/v1/patients/{id}/integration-sessions",
        "/kap/v1/patients/{id}/integration-sessions",
        &["GET", "POST"],
    ),
    route(
        "/kap/v1/integration-sessions/{id}",
        "/kap/v1/integration-sessions/{id}",
        &["GET", "PUT"],
    ),
    route(
        "/kap/v1/patients/{id}/follow-ups",
        "/kap/v1/patients/{id}/follow-ups",
        &["GET", "POST"],
    ),
    route(
        "/kap/v1/follow-ups/{id}",
        "/kap/v1/follow-ups/{id}",
        &["GET", "PUT"],
    ),
];

/// Registers every route on `cfg` (each one listed in [`ROUTES`]). Paths with a fixed segment come before the patterns they would otherwise match.
/// The router tries resources in this order, each pattern with a regular expression: the FHIR routes, by far the
/// busiest, come first, and the KAP API (which no `/fhir` path can match) last.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let na = || web::route().to(fhir::method_not_allowed);
    cfg.service(
        web::resource("/health/live")
            .route(web::get().to(health::live))
            .default_service(na()),
    )
    .service(
        web::resource("/health/ready")
            .route(web::get().to(health::ready))
            .default_service(na()),
    )
    .service(
        web::resource("/metrics")
            .route(web::get().to(health::metrics))
            .default_service(na()),
    )
    .service(
        web::resource("/openapi.yaml")
            .route(web::get().to(docs::openapi))
            .default_service(na()),
    )
    .service(
        web::resource("/docs")
            .route(web::get().to(docs::page))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/metadata")
            .route(web::get().to(fhir::metadata))
            .default_service(na()),
    )
    // The authorization server; its `/fhir/.well-known/…` paths must come before the `/fhir/{type}/{id}` pattern.
    .service(
        web::resource("/.well-known/smart-configuration")
            .route(web::get().to(oauth::smart_configuration))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/.well-known/smart-configuration")
            .route(web::get().to(oauth::smart_configuration))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/.well-known/openid-configuration")
            .route(web::get().to(oauth::openid_configuration))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/jwks")
            .route(web::get().to(oauth::jwks))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/authorize")
            .route(web::get().to(oauth::authorize))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/login")
            .route(web::post().to(oauth::login))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/patient")
            .route(web::post().to(oauth::patient))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/consent")
            .route(web::post().to(oauth::consent))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/token")
            .route(web::post().to(oauth::token))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/introspect")
            .route(web::post().to(oauth::introspect))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/revoke")
            .route(web::post().to(oauth::revoke))
            .default_service(na()),
    )
    .service(
        web::resource("/auth/launch")
            .route(web::post().to(oauth::launch))
            .default_service(na()),
    )
    .service(
        web::resource("/admin/sync")
            .route(web::get().to(admin::status))
            .default_service(na()),
    )
    .service(
        web::resource("/admin/sync/metrics")
            .route(web::get().to(admin::metrics))
            .default_service(na()),
    )
    .service(
        web::resource("/admin/sync/retry")
            .route(web::post().to(admin::retry))
            .default_service(na()),
    )
    .service(
        web::resource("/admin/sync/authorizations")
            .route(web::post().to(admin::authorize))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir")
            .route(web::post().to(fhir::batch_or_transaction))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/_history")
            .route(web::get().to(fhir::history_system))
            .default_service(na()),
    )
    // $everything and the bulk export, before the `/fhir/{type}…` patterns would take them.
    .configure(crate::bulk::api::routes)
    // $validate and the read-only conformance resources, before the `/fhir/{type}` patterns would take them.
    .service(
        web::resource("/fhir/{type}/$validate")
            .route(web::post().to(conformance::validate_type))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type}/{id}/$validate")
            .route(web::post().to(conformance::validate_instance))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type:StructureDefinition|CodeSystem|ValueSet}")
            .route(web::get().to(conformance::search))
            .default_service(web::route().to(conformance::read_only)),
    )
    .service(
        web::resource("/fhir/{type:StructureDefinition|CodeSystem|ValueSet}/{id}")
            .route(web::get().to(conformance::read))
            .default_service(web::route().to(conformance::read_only)),
    )
    .service(
        web::resource("/fhir/{type}")
            .route(web::get().to(fhir::search))
            .route(web::post().to(fhir::create))
            .route(web::put().to(fhir::conditional_update))
            .route(web::delete().to(fhir::conditional_delete))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type}/_search")
            .route(web::post().to(fhir::search_post))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type}/_history")
            .route(web::get().to(fhir::history_type))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type}/{id}")
            .route(web::get().to(fhir::read))
            .route(web::put().to(fhir::update))
            .route(web::patch().to(fhir::patch))
            .route(web::delete().to(fhir::delete))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type}/{id}/_history")
            .route(web::get().to(fhir::history_instance))
            .default_service(na()),
    )
    .service(
        web::resource("/fhir/{type}/{id}/_history/{vid}")
            .route(web::get().to(fhir::vread))
            .default_service(na()),
    );
    kap::routes(cfg);
}

/// The application, as a pure function of its state.
pub fn create_app(
    state: AppState,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let auth = &state.config.auth;
    let oauth_settings = crate::auth::server::OAuthSettings {
        access_token_secs: auth.access_token_secs,
        backend_token_secs: auth.backend_token_secs,
        refresh_token_secs: auth.refresh_token_days.saturating_mul(86_400),
        ..crate::auth::server::OAuthSettings::default()
    };
    let builtin = auth.builtin;
    App::new()
        .app_data(web::Data::new(oauth_settings))
        .app_data(web::Data::new(state))
        // Path and query extractor failures become OperationOutcomes like every other error.
        .app_data(web::PathConfig::default().error_handler(|err, _req| {
            crate::error::Error::bad_request(format!("Bad path: {err}")).into()
        }))
        .wrap(actix_web::middleware::from_fn(audit::audit_requests))
        // One span, one log line and the metrics of every request (outside the audit, which it times too).
        .wrap(actix_web::middleware::from_fn(
            crate::telemetry::trace_requests,
        ))
        // Browser-based SMART apps call from other origins. Bearer tokens (never cookies) authorize the FHIR API,
        // so any origin may call it; the authorization pages are not framed or scripted cross-origin.
        .wrap(
            actix_cors::Cors::default()
                .allow_any_origin()
                .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE"])
                .allowed_headers([
                    actix_web::http::header::AUTHORIZATION,
                    actix_web::http::header::CONTENT_TYPE,
                    actix_web::http::header::ACCEPT,
                    actix_web::http::header::IF_MATCH,
                    actix_web::http::header::IF_NONE_MATCH,
                    actix_web::http::header::HeaderName::from_static("if-none-exist"),
                    actix_web::http::header::HeaderName::from_static("prefer"),
                ])
                .expose_headers([
                    actix_web::http::header::ETAG,
                    actix_web::http::header::LOCATION,
                    actix_web::http::header::LAST_MODIFIED,
                    actix_web::http::header::WWW_AUTHENTICATE,
                ])
                .max_age(3600),
        )
        .wrap(actix_web::middleware::NormalizePath::new(
            actix_web::middleware::TrailingSlash::Trim,
        ))
        .configure(move |cfg| {
            // With only an external issuer trusted, the built-in server's endpoints do not exist.
            if !builtin {
                cfg.service(web::scope("/auth").default_service(web::route().to(fhir::not_found)))
                    .service(web::resource("/.well-known/smart-configuration").to(fhir::not_found))
                    .service(
                        web::resource("/fhir/.well-known/smart-configuration").to(fhir::not_found),
                    )
                    .service(
                        web::resource("/fhir/.well-known/openid-configuration").to(fhir::not_found),
                    );
            }
        })
        .configure(routes)
        .default_service(web::route().to(fhir::not_found))
}
