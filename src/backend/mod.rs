//! Inference backends. A backend takes a batch of inputs and answers one result per input;
//! every failure is classified once, here at the boundary, into an [`ErrorKind`] on which
//! the caller decides to retry (never on message text).

pub mod comprehend;

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
    /// The input cannot be processed (too long, empty, unsupported language): do not retry.
    BadInput,
}

impl ErrorKind {
    pub fn retryable(self) -> bool {
        !matches!(self, ErrorKind::BadInput)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transient => "transient",
            ErrorKind::BadInput => "bad_input",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{backend} {operation}: {message} ({})", kind.as_str())]
pub struct BackendError {
    pub backend: &'static str,
    pub operation: &'static str,
    pub kind: ErrorKind,
    pub message: String,
    /// A server's Retry-After, where it gave one.
    pub retry_after: Option<Duration>,
}

/// One document to enrich.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub text: String,
    pub language: String,
}

/// The enrichment of one input, or why it failed.
pub type ItemResult = Result<Map<String, Value>, BackendError>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Backend: Send + Sync {
    /// `comprehend`, `sagemaker`, `bedrock`.
    fn name(&self) -> &'static str;
    /// The operation or model, for the record and the metrics.
    fn operation(&self) -> &'static str;
    /// At most this many inputs per call.
    fn max_batch(&self) -> usize;
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
