//! Authorization in the handler's signature: a handler that takes an `Access` cannot run without a verified
//! bearer token (https://hl7.org/fhir/smart-app-launch/STU2.2/app-launch.html#step-6-app-accesses-clinical-data-via-fhir-api).

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};

use super::AppState;
use crate::auth::access::Access;
use crate::error::Error;

impl FromRequest for Access {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Access, Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let request = req.clone();
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            let state = state
                .ok_or_else(|| Error::internal(anyhow::anyhow!("application state missing")))?;
            let access = state.auth.authenticate(authorization.as_deref()).await?;
            // Kept on the request for the audit trail.
            request.extensions_mut().insert(access.clone());
            Ok(access)
        })
    }
}
