//! Inference backends. A backend takes a batch of inputs and answers one result per input;
//! every failure is classified once, here at the boundary, into an [`ErrorKind`] on which
//! the caller decides to retry (never on message text).

pub mod aws;
pub mod bedrock;
pub mod comprehend;
pub mod embedding;
pub mod sagemaker;
pub mod template;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Map, Value};

use bedrock::config::BedrockConfig;
use comprehend::config::ComprehendConfig;
use embedding::config::EmbeddingConfig;
use sagemaker::config::SageMakerConfig;

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
    /// The input cannot be processed (too long, empty, unsupported language, a row the model
    /// container cannot parse): do not retry it alone. A whole call of several inputs that
    /// fails this way is split to find the inputs at fault.
    BadInput,
    /// The answer stopped before it was finished: cut at the output limit (`max_tokens`) or
    /// by a content filter. Not retried (the same call stops at the same place).
    Incomplete,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`] (for per-kind counters).
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Throttled,
        ErrorKind::Timeout,
        ErrorKind::Transient,
        ErrorKind::Denied,
        ErrorKind::BadOutput,
        ErrorKind::BadInput,
        ErrorKind::Incomplete,
    ];

    /// Retried for as long as it takes (the lag grows and shows; never a dead letter).
    pub fn transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Timeout | ErrorKind::Transient | ErrorKind::Denied
        )
    }

    /// A whole call of several inputs that failed with this kind may have failed for one of
    /// them: it is split in halves (then halves again) until the inputs that fail alone are
    /// found, so good rows never share a poison row's fate.
    pub fn splittable(self) -> bool {
        matches!(self, ErrorKind::BadInput | ErrorKind::BadOutput)
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
            ErrorKind::Incomplete => "incomplete",
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
    /// The tokens a model call used though its answer could not be used (Bedrock: not the
    /// JSON or the schema asked for): counted in the metrics, the tokens-per-minute quota and
    /// the budget like an answer's. (Boxed: errors stay small.)
    pub usage: Option<Box<Usage>>,
}

impl BackendError {
    /// The same error, carrying the tokens the call used.
    pub fn with_usage(self, usage: Usage) -> BackendError {
        BackendError {
            usage: Some(Box::new(usage)),
            ..self
        }
    }
}

/// One input to enrich: a document (Comprehend), a CSV line (SageMaker) or a rendered prompt
/// (Bedrock).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub text: String,
    /// The language code (Comprehend); empty for the others.
    pub language: String,
}

/// Why a model stopped answering, as the service said it (Converse `stopReason`, Anthropic
/// `stop_reason`, Titan `completionReason`) and what that means here.
#[derive(Debug, Clone, PartialEq)]
pub struct StopReason {
    /// The service's own word: `end_turn`, `max_tokens`, `LENGTH`, `FINISHED`, …
    pub raw: String,
    pub class: StopClass,
}

/// What a stop reason means for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopClass {
    /// The model finished (`end_turn`, `FINISHED`).
    Finished,
    /// Stopped at one of the request's stop sequences: finished as asked.
    StopSequence,
    /// Cut at the output limit (`max_tokens`, `LENGTH`, the context window): incomplete.
    MaxTokens,
    /// Withheld or cut by a content filter or guardrail: incomplete.
    Filtered,
    /// Anything else (`tool_use`, a reason this version does not know).
    Other,
}

impl StopClass {
    /// Every class, in the order of [`StopClass::index`] (for per-class counters).
    pub const ALL: [StopClass; 5] = [
        StopClass::Finished,
        StopClass::StopSequence,
        StopClass::MaxTokens,
        StopClass::Filtered,
        StopClass::Other,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StopClass::Finished => "finished",
            StopClass::StopSequence => "stop_sequence",
            StopClass::MaxTokens => "max_tokens",
            StopClass::Filtered => "filtered",
            StopClass::Other => "other",
        }
    }
}

/// Tokens a model call used, as the service reported them, and why the model stopped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Usage {
    /// Input tokens not read from the prompt cache.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache (Anthropic `cache_read_input_tokens`, Converse
    /// `cacheReadInputTokens`).
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache (Anthropic `cache_creation_input_tokens`,
    /// Converse `cacheWriteInputTokens`).
    pub cache_write_tokens: u64,
    pub stop: Option<StopReason>,
}

/// An answer that is not finished, and what the pipeline wants done with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// What stopped it, naming the limit: "the answer was cut at max_tokens (50 tokens) …".
    pub message: String,
    /// Deliver it marked `truncated: true` (the pipeline accepts cut answers); otherwise the
    /// row is a dead letter of kind [`ErrorKind::Incomplete`].
    pub deliver: bool,
}

/// The answer for one input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    /// What goes into the record's `enrichment`, after the backend's labels.
    pub fields: Map<String, Value>,
    /// Model calls only (Bedrock).
    pub usage: Option<Usage>,
    /// Set when the answer is not finished: never cached, never passed as finished.
    pub cut: Option<Cut>,
}

impl From<Map<String, Value>> for Answer {
    fn from(fields: Map<String, Value>) -> Answer {
        Answer {
            fields,
            ..Answer::default()
        }
    }
}

/// The enrichment of one input, or why it failed.
pub type ItemResult = Result<Answer, BackendError>;

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
    /// Tokens a call for `input` may use: (its input estimate, the answer's ceiling), for
    /// the tokens-per-minute limit and dry-run estimates; `None` where the service counts no
    /// tokens.
    fn tokens(&self, _input: &Input) -> Option<(u64, u64)> {
        None
    }
    /// Tokens a call for `input` may use at most (its input estimate plus the answer's
    /// ceiling), for a tokens-per-minute limit; `None` where the service counts no tokens.
    fn token_estimate(&self, input: &Input) -> Option<u64> {
        self.tokens(input).map(|(i, o)| i + o)
    }
    /// One call for the whole batch: `Err` when the call itself failed (then the items are
    /// retried together, or the call is split when its kind is
    /// [`splittable`](ErrorKind::splittable)), else one result per input, in order.
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

/// The backend of an enrichment, resolved.
pub enum BackendConfig<'a> {
    Comprehend(&'a ComprehendConfig),
    SageMaker(&'a SageMakerConfig),
    Bedrock(&'a BedrockConfig),
    Embedding(&'a EmbeddingConfig),
}

impl BackendConfig<'_> {
    /// As the pipeline file names it.
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Comprehend(_) => "comprehend",
            BackendConfig::SageMaker(_) => "sagemaker",
            BackendConfig::Bedrock(_) => "bedrock",
            BackendConfig::Embedding(_) => "embedding",
        }
    }

    /// Rows one call may carry: Comprehend's batch APIs take 25 documents (DetectPiiEntities
    /// one), a SageMaker call as many rows as fit its body (10,000 by default, Aurora's
    /// `MAX_BATCH_SIZE`), a Bedrock call one prompt, an embedding call one text (Titan) or 96
    /// (Cohere).
    pub fn max_batch(&self) -> usize {
        match self {
            BackendConfig::Comprehend(c)
                if c.operation == comprehend::config::ComprehendOperation::PiiEntities =>
            {
                1
            }
            BackendConfig::Comprehend(_) => comprehend::MAX_BATCH,
            BackendConfig::SageMaker(_) => sagemaker::DEFAULT_BATCH,
            BackendConfig::Bedrock(_) => 1,
            BackendConfig::Embedding(e) => {
                embedding::Family::resolve(&e.model).map_or(1, embedding::Family::max_batch)
            }
        }
    }

    /// Per-call timeout when the pipeline sets none (as Aurora's `aurora_ml_inference_timeout`):
    /// 30 s, SageMaker 70 s (its own limit is 60 s).
    pub fn default_timeout(&self) -> Duration {
        match self {
            BackendConfig::SageMaker(_) => Duration::from_millis(70_000),
            _ => Duration::from_millis(30_000),
        }
    }

    /// What can be checked of the backend's own section without calling it.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            BackendConfig::Comprehend(_) => Ok(()),
            BackendConfig::SageMaker(s) => sagemaker::validate(s),
            BackendConfig::Bedrock(b) => bedrock::validate(b),
            BackendConfig::Embedding(e) => embedding::validate(e),
        }
    }
}

/// `p` is empty or a JSON pointer (RFC 6901: it starts with `/`).
pub fn check_pointer(what: &str, p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "{what} `{p}` is not a JSON pointer (it starts with `/`)"
        ))
    }
}

/// What every backend's calls need besides its own section.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Where and how the calls authenticate.
    pub aws: aws::AwsSettings,
    /// Per call.
    pub timeout: std::time::Duration,
    /// Rows per call (the pipeline's `max_batch_size` or the backend's default).
    pub max_batch: usize,
    /// Input bytes per call, where set.
    pub max_batch_bytes: Option<usize>,
}

/// The backend a pipeline's `enrichment` names.
pub async fn build(
    backend: BackendConfig<'_>,
    call: &CallSettings,
) -> Result<std::sync::Arc<dyn Backend>, String> {
    Ok(match backend {
        BackendConfig::Comprehend(c) => {
            std::sync::Arc::new(comprehend::Comprehend::new(call, c).await)
        }
        BackendConfig::SageMaker(s) => {
            std::sync::Arc::new(sagemaker::SageMaker::new(call, s).await?)
        }
        BackendConfig::Bedrock(b) => std::sync::Arc::new(bedrock::Bedrock::new(call, b).await?),
        BackendConfig::Embedding(e) => {
            std::sync::Arc::new(embedding::Embedding::new(call, e).await?)
        }
    })
}

/// The quota a backend's calls draw on: the backend and what its labels name (operation,
/// endpoint or model), in a region at an endpoint. Pipelines with the same key share limits.
pub fn quota_key(backend: &dyn Backend, aws: &aws::AwsSettings) -> String {
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
        aws.region.as_deref().unwrap_or("default-region"),
        aws.endpoint_url.as_deref().unwrap_or("aws")
    )
}

/// Cuts `s` to at most `max` UTF-8 bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's numbers (scores, vectors) are read exactly: serde_json's default parser
    /// can be one unit in the last place off; the `float_roundtrip` feature is on.
    #[test]
    fn answer_numbers_are_parsed_exactly() {
        for (text, exact) in [
            ("-0.10268735746339075", -0.102_687_357_463_390_75_f64),
            ("0.014330974336443831", 0.014_330_974_336_443_831),
            ("0.09234319553633355", 0.092_343_195_536_333_55),
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                v.as_f64().map(f64::to_bits),
                Some(exact.to_bits()),
                "{text}"
            );
            assert_eq!(v.to_string(), text);
        }
    }

    #[test]
    fn truncates_at_a_character_boundary() {
        let s = "é".repeat(3000); // 6000 bytes
        let (t, cut) = truncate(&s, 5000);
        assert!(cut);
        assert_eq!(t.len(), 5000);
        let s = format!("a{}", "é".repeat(2500)); // 5001 bytes
        let (t, cut) = truncate(&s, 5000);
        assert_eq!((t.len(), cut), (4999, true));
        assert_eq!(truncate("abc", 5000), ("abc", false));
    }
}
