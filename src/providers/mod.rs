//! Provider adapters: each owns one upstream's wire format; `classify` is the one place where any
//! upstream failure becomes a public step error.

pub mod classify;
pub mod http;
pub mod juspay;
pub mod juspay_customer;
pub mod juspay_wallet;
pub mod razorpay_upi;
mod registry;

use crate::domain::{Field, StepRequest, Target};
pub use crate::domain::{StepError, StepErrorCode};
use futures_util::future::BoxFuture;
pub use registry::{BuildContext, Providers, Registry};

pub type StepResult = Result<(), StepError>;

/// One upstream API. Object-safe so the registry can hold any adapter, including test doubles of
/// the transport (the tests use the sandbox over real HTTP instead).
pub trait ProviderAdapter: Send + Sync {
    fn target(&self) -> Target;

    /// Builds the step's upstream request from the step and the patch, sends it once and judges
    /// the answer.
    fn apply<'a>(&'a self, request: &'a StepRequest<'a>) -> BoxFuture<'a, StepResult>;

    /// Reads the upstream's current state of every field the step sets (one read, no write).
    fn read<'a>(
        &'a self,
        request: &'a StepRequest<'a>,
    ) -> BoxFuture<'a, Result<Reading, StepError>>;
}

/// Does the upstream already hold what the step sets? Used before resending a write whose outcome
/// is unknown, so no write takes effect twice. A free function over [`ProviderAdapter::read`],
/// not a trait method an adapter could override: the read-back and a dry run's `read=live` judge
/// the same reading by the same rule ([`Reading::holds_all`]).
pub async fn read_back(
    adapter: &dyn ProviderAdapter,
    request: &StepRequest<'_>,
) -> Result<bool, StepError> {
    adapter.read(request).await.map(|r| r.holds_all())
}

/// What one read of the upstream showed of a step's fields. The completer asks only whether it
/// holds them all ([`Reading::holds_all`]); a dry run shows each field. Current values are kept
/// masked only, so no raw upstream value leaves the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The answer named the object asked for: positive evidence, not just a 2xx.
    pub identified: bool,
    pub fields: Vec<FieldReading>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReading {
    pub field: Field,
    /// The upstream's value, masked as the audit trail masks it ([`Field::mask`]); `None`
    /// when the upstream showed none.
    pub current: Option<String>,
    /// The upstream already holds what the step sets for this field.
    pub holds: bool,
}

impl FieldReading {
    /// `raw` is masked here, at the one place a read's value is kept.
    pub fn new(field: Field, raw: Option<&str>, holds: bool) -> Self {
        Self {
            field,
            current: raw.map(|v| field.mask(v)),
            holds,
        }
    }
}

impl Reading {
    pub fn holds_all(&self) -> bool {
        self.identified && self.fields.iter().all(|f| f.holds)
    }
}

/// Sends a request and returns the answer when it is a 2xx; every other outcome becomes the step
/// error `classify` says, with `facts` reading the provider's error envelope.
pub async fn exchange(
    target: Target,
    request: reqwest::RequestBuilder,
    read: &http::ReadLimits,
    facts: fn(&[u8]) -> classify::ErrorFacts,
) -> Result<http::UpstreamResponse, StepError> {
    // Split to add the trace context and trace the exchange as a client span; the request is
    // then sent exactly as built.
    let (client, built) = request.build_split();
    let Ok(mut built) = built else {
        return Err(classify::transport_failure(
            target,
            http::TransportError::Broken { status: None },
        ));
    };
    let span = crate::telemetry::otel::upstream_span(target.as_str(), &mut built);
    let request = reqwest::RequestBuilder::from_parts(client, built);
    let sent = tracing::Instrument::instrument(http::send(request, read), span.clone()).await;
    crate::telemetry::otel::upstream_outcome(&span, sent.as_ref().map(|r| r.status));
    let response = sent.map_err(|e| classify::transport_failure(target, e))?;
    if response.is_success() {
        Ok(response)
    } else {
        Err(classify::http_failure(
            target,
            response.status,
            response.retry_after,
            facts(&response.body),
        ))
    }
}

/// The base URL with `segments` pushed onto its path, each percent-encoded, so an id can never
/// add, remove or climb a path level. Empty and dot-only segments (which URL resolution would
/// drop or turn into "the parent") are refused: links stored before ids were checked at the API
/// may hold them.
pub fn endpoint(
    target: Target,
    base_url: &str,
    segments: &[&str],
) -> Result<reqwest::Url, StepError> {
    let refused = || StepError {
        code: StepErrorCode::UpstreamBadResponse,
        retryable: false,
        outcome_unknown: false,
        upstream_status: None,
        upstream_code: None,
        message: format!(
            "{}: the linked object id cannot be sent in a URL; fix the user's links",
            target.as_str()
        ),
        retry_after: None,
    };
    if segments
        .iter()
        .any(|s| s.is_empty() || s.bytes().all(|b| b == b'.'))
    {
        return Err(refused());
    }
    let mut url = reqwest::Url::parse(base_url).map_err(|_| cannot_build(target))?;
    url.path_segments_mut()
        .map_err(|_| cannot_build(target))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A step its provider cannot build a request for (no provider of that name is registered, or the
/// patch lacks a field the step sets): a bug, reported as a step failure rather than a panic
/// inside a fan-out task.
pub fn cannot_build(target: Target) -> StepError {
    StepError {
        code: StepErrorCode::UpstreamBadResponse,
        retryable: false,
        outcome_unknown: false,
        upstream_status: None,
        upstream_code: None,
        message: format!("{} could not build its request", target.as_str()),
        retry_after: None,
    }
}

/// A credential header, marked so that hyper and reqwest never print it.
pub fn sensitive(value: &str) -> reqwest::header::HeaderValue {
    let mut v = reqwest::header::HeaderValue::from_str(value)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("invalid"));
    v.set_sensitive(true);
    v
}
