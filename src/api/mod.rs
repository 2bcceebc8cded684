//! The HTTP layer: actix-web handlers only (extract → one call → respond) for `/fhir` and `/health`, and the
//! composition of the application (`create_app`) used by `main` and by the tests alike.

pub mod fhir;
pub mod guard;
pub mod health;
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
    pub capability: CapabilityInput,
    pub auth: Authenticator,
}

/// Registers every route on `cfg`. Paths with a fixed segment come before the patterns they would otherwise match.
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
        web::resource("/fhir/metadata")
            .route(web::get().to(fhir::metadata))
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
    App::new()
        .app_data(web::Data::new(state))
        // Path and query extractor failures become OperationOutcomes like every other error.
        .app_data(web::PathConfig::default().error_handler(|err, _req| {
            crate::error::Error::bad_request(format!("Bad path: {err}")).into()
        }))
        .wrap(actix_web::middleware::NormalizePath::new(
            actix_web::middleware::TrailingSlash::Trim,
        ))
        .configure(routes)
        .default_service(web::route().to(fhir::not_found))
}
