//! Logs, trace export and metrics. The HTTP edge that uses them per request is `routes::edge`.

use tracing_subscriber::EnvFilter;

pub mod metrics;
pub mod otel;

/// Logs only (no trace export): the one-shot commands and the tests' in-process apps.
pub fn init(format: &str, level: &str) {
    let _ = install(format, level, false);
}

/// Logs and, when an OTLP endpoint is configured, trace export (`serve`). The returned provider
/// must be shut down at exit so queued spans are flushed.
pub fn init_traced(format: &str, level: &str) -> Result<otel::Traces, String> {
    install(format, level, true)
}

fn install(format: &str, level: &str, export: bool) -> Result<otel::Traces, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let traces = otel::Traces::from_env(export)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "pretty" {
        fmt.boxed()
    } else {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    };
    // Spans go to OpenTelemetry by their own filter: a quieter log level must not turn traces
    // off, and only the gateway's own spans are exported (never a dependency's, which could
    // carry SQL or loop through the exporter's own HTTP calls). Without export there is no
    // OpenTelemetry layer at all: it would cost ~15 us per PATCH for spans nobody receives
    // (bench/README.md); trace ids then come from the caller's `traceparent` or are new.
    let otel = traces.exporting.then(|| {
        let spans = tracing_subscriber::filter::Targets::new()
            .with_target("profile_gateway", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(traces.tracer())
            .with_filter(spans)
    });
    // A second init (tests building several apps) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    Ok(traces)
}
