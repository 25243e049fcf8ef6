//! Amazon Comprehend through `aws-sdk-comprehend`, with its batch operations: sentiment
//! (Aurora's `aws_comprehend_detect_sentiment` and `_confidence` in one answer), entities,
//! key phrases and the dominant language.

use aws_sdk_comprehend::types::{BatchItemError, LanguageCode};
use serde_json::{json, Map, Value};

use super::{aws, score, Backend, BackendError, BoxFuture, ErrorKind, Input, ItemResult};
pub mod config;

use super::CallSettings;
use config::{ComprehendConfig, ComprehendOperation};

/// The most documents BatchDetect* takes in one call.
pub const MAX_BATCH: usize = 25;
/// The most UTF-8 bytes of one document.
pub const MAX_DOCUMENT_BYTES: usize = 5000;

pub struct Comprehend {
    client: aws_sdk_comprehend::Client,
    op: ComprehendOperation,
    max_batch: usize,
}

impl Comprehend {
    pub async fn new(call: &CallSettings, cfg: &ComprehendConfig) -> Comprehend {
        let sdk = aws::sdk_config(&call.aws, call.timeout).await;
        Comprehend {
            client: aws_sdk_comprehend::Client::new(&sdk),
            op: cfg.operation,
            // DetectPiiEntities has no batch form: one document per call.
            max_batch: if cfg.operation == ComprehendOperation::PiiEntities {
                1
            } else {
                call.max_batch.min(MAX_BATCH)
            },
        }
    }

    fn err(&self, kind: ErrorKind, message: String) -> BackendError {
        BackendError {
            backend: "comprehend",
            operation: self.operation().to_string(),
            kind,
            message,
            retry_after: None,
            usage: None,
        }
    }

    fn classify<E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::fmt::Debug>(
        &self,
        e: &aws_smithy_runtime_api::client::result::SdkError<
            E,
            aws_smithy_runtime_api::http::Response,
        >,
    ) -> BackendError {
        aws::classify("comprehend", self.operation(), e)
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
                results[i] = Some(Ok(m.into()));
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

    fn labels(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("backend".into(), "comprehend".into());
        m.insert("operation".into(), self.operation().into());
        m
    }

    fn cache_scope(&self) -> String {
        self.operation().to_string()
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
