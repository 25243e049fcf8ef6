//! Amazon Comprehend through `aws-sdk-comprehend`, with its batch operations: sentiment
//! (Aurora's `aws_comprehend_detect_sentiment` and `_confidence` in one answer), entities,
//! key phrases and the dominant language.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_comprehend::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_comprehend::types::{BatchItemError, LanguageCode};
use serde_json::{json, Map, Value};

use super::{score, Backend, BackendError, BoxFuture, ErrorKind, Input, ItemResult};
use crate::config::pipeline::{ComprehendConfig, ComprehendOperation};

/// The most documents BatchDetect* takes in one call.
pub const MAX_BATCH: usize = 25;
/// The most UTF-8 bytes of one document.
pub const MAX_DOCUMENT_BYTES: usize = 5000;

pub struct Comprehend {
    client: aws_sdk_comprehend::Client,
    op: ComprehendOperation,
    max_batch: usize,
}

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
            op: cfg.operation,
            // DetectPiiEntities has no batch form: one document per call.
            max_batch: if cfg.operation == ComprehendOperation::PiiEntities {
                1
            } else {
                cfg.max_batch_size.min(MAX_BATCH)
            },
        }
    }

    fn err(&self, kind: ErrorKind, message: String) -> BackendError {
        BackendError {
            backend: "comprehend",
            operation: self.operation(),
            kind,
            message,
            retry_after: None,
        }
    }

    /// Classifies an SDK error once, by its kind: throttling codes, timeouts, transport and
    /// 5xx are retryable; other service errors are bad input.
    fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
        &self,
        e: &SdkError<E, aws_sdk_comprehend::config::http::HttpResponse>,
    ) -> BackendError {
        match e {
            SdkError::TimeoutError(_) => self.err(ErrorKind::Timeout, "the call timed out".into()),
            SdkError::DispatchFailure(d) => {
                if d.is_timeout() {
                    self.err(ErrorKind::Timeout, "connecting timed out".into())
                } else {
                    self.err(
                        ErrorKind::Transient,
                        format!("cannot reach the endpoint: {d:?}"),
                    )
                }
            }
            SdkError::ResponseError(_) => {
                self.err(ErrorKind::Transient, "the answer could not be read".into())
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
                    ..self.err(kind, message)
                }
            }
            other => self.err(ErrorKind::Transient, format!("{other:?}")),
        }
    }

    /// One result per input from the answers (by batch index) and the item errors.
    fn assemble(
        &self,
        n: usize,
        answers: Vec<(Option<i32>, Map<String, Value>)>,
        errors: &[BatchItemError],
    ) -> Vec<ItemResult> {
        let mut results: Vec<Option<ItemResult>> = vec![None; n];
        for (index, m) in answers {
            if let Some(i) = slot(index, n) {
                results[i] = Some(Ok(m));
            }
        }
        for e in errors {
            let Some(i) = slot(e.index(), n) else {
                continue;
            };
            let code = e.error_code().unwrap_or("");
            let kind = if code == "INTERNAL_SERVER_ERROR" {
                ErrorKind::Transient
            } else {
                ErrorKind::BadInput
            };
            results[i] = Some(Err(
                self.err(kind, format!("{code}: {}", e.error_message().unwrap_or("")))
            ));
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(self.err(ErrorKind::Transient, "no result for this document".into()))
                })
            })
            .collect()
    }
}

/// The batch position an answer names, if it names one of the documents sent.
fn slot(index: Option<i32>, n: usize) -> Option<usize> {
    index
        .and_then(|i| usize::try_from(i).ok())
        .filter(|i| *i < n)
}

fn offsets(begin: Option<i32>, end: Option<i32>) -> (Value, Value) {
    (
        begin.map(Value::from).unwrap_or(Value::Null),
        end.map(Value::from).unwrap_or(Value::Null),
    )
}

fn sentiment(r: &aws_sdk_comprehend::types::BatchDetectSentimentItemResult) -> Map<String, Value> {
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
    m
}

fn entities(r: &aws_sdk_comprehend::types::BatchDetectEntitiesItemResult) -> Map<String, Value> {
    let list: Vec<Value> = r
        .entities()
        .iter()
        .map(|e| {
            let (b, en) = offsets(e.begin_offset(), e.end_offset());
            json!({"text": e.text(), "type": e.r#type().map(|t| t.as_str()), "score": e.score().map(score), "begin": b, "end": en})
        })
        .collect();
    let mut m = Map::new();
    m.insert("entities".into(), Value::Array(list));
    m
}

fn key_phrases(
    r: &aws_sdk_comprehend::types::BatchDetectKeyPhrasesItemResult,
) -> Map<String, Value> {
    let list: Vec<Value> = r
        .key_phrases()
        .iter()
        .map(|k| {
            let (b, en) = offsets(k.begin_offset(), k.end_offset());
            json!({"text": k.text(), "score": k.score().map(score), "begin": b, "end": en})
        })
        .collect();
    let mut m = Map::new();
    m.insert("key_phrases".into(), Value::Array(list));
    m
}

fn dominant_language(
    r: &aws_sdk_comprehend::types::BatchDetectDominantLanguageItemResult,
) -> Map<String, Value> {
    let mut langs: Vec<(String, f32)> = r
        .languages()
        .iter()
        .map(|l| {
            (
                l.language_code().unwrap_or_default().to_string(),
                l.score().unwrap_or(0.0),
            )
        })
        .collect();
    langs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut m = Map::new();
    m.insert(
        "language".into(),
        langs
            .first()
            .map(|l| Value::String(l.0.clone()))
            .unwrap_or(Value::Null),
    );
    m.insert(
        "confidence".into(),
        langs.first().map(|l| score(l.1)).unwrap_or(Value::Null),
    );
    m.insert(
        "languages".into(),
        Value::Array(
            langs
                .iter()
                .map(|(c, s)| json!({"code": c, "score": score(*s)}))
                .collect(),
        ),
    );
    m
}

fn pii_entities(list: &[aws_sdk_comprehend::types::PiiEntity]) -> Map<String, Value> {
    let list: Vec<Value> = list
        .iter()
        .map(|e| {
            let (b, en) = offsets(e.begin_offset(), e.end_offset());
            json!({"type": e.r#type().map(|t| t.as_str()), "score": e.score().map(score), "begin": b, "end": en})
        })
        .collect();
    let mut m = Map::new();
    m.insert("pii_entities".into(), Value::Array(list));
    m
}

impl Backend for Comprehend {
    fn name(&self) -> &'static str {
        "comprehend"
    }

    fn operation(&self) -> &'static str {
        match self.op {
            ComprehendOperation::Sentiment => "sentiment",
            ComprehendOperation::Entities => "entities",
            ComprehendOperation::KeyPhrases => "key_phrases",
            ComprehendOperation::DominantLanguage => "dominant_language",
            ComprehendOperation::PiiEntities => "pii_entities",
        }
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn call<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> BoxFuture<'a, Result<Vec<ItemResult>, BackendError>> {
        Box::pin(async move {
            let texts: Vec<String> = inputs.iter().map(|i| i.text.clone()).collect();
            // BatchDetect* takes one language code per call.
            let language =
                LanguageCode::from(inputs.first().map(|i| i.language.as_str()).unwrap_or("en"));
            let c = &self.client;
            // The four BatchDetect* operations differ only in their request and their result
            // type: send, classify a failure, and pair each result with its batch index.
            macro_rules! batch {
                ($request:expr, $parse:expr) => {{
                    let out = $request.send().await.map_err(|e| self.classify(&e))?;
                    let answers: Vec<_> = out
                        .result_list()
                        .iter()
                        .map(|r| (r.index(), $parse(r)))
                        .collect();
                    (answers, out.error_list().to_vec())
                }};
            }
            let (answers, errors) = match self.op {
                ComprehendOperation::Sentiment => batch!(
                    c.batch_detect_sentiment()
                        .set_text_list(Some(texts))
                        .language_code(language),
                    sentiment
                ),
                ComprehendOperation::Entities => batch!(
                    c.batch_detect_entities()
                        .set_text_list(Some(texts))
                        .language_code(language),
                    entities
                ),
                ComprehendOperation::KeyPhrases => batch!(
                    c.batch_detect_key_phrases()
                        .set_text_list(Some(texts))
                        .language_code(language),
                    key_phrases
                ),
                ComprehendOperation::PiiEntities => {
                    // One document per call (max_batch is 1 for this operation).
                    let mut answers = Vec::with_capacity(inputs.len());
                    for (i, input) in inputs.iter().enumerate() {
                        let out = c
                            .detect_pii_entities()
                            .text(input.text.clone())
                            .language_code(LanguageCode::from(input.language.as_str()))
                            .send()
                            .await
                            .map_err(|e| self.classify(&e))?;
                        answers.push((i32::try_from(i).ok(), pii_entities(out.entities())));
                    }
                    (answers, Vec::new())
                }
                ComprehendOperation::DominantLanguage => batch!(
                    c.batch_detect_dominant_language()
                        .set_text_list(Some(texts)),
                    dominant_language
                ),
            };
            Ok(self.assemble(inputs.len(), answers, &errors))
        })
    }
}
