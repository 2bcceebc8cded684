//! The API description: `GET /openapi.yaml` (the OpenAPI 3.1 document of the repository, built into the binary)
//! and `GET /docs`, a page that renders it with Swagger UI.
//!
//! The page loads Swagger UI 5.32.0 from the jsDelivr CDN, pinned by Subresource Integrity hashes, so the binary
//! stays small; a browser without access to the CDN still gets a link to the raw document.

use actix_web::HttpResponse;

/// The OpenAPI document, as in the repository.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

const SWAGGER_UI_VERSION: &str = "5.32.0";
const SWAGGER_UI_JS_SRI: &str =
    "sha384-7xcoc6ZKDFF7Ek627QTC3Bg/K+5Y36NJ8MWAE43D2m6+3Sh9XO3tdsfHhrS8gNIQ";
const SWAGGER_UI_CSS_SRI: &str =
    "sha384-3nuX7df3EaAoiqLBeyS1Ola0Gpg9ryJKVtarubwfnA1cOH8AWHUdbPSIvEqPZ9VH";

/// `GET /openapi.yaml`.
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/yaml; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .body(OPENAPI_YAML)
}

/// `GET /docs`: the browsable API reference.
pub async fn page() -> HttpResponse {
    let cdn = format!("https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}");
    let html = format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kap-gateway API</title>
<link rel="stylesheet" href="{cdn}/swagger-ui.css" integrity="{SWAGGER_UI_CSS_SRI}" crossorigin="anonymous">
</head>
<body>
<noscript><p>The API description is <a href="/openapi.yaml">/openapi.yaml</a> (OpenAPI 3.1).</p></noscript>
<div id="swagger-ui"><p>Loading the API reference… The raw description is <a href="/openapi.yaml">/openapi.yaml</a>.</p></div>
<script src="{cdn}/swagger-ui-bundle.js" integrity="{SWAGGER_UI_JS_SRI}" crossorigin="anonymous"></script>
<script>
window.addEventListener("load", function () {{
  if (window.SwaggerUIBundle) {{
    window.ui = SwaggerUIBundle({{ url: "/openapi.yaml", dom_id: "#swagger-ui", deepLinking: true }});
  }}
}});
</script>
</body>
</html>
"##
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("X-Frame-Options", "DENY"))
        .body(html)
}
