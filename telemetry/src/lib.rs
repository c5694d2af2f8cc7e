//! Logs and traces for both binaries. Logs: one `fmt` layer on stderr, text
//! or JSON, filtered by `RUST_LOG`. Traces, only when an OTLP endpoint is
//! given: spans with target [`TARGET`] are exported over OTLP/HTTP
//! (protobuf) in batches from a background thread, and W3C `traceparent`
//! carries a trace from the gateway to a backend. With no endpoint those
//! spans are never created ([`exporting`] is false), so the request path
//! pays nothing.

use std::sync::atomic::{AtomicBool, Ordering};

pub mod histogram;
pub use histogram::Histogram;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// The target of spans meant for export (`tracing::info_span!(target: TARGET, …)`).
pub const TARGET: &str = "otel";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint was given).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Log lines on stderr: text, or one JSON object per line (`--log-format`
/// of both binaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Flushes and stops the exporter when dropped (at exit).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // The exporter's HTTP client blocks: never on an async worker.
            let _ = std::thread::spawn(move || p.shutdown()).join();
        }
    }
}

/// Installs the global subscriber. `otlp`: base URL of an OTLP/HTTP
/// receiver (e.g. `http://127.0.0.1:4318`); spans go to `{otlp}/v1/traces`.
pub fn init(service: &str, format: Format, otlp: Option<&str>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        Format::Text => logs.boxed(),
        Format::Json => logs.json().flatten_event(true).boxed(),
    }
    .with_filter(filter);
    let Some(base) = otlp.filter(|s| !s.trim().is_empty()) else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    };
    let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
    let service = service.to_owned();
    let built = endpoint.clone();
    // reqwest's blocking client must not be built on an async worker.
    let provider = std::thread::spawn(move || -> anyhow::Result<SdkTracerProvider> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(built)
            .build()
            .context("building the OTLP exporter")?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service)
                    .build(),
            )
            .build())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the OTLP exporter setup panicked"))??;
    let tracer = provider.tracer("mcp-gateway-telemetry");
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO));
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Makes `span` a child of the trace named by `headers` (`traceparent`,
/// `tracestate`), if they name one.
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Where a span sits in its trace (trace id and span id only), to parent
/// work done later by another task without keeping the span open.
#[derive(Clone, Debug)]
pub struct Parent(opentelemetry::Context);

/// The trace position of `span` (activating it if it was not yet).
pub fn parent_of(span: &tracing::Span) -> Parent {
    use opentelemetry::trace::TraceContextExt as _;
    let sc = span.context().span().span_context().clone();
    Parent(opentelemetry::Context::new().with_remote_span_context(sc))
}

/// Makes `span` a child of `parent`.
pub fn set_parent(span: &tracing::Span, parent: &Parent) {
    let _ = span.set_parent(parent.0.clone());
}

/// Writes the current span's trace context into `headers` (replacing any
/// `traceparent` already there), so the next hop joins the trace.
pub fn inject_current(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}
