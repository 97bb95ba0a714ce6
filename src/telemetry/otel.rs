//! OpenTelemetry traces: the tracer provider built from the standard `OTEL_*` variables, the W3C
//! trace context in and out, and a bounded flush at shutdown.
//!
//! Export runs in the SDK's batch processor, which owns a thread and drives the exporter with a
//! blocking executor. An async HTTP client polled there has no runtime and loses every batch, so
//! the exporter's client hands each request to the application's tokio runtime and only waits for
//! the answer on the processor thread: requests never wait for an export, and every span reaches
//! the collector or is reported lost (the SDK logs failed exports and dropped spans).

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Instrumentation scope of every span the gateway makes.
const SCOPE: &str = "profile-gateway";

/// How long the exporter may take per batch unless `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT` says
/// otherwise (the OTLP default, 10 s, is longer than a pod's shutdown budget allows).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's tracer provider. `exporting` is false when no OTLP endpoint is configured: then
/// no OpenTelemetry layer is installed and nothing is recorded or sent.
pub struct Traces {
    provider: SdkTracerProvider,
    pub exporting: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for trace export: an OTLP endpoint is set and
/// `OTEL_TRACES_EXPORTER` is not `none`.
pub fn export_requested() -> bool {
    let endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
    endpoint.is_some() && !disabled
}

fn export_timeout() -> Duration {
    env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_EXPORT_TIMEOUT)
}

fn resource() -> Resource {
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if named {
        builder.build()
    } else {
        builder.with_service_name("profile-gateway").build()
    }
}

impl Traces {
    /// Builds the provider from the environment. With `export` false (or no endpoint) nothing is
    /// exported; should a layer use it anyway (the benchmark), unless `OTEL_TRACES_SAMPLER` says
    /// otherwise only traces a caller marked sampled are recorded.
    pub fn from_env(export: bool) -> Result<Traces, String> {
        let exporting = export && export_requested();
        let mut builder = SdkTracerProvider::builder().with_resource(resource());
        if !exporting && env("OTEL_TRACES_SAMPLER").is_none() {
            builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        }
        if exporting {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let runtime = tokio::runtime::Handle::try_current()
                .map_err(|_| "trace export needs the tokio runtime".to_string())?;
            let timeout = export_timeout();
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("cannot build the OTLP HTTP client: {e}"))?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(timeout)
                .with_http_client(OnRuntime { runtime, client })
                .build()
                .map_err(|e| format!("OTLP exporter: {e}"))?;
            builder = builder.with_span_processor(BatchSpanProcessor::builder(exporter).build());
        }
        Ok(Traces {
            provider: builder.build(),
            exporting,
        })
    }

    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer(SCOPE)
    }

    /// Flushes what is queued and stops the exporter, waiting at most `bound`. Runs on a blocking
    /// thread: the SDK's shutdown blocks until the processor thread answers.
    pub async fn shutdown(self, bound: Duration) {
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(bound));
        match tokio::time::timeout(bound + Duration::from_millis(250), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "trace export did not flush cleanly at shutdown")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "trace flush task failed"),
            Err(_) => tracing::warn!(
                bound_ms = bound.as_millis() as u64,
                "trace flush did not finish in time; unexported spans are lost"
            ),
        }
    }
}

/// The OTLP exporter's HTTP client: sends on the application's runtime, awaited from the batch
/// processor's thread.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: reqwest::Client,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let sent = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = sent.await??;
        let mut response = Response::builder().status(status).body(body)?;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// The parent context a request's `traceparent` (and `tracestate`) carries, if any.
pub fn extract(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// Writes the span's context as `traceparent` (and `tracestate`) into upstream request headers.
pub fn inject(span: &tracing::Span, headers: &mut reqwest::header::HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new()
            .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
    }
}

/// The trace id the span exports under (lower-case hex), when an OpenTelemetry layer is installed.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// What the change engine knows about an upstream attempt that the transport needs for its span
/// and headers. Set around each attempt (`with_attempt`); an attempt outside the engine gets the
/// defaults.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// Attempts of this step before this one (`http.request.resend_count`).
    pub resend_count: u32,
    /// Whether to send `traceparent` upstream (`telemetry.propagate_trace_context`).
    pub propagate: bool,
}

tokio::task_local! {
    static ATTEMPT: Attempt;
}

pub async fn with_attempt<F: std::future::Future>(attempt: Attempt, f: F) -> F::Output {
    ATTEMPT.scope(attempt, f).await
}

fn current_attempt() -> Attempt {
    ATTEMPT.try_with(|a| *a).unwrap_or(Attempt {
        resend_count: 0,
        propagate: true,
    })
}

/// The client span of one upstream HTTP request, with the semantic-convention attributes known
/// before it is sent; `traceparent` is injected into its headers unless turned off. Neither the
/// URL (it can hold a user's reference) nor any header or body value becomes an attribute.
pub fn upstream_span(provider: &'static str, request: &mut reqwest::Request) -> tracing::Span {
    let attempt = current_attempt();
    let method = request.method().as_str().to_string();
    let url = request.url();
    let span = tracing::info_span!(
        "upstream",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        server.address = url.host_str().unwrap_or(""),
        server.port = i64::from(url.port_or_known_default().unwrap_or(0)),
        profile_gateway.provider = provider,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    // Set on the OpenTelemetry span only (these never go to the logs); the convention sets the
    // resend count only on a resend.
    span.set_attribute("http.request.method", method);
    if attempt.resend_count > 0 {
        span.set_attribute("http.request.resend_count", i64::from(attempt.resend_count));
    }
    if attempt.propagate {
        inject(&span, request.headers_mut());
    }
    span
}

/// A transport failure of an upstream request, as its client span records it.
pub trait UpstreamFailure {
    /// The status, when one arrived before the failure.
    fn status(&self) -> Option<u16>;
    /// The span's `error.type`.
    fn error_type(&self) -> &'static str;
}

/// How an upstream request ended, on its client span: the status, and `error.type` (the status
/// code for an HTTP error, the transport failure otherwise).
pub fn upstream_outcome<E: UpstreamFailure>(span: &tracing::Span, outcome: Result<u16, &E>) {
    let (status, error) = match outcome {
        Ok(s) if s >= 400 => (Some(s), Some(s.to_string())),
        Ok(s) => (Some(s), None),
        Err(e) => (e.status(), Some(e.error_type().to_string())),
    };
    if let Some(s) = status {
        span.record("http.response.status_code", i64::from(s));
    }
    if let Some(e) = error {
        span.record("error.type", e.as_str());
        span.record("otel.status_code", "error");
    }
}
