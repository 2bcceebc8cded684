//! Logs and traces.
//!
//! - **Logs**: one subscriber, text or JSON lines on stderr (`log_format`), filtered by `log_level` (or `RUST_LOG`).
//! - **Traces**: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are
//!   exported by OTLP over HTTP/protobuf. The standard `OTEL_*` variables are honoured: `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS` / `_TIMEOUT` / `_COMPRESSION`, `OTEL_TRACES_SAMPLER` /
//!   `_ARG`, `OTEL_BSP_*` and `OTEL_SDK_DISABLED`.
//! - **One span per request** ([`trace_requests`]): `http.request.method`, `http.route` (the route template, never
//!   the path or query string), `http.response.status_code`, `fhir.interaction` and `client.id`. A W3C
//!   `traceparent` from the caller is continued; outgoing calls carry it on with [`inject_traceparent`].
//!
//! Nothing here records query strings, request or response bodies: search values, names, birth dates and note text
//! never reach a span or a log line.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes the spans not yet sent.
#[must_use = "dropping the guard does not flush pending spans; call shutdown() before exiting"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued and stops the exporter (blocking; at most the OTLP timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("kap-gateway: could not flush the trace exporter: {e}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the `OTEL_*` environment asks for trace export.
pub fn otlp_requested() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Builds the tracer provider of the OTLP/HTTP exporter configured by the `OTEL_*` environment.
fn otlp_provider() -> Result<SdkTracerProvider, String> {
    for var in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Ok(p) = std::env::var(var)
            && p != "http/protobuf"
        {
            return Err(format!(
                "{var}={p} is not supported: the gateway exports OTLP over http/protobuf only"
            ));
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_by_env = env_set("OTEL_SERVICE_NAME")
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    if !named_by_env {
        resource = resource.with_service_name("kap-gateway");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Installs the global log subscriber only (the command-line tools); a second call is a no-op.
pub fn init(level: &str, format: &str) {
    install(level, format, false).shutdown();
}

/// Installs the global subscriber for the server: logs, and span export when the `OTEL_*` environment asks for
/// it, with the W3C trace-context propagator. A second call (as in tests) leaves the first subscriber in place.
pub fn init_with_traces(level: &str, format: &str) -> Telemetry {
    install(level, format, true)
}

/// The target of actix's accept loop, which logs an error when the listening socket is closed under it.
const ACCEPT_LOOP: &str = "actix_server::accept";

/// How many servers in this process are closing their listening socket (see [`ListenerClosing`]).
static LISTENERS_CLOSING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// While one exists, the accept loop's events are not logged: a graceful shutdown closes the listening socket under
/// actix's accept loop (so that new connections are refused at once), which it would report as an accept error at
/// ERROR level, repeatedly, until the server stops. Process-wide: several servers in one process (tests) share it.
pub struct ListenerClosing(());

impl ListenerClosing {
    pub fn start() -> ListenerClosing {
        LISTENERS_CLOSING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ListenerClosing(())
    }
}

impl Drop for ListenerClosing {
    fn drop(&mut self) {
        LISTENERS_CLOSING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Drops the accept loop's events while a listener is closing; decided per event for that target only, so every
/// other call site keeps its cached interest.
fn accept_errors_while_closing<S: tracing::Subscriber>() -> impl tracing_subscriber::layer::Filter<S>
{
    tracing_subscriber::filter::dynamic_filter_fn(|meta: &tracing::Metadata<'_>, _| {
        meta.target() != ACCEPT_LOOP
            || LISTENERS_CLOSING.load(std::sync::atomic::Ordering::Relaxed) == 0
    })
    .with_callsite_filter(|meta| {
        if meta.target() == ACCEPT_LOOP {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    })
}

fn install(level: &str, format: &str, traces: bool) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (provider, otel_error) = if traces && otlp_requested() {
        match otlp_provider() {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    // Each layer has its own filter: a quieter log level does not thin out the traces. Traces take the INFO
    // spans (one per request and its children) and the events inside them.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("kap-gateway"))
            .with_threads(false)
            .with_location(false)
            .with_filter(EnvFilter::new("info"))
            .boxed()
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt_layer = if format == "json" {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter.and(accept_errors_while_closing()))
            .boxed()
    } else {
        fmt.with_filter(filter.and(accept_errors_while_closing()))
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    if let Some(e) = otel_error {
        tracing::error!(error = %e, "trace export is off");
    }
    if installed.is_err() {
        // Another subscriber is in place (a second application in the same process): it keeps its exporter.
        return Telemetry { provider: None };
    }
    if provider.is_some() {
        tracing::info!("exporting traces by OTLP/HTTP");
    }
    Telemetry { provider }
}

struct HeaderExtractor<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut reqwest::header::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Adds the W3C `traceparent` (and `tracestate`) of the current span to the headers of an outgoing request, so
/// the callee's spans join the caller's trace. Call it for every request to an EHR or other service:
///
/// ```no_run
/// # async fn f(client: reqwest::Client) -> reqwest::Result<()> {
/// let mut headers = reqwest::header::HeaderMap::new();
/// kap_gateway::telemetry::inject_traceparent(&mut headers);
/// client.post("https://ehr.example/fhir/Observation").headers(headers).send().await?;
/// # Ok(()) }
/// ```
///
/// Outside a sampled span (or with trace export off) nothing is added.
pub fn inject_traceparent(headers: &mut reqwest::header::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Middleware: the request's span, its `traceparent` parent, its log line and its metrics.
///
/// The span is `INFO` level, named `METHOD /route/{template}`. Handlers' own spans and events are its children.
pub async fn trace_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let started = Instant::now();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    // Labels and span names take only the standard methods: anything else is `OTHER` (bounded cardinality).
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m.to_owned(),
        _ => "OTHER".to_owned(),
    };
    let interaction = crate::api::audit::interaction(req.method(), &route);
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        fhir.interaction = tracing::field::Empty,
        client.id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(req.headers()))
    });
    let _ = span.set_parent(parent);
    if let Some(i) = interaction {
        span.record("fhir.interaction", i);
    }
    let metrics = req
        .app_data::<actix_web::web::Data<crate::api::AppState>>()
        .map(|s| s.metrics.clone());
    let result = next.call(req).instrument(span.clone()).await;
    let status = match &result {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    if let Ok(res) = &result {
        if let Some(access) = res
            .request()
            .extensions()
            .get::<crate::auth::access::Access>()
        {
            span.record("client.id", access.client_id.as_str());
        }
        // A handler may name the interaction more precisely (`batch` rather than `transaction`).
        if let Some(i) = res
            .response()
            .extensions()
            .get::<crate::api::audit::AuditInfo>()
            .and_then(|info| info.interaction)
        {
            span.record("fhir.interaction", i);
        }
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let elapsed = started.elapsed();
    if let Some(m) = metrics {
        m.observe_request(&method, &route, status, elapsed);
    }
    span.in_scope(|| {
        tracing::info!(
            http.response.status_code = status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    });
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    #[test]
    fn inject_writes_the_current_span_as_a_w3c_traceparent() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("outer");
            let _entered = span.enter();
            let mut headers = reqwest::header::HeaderMap::new();
            inject_traceparent(&mut headers);
            let tp = headers["traceparent"].to_str().unwrap().to_owned();
            let parts: Vec<&str> = tp.split('-').collect();
            assert_eq!(parts.len(), 4, "{tp}");
            assert_eq!(parts[0], "00");
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            assert_eq!(parts[1], sc.trace_id().to_string());
            assert_eq!(parts[2], sc.span_id().to_string());
            assert_eq!(parts[3], "01");
        });
    }

    #[test]
    fn without_a_span_nothing_is_injected() {
        let mut headers = reqwest::header::HeaderMap::new();
        inject_traceparent(&mut headers);
        assert!(headers.get("traceparent").is_none());
    }
}
