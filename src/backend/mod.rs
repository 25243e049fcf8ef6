//! Inference backends. A backend takes a batch of inputs and answers one result per input;
//! every failure is classified once, here at the boundary, into an [`ErrorKind`] on which
//! the caller decides to retry (never on message text).

pub mod aws;
pub mod bedrock;
pub mod comprehend;
pub mod sagemaker;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Map, Value};

/// What kind of failure, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The service asks us to slow down: retry later, with backoff. Never a dead letter.
    Throttled,
    /// The call took longer than the attempt timeout: retry.
    Timeout,
    /// 5xx, a dropped connection, an unreadable answer from the transport: retry.
    Transient,
    /// Credentials refused, a model or endpoint not found or not allowed: an operator has to
    /// fix it. Retried (slowly, with a warning) so that no row is lost meanwhile.
    Denied,
    /// The answer came but cannot be used (not the expected JSON, the wrong number of lines):
    /// retried up to the pipeline's `parse_attempts`, then a dead letter.
    BadOutput,
    /// The input cannot be processed (too long, empty, unsupported language): do not retry.
    BadInput,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`] (for per-kind counters).
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Throttled,
        ErrorKind::Timeout,
        ErrorKind::Transient,
        ErrorKind::Denied,
        ErrorKind::BadOutput,
        ErrorKind::BadInput,
    ];

    /// Retried for as long as it takes (the lag grows and shows; never a dead letter).
    pub fn transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Timeout | ErrorKind::Transient | ErrorKind::Denied
        )
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transient => "transient",
            ErrorKind::Denied => "denied",
            ErrorKind::BadOutput => "bad_output",
            ErrorKind::BadInput => "bad_input",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{backend} {operation}: {message} ({})", kind.as_str())]
pub struct BackendError {
    pub backend: &'static str,
    pub operation: String,
    pub kind: ErrorKind,
    pub message: String,
    /// A server's Retry-After, where it gave one.
    pub retry_after: Option<Duration>,
}

/// One input to enrich: a document (Comprehend), a CSV line (SageMaker) or a rendered prompt
/// (Bedrock).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub text: String,
    /// The language code (Comprehend); empty for the others.
    pub language: String,
}

/// The enrichment of one input, or why it failed.
pub type ItemResult = Result<Map<String, Value>, BackendError>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Backend: Send + Sync {
    /// `comprehend`, `sagemaker`, `bedrock`.
    fn name(&self) -> &'static str;
    /// What produced the answer, first in every record's `enrichment`: the backend and its
    /// operation, endpoint or model.
    fn labels(&self) -> Map<String, Value>;
    /// Everything besides the input that changes the answer (operation, endpoint, model,
    /// parameters): part of the cache key.
    fn cache_scope(&self) -> String;
    /// At most this many inputs per call.
    fn max_batch(&self) -> usize;
    /// At most this many bytes of input text per call.
    fn max_batch_bytes(&self) -> usize {
        usize::MAX
    }
    /// Tokens a call for `input` may use at most (its input estimate plus the answer's
    /// ceiling), for a tokens-per-minute limit; `None` where the service counts no tokens.
    fn token_estimate(&self, _input: &Input) -> Option<u64> {
        None
    }
    /// One call for the whole batch: `Err` when the call itself failed (then every item is
    /// retried or failed together), else one result per input, in order.
    fn call<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> BoxFuture<'a, Result<Vec<ItemResult>, BackendError>>;
}

/// The shortest decimal form of an f32 score (0.9, not 0.8999999761581421).
pub fn score(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// The backend a pipeline's `enrichment` names.
pub async fn build(
    e: &crate::config::pipeline::EnrichmentConfig,
) -> Result<std::sync::Arc<dyn Backend>, String> {
    use crate::config::pipeline::BackendConfig;
    Ok(match e.backend() {
        Some(BackendConfig::Comprehend(c)) => {
            std::sync::Arc::new(comprehend::Comprehend::new(e, c).await)
        }
        Some(BackendConfig::SageMaker(s)) => {
            std::sync::Arc::new(sagemaker::SageMaker::new(e, s).await?)
        }
        Some(BackendConfig::Bedrock(b)) => std::sync::Arc::new(bedrock::Bedrock::new(e, b).await?),
        None => return Err("enrichment names no backend".into()),
    })
}

/// The quota a backend's calls draw on: the backend and what its labels name (operation,
/// endpoint or model), in a region at an endpoint. Pipelines with the same key share limits.
pub fn quota_key(backend: &dyn Backend, e: &crate::config::pipeline::EnrichmentConfig) -> String {
    let what: Vec<String> = backend
        .labels()
        .into_iter()
        .skip(1)
        .map(|(_, v)| v.as_str().unwrap_or_default().to_string())
        .collect();
    format!(
        "{}/{}/{}/{}",
        backend.name(),
        what.join("/"),
        e.region.as_deref().unwrap_or("default-region"),
        e.endpoint_url.as_deref().unwrap_or("aws")
    )
}
