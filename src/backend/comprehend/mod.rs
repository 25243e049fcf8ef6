//! Amazon Comprehend through `aws-sdk-comprehend`: sentiment with BatchDetectSentiment
//! (Aurora's `aws_comprehend_detect_sentiment` and `_confidence` in one answer).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_comprehend::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_comprehend::types::LanguageCode;
use serde_json::{json, Map, Value};

use super::{score, Backend, BackendError, BoxFuture, ErrorKind, Input, ItemResult};
use crate::config::pipeline::ComprehendConfig;

/// The most documents BatchDetect* takes in one call.
pub const MAX_BATCH: usize = 25;
/// The most UTF-8 bytes of one document.
pub const MAX_DOCUMENT_BYTES: usize = 5000;

pub struct Comprehend {
    client: aws_sdk_comprehend::Client,
    max_batch: usize,
}

/// An SDK config from the default chain (environment, profile, IMDS/ECS), with the pipeline's
/// overrides, a rustls/ring HTTPS client, the SDK's own retries off (ours decide by kind) and
/// an attempt timeout (the SDK has none by default).
pub async fn sdk_config(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    timeout: Duration,
) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build(),
        );
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    if let Some(u) = endpoint_url {
        loader = loader.endpoint_url(u);
    }
    loader.load().await
}

impl Comprehend {
    pub async fn new(cfg: &ComprehendConfig) -> Comprehend {
        let sdk = sdk_config(
            cfg.region.as_deref(),
            cfg.endpoint_url.as_deref(),
            Duration::from_millis(cfg.timeout_ms),
        )
        .await;
        Comprehend {
            client: aws_sdk_comprehend::Client::new(&sdk),
            max_batch: cfg.max_batch_size.min(MAX_BATCH),
        }
    }
}

/// The batch position an answer names, if it names one of the documents sent.
fn slot(index: Option<i32>, n: usize) -> Option<usize> {
    index
        .and_then(|i| usize::try_from(i).ok())
        .filter(|i| *i < n)
}

fn err(kind: ErrorKind, message: String) -> BackendError {
    BackendError {
        backend: "comprehend",
        operation: "sentiment",
        kind,
        message,
        retry_after: None,
    }
}

/// Classifies an SDK error once, by its kind: throttling codes, timeouts, transport and 5xx
/// are retryable; other service errors are bad input.
fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: &SdkError<E, aws_sdk_comprehend::config::http::HttpResponse>,
) -> BackendError {
    match e {
        SdkError::TimeoutError(_) => err(ErrorKind::Timeout, "the call timed out".into()),
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                err(ErrorKind::Timeout, "connecting timed out".into())
            } else {
                err(
                    ErrorKind::Transient,
                    format!("cannot reach the endpoint: {d:?}"),
                )
            }
        }
        SdkError::ResponseError(_) => {
            err(ErrorKind::Transient, "the answer could not be read".into())
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("");
            let message = format!("{code}: {}", s.err().message().unwrap_or(""));
            let kind = match code {
                "ThrottlingException"
                | "TooManyRequestsException"
                | "ThrottledException"
                | "RequestLimitExceeded"
                | "ProvisionedThroughputExceededException" => ErrorKind::Throttled,
                _ if status == 429 => ErrorKind::Throttled,
                _ if status >= 500 => ErrorKind::Transient,
                _ => ErrorKind::BadInput,
            };
            let retry_after = s
                .raw()
                .headers()
                .get("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            BackendError {
                retry_after,
                ..err(kind, message)
            }
        }
        other => err(ErrorKind::Transient, format!("{other:?}")),
    }
}

impl Backend for Comprehend {
    fn name(&self) -> &'static str {
        "comprehend"
    }

    fn operation(&self) -> &'static str {
        "sentiment"
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn call<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> BoxFuture<'a, Result<Vec<ItemResult>, BackendError>> {
        Box::pin(async move {
            // One call per language (BatchDetectSentiment takes one language code).
            let language = inputs.first().map(|i| i.language.as_str()).unwrap_or("en");
            let out = self
                .client
                .batch_detect_sentiment()
                .set_text_list(Some(inputs.iter().map(|i| i.text.clone()).collect()))
                .language_code(LanguageCode::from(language))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            let mut results: Vec<Option<ItemResult>> = vec![None; inputs.len()];
            for r in out.result_list() {
                let Some(i) = slot(r.index(), inputs.len()) else {
                    continue;
                };
                let label = r
                    .sentiment()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                let sc = r.sentiment_score();
                let get = |f: fn(&aws_sdk_comprehend::types::SentimentScore) -> Option<f32>| {
                    sc.and_then(f).map(score).unwrap_or(Value::Null)
                };
                let scores = json!({
                    "positive": get(|s| s.positive()),
                    "negative": get(|s| s.negative()),
                    "neutral": get(|s| s.neutral()),
                    "mixed": get(|s| s.mixed()),
                });
                let confidence = scores
                    .get(label.to_ascii_lowercase())
                    .cloned()
                    .unwrap_or(Value::Null);
                let mut m = Map::new();
                m.insert("sentiment".into(), Value::String(label));
                m.insert("confidence".into(), confidence);
                m.insert("scores".into(), scores);
                results[i] = Some(Ok(m));
            }
            for e in out.error_list() {
                let Some(i) = slot(e.index(), inputs.len()) else {
                    continue;
                };
                let code = e.error_code().unwrap_or("");
                let kind = if code == "INTERNAL_SERVER_ERROR" {
                    ErrorKind::Transient
                } else {
                    ErrorKind::BadInput
                };
                results[i] = Some(Err(err(
                    kind,
                    format!("{code}: {}", e.error_message().unwrap_or("")),
                )));
            }
            Ok(results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(err(
                            ErrorKind::Transient,
                            "no result for this document".into(),
                        ))
                    })
                })
                .collect())
        })
    }
}
