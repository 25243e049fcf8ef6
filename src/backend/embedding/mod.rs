//! Text embeddings on Bedrock through InvokeModel: Amazon Titan Text Embeddings v2 (one text a
//! call, `dimensions` 256/512/1024, `normalize`) and Cohere Embed (up to 96 texts a call,
//! `input_type`). Bodies and limits from the Bedrock model-parameters pages of each model.
//! Each answer is the vector as the model gave it (an array of numbers) and its dimension.

use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;
use aws_sdk_bedrockruntime::primitives::Blob;
use serde_json::{json, Map, Value};

use super::{aws, Answer, Backend, BackendError, BoxFuture, CallSettings, ErrorKind, Input, Usage};
use config::EmbeddingConfig;

pub mod config;

/// Texts one Cohere Embed call takes at most.
pub const COHERE_MAX_TEXTS: usize = 96;
/// Titan Text Embeddings v2's dimensions.
pub const TITAN_DIMENSIONS: [u32; 3] = [256, 512, 1024];

/// Which body a model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `amazon.titan-embed-text-v2*`: `{"inputText", "dimensions", "normalize"}`.
    Titan,
    /// `cohere.embed-*`: `{"texts", "input_type"}`.
    Cohere,
}

impl Family {
    /// The family of a model id (a cross-region prefix such as `us.` allowed).
    pub fn resolve(model: &str) -> Result<Family, String> {
        if model.contains("amazon.titan-embed-text-v2") {
            Ok(Family::Titan)
        } else if [
            "cohere.embed-english-v3",
            "cohere.embed-multilingual-v3",
            "cohere.embed-english-light-v3",
            "cohere.embed-multilingual-light-v3",
        ]
        .iter()
        .any(|m| model.contains(m))
        {
            // v3 only: Embed v4 answers another shape (vectors by type, 1,536 numbers).
            Ok(Family::Cohere)
        } else {
            Err(format!(
                "enrichment.embedding.model `{model}`: not an embedding model this version \
                 knows (amazon.titan-embed-text-v2:0, cohere.embed-english-v3, \
                 cohere.embed-multilingual-v3)"
            ))
        }
    }

    /// Texts a call takes.
    pub fn max_batch(self) -> usize {
        match self {
            Family::Titan => 1,
            Family::Cohere => COHERE_MAX_TEXTS,
        }
    }
}

/// The vector's dimension as configured, or the model's own.
pub fn dimensions(c: &EmbeddingConfig) -> Result<u32, String> {
    match Family::resolve(&c.model)? {
        Family::Titan => {
            let d = c.dimensions.unwrap_or(1024);
            if TITAN_DIMENSIONS.contains(&d) {
                Ok(d)
            } else {
                Err(format!(
                    "enrichment.embedding.dimensions {d}: Titan Text Embeddings v2 makes 256, \
                     512 or 1024"
                ))
            }
        }
        Family::Cohere => {
            let own = if c.model.contains("-light-") {
                384
            } else {
                1024
            };
            match c.dimensions {
                Some(d) if d != own => Err(format!(
                    "enrichment.embedding.dimensions {d}: {} makes vectors of {own}",
                    c.model
                )),
                _ => Ok(own),
            }
        }
    }
}

/// What can be checked of `enrichment.embedding` without calling the model.
pub fn validate(c: &EmbeddingConfig) -> Result<(), String> {
    super::template::Template::parse(&c.text)
        .map_err(|m| format!("enrichment.embedding.text: {m}"))?;
    let family = Family::resolve(&c.model)?;
    dimensions(c)?;
    if family == Family::Titan && c.input_type.is_some() {
        return Err("enrichment.embedding.input_type is for Cohere models".into());
    }
    if family == Family::Cohere && !c.normalize {
        return Err(
            "enrichment.embedding.normalize is for Titan models (Cohere's vectors are \
             always as the model makes them)"
                .into(),
        );
    }
    Ok(())
}

/// The embedding backend of one pipeline.
pub struct Embedding {
    client: aws_sdk_bedrockruntime::Client,
    cfg: EmbeddingConfig,
    family: Family,
    dimensions: u32,
    /// Texts a call: the pipeline's `max_batch_size`, at most the model's.
    max_batch: usize,
}

impl Embedding {
    /// A client for the pipeline's region and endpoint; errors name the setting at fault.
    pub async fn new(call: &CallSettings, cfg: &EmbeddingConfig) -> Result<Embedding, String> {
        let sdk = aws::sdk_config(&call.aws, call.timeout).await;
        Ok(Embedding {
            client: aws_sdk_bedrockruntime::Client::new(&sdk),
            family: Family::resolve(&cfg.model)?,
            dimensions: dimensions(cfg)?,
            max_batch: call
                .max_batch
                .clamp(1, Family::resolve(&cfg.model)?.max_batch()),
            cfg: cfg.clone(),
        })
    }

    fn err(&self, kind: ErrorKind, message: String) -> BackendError {
        super::bedrock::error(&self.cfg.model, kind, message)
    }

    fn body(&self, inputs: &[Input]) -> Value {
        match self.family {
            Family::Titan => json!({
                "inputText": inputs.first().map_or("", |i| i.text.as_str()),
                "dimensions": self.dimensions,
                "normalize": self.cfg.normalize,
            }),
            Family::Cohere => json!({
                "texts": inputs.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
                "input_type": self.cfg.input_type.unwrap_or_default().as_str(),
            }),
        }
    }

    /// One InvokeModel call: the model's JSON answer.
    async fn invoke(&self, inputs: &[Input]) -> Result<Value, BackendError> {
        let out = self
            .client
            .invoke_model()
            .model_id(&self.cfg.model)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(self.body(inputs).to_string().into_bytes()))
            .send()
            .await
            .map_err(|e| {
                let original = match e.as_service_error() {
                    Some(InvokeModelError::ModelErrorException(m)) => m.original_status_code(),
                    _ => None,
                };
                super::bedrock::classify(&self.cfg.model, &e, original)
            })?;
        serde_json::from_slice(out.body().as_ref()).map_err(|e| {
            self.err(
                ErrorKind::BadOutput,
                format!("the model's answer is not JSON: {e}"),
            )
        })
    }

    /// A vector of the expected dimension, every element a number.
    fn vector(&self, v: Option<&Value>) -> Result<Vec<Value>, BackendError> {
        let Some(Value::Array(a)) = v else {
            return Err(self.err(
                ErrorKind::BadOutput,
                "the model's answer holds no vector".into(),
            ));
        };
        if a.len() != self.dimensions as usize || !a.iter().all(Value::is_number) {
            return Err(self.err(
                ErrorKind::BadOutput,
                format!(
                    "the model answered a vector of {} elements, not {} numbers",
                    a.len(),
                    self.dimensions
                ),
            ));
        }
        Ok(a.clone())
    }

    fn answer(&self, vector: Vec<Value>, usage: Option<Usage>) -> Answer {
        let mut fields = Map::new();
        fields.insert("embedding".into(), Value::Array(vector));
        fields.insert("dimensions".into(), self.dimensions.into());
        Answer {
            fields,
            usage,
            cut: None,
        }
    }

    /// The vectors of one call's answer, one per input, in order: Titan's `embedding` and
    /// `inputTextTokenCount`, Cohere's `embeddings` (an array per text; Cohere counts no
    /// tokens in the body).
    fn answers(&self, inputs: &[Input], answer: &Value) -> Result<Vec<Answer>, BackendError> {
        match self.family {
            Family::Titan => {
                let tokens = answer.get("inputTextTokenCount").and_then(Value::as_u64);
                let usage = Usage {
                    input_tokens: tokens.unwrap_or(0),
                    ..Usage::default()
                };
                Ok(vec![self.answer(
                    self.vector(answer.get("embedding"))?,
                    Some(usage),
                )])
            }
            Family::Cohere => {
                let Some(Value::Array(all)) = answer.get("embeddings") else {
                    return Err(self.err(
                        ErrorKind::BadOutput,
                        "the model's answer holds no `embeddings` array".into(),
                    ));
                };
                if all.len() != inputs.len() {
                    return Err(self.err(
                        ErrorKind::BadOutput,
                        format!(
                            "sent {} texts, the model answered {} vectors; a batch is never \
                             aligned by guess",
                            inputs.len(),
                            all.len()
                        ),
                    ));
                }
                all.iter()
                    .map(|v| Ok(self.answer(self.vector(Some(v))?, None)))
                    .collect()
            }
        }
    }
}

impl Backend for Embedding {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn labels(&self) -> Map<String, Value> {
        super::bedrock::labels(&self.cfg.model)
    }

    fn cache_scope(&self) -> String {
        let c = &self.cfg;
        // What the request carries: `input_type` as sent (unset is `search_document`).
        let input_type = match self.family {
            Family::Cohere => c.input_type.unwrap_or_default().as_str(),
            Family::Titan => "",
        };
        format!(
            "embedding|{}|{}|{}|{input_type}",
            c.model, self.dimensions, c.normalize
        )
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn tokens(&self, input: &Input) -> Option<(u64, u64)> {
        // About four bytes a token; an embedding has no output tokens.
        (self.family == Family::Titan).then(|| (input.text.len().div_ceil(4) as u64, 0))
    }

    fn call<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> BoxFuture<'a, Result<Vec<super::ItemResult>, BackendError>> {
        Box::pin(async move {
            let answer = self.invoke(inputs).await?;
            Ok(self.answers(inputs, &answer)?.into_iter().map(Ok).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(model: &str, dimensions: Option<u32>) -> EmbeddingConfig {
        EmbeddingConfig {
            model: model.into(),
            text: "{description}".into(),
            dimensions,
            normalize: true,
            input_type: None,
        }
    }

    /// The pipeline's `max_batch_size` is the batch, up to the model's own most.
    #[tokio::test]
    async fn the_pipelines_batch_size_is_honoured_up_to_the_models() {
        let mut call = CallSettings {
            aws: aws::AwsSettings {
                region: Some("us-east-1".into()),
                endpoint_url: Some("http://127.0.0.1:9".into()),
                ..Default::default()
            },
            timeout: std::time::Duration::from_secs(1),
            max_batch: 1,
            max_batch_bytes: None,
        };
        let cohere = cfg("cohere.embed-english-v3", None);
        let e = Embedding::new(&call, &cohere).await.unwrap();
        assert_eq!(e.max_batch(), 1);
        call.max_batch = 500;
        let e = Embedding::new(&call, &cohere).await.unwrap();
        assert_eq!(e.max_batch(), 96);
        let titan = cfg("amazon.titan-embed-text-v2:0", None);
        assert_eq!(Embedding::new(&call, &titan).await.unwrap().max_batch(), 1);
    }

    #[test]
    fn families_and_dimensions() {
        let titan = "amazon.titan-embed-text-v2:0";
        assert_eq!(dimensions(&cfg(titan, None)), Ok(1024));
        assert_eq!(dimensions(&cfg(titan, Some(256))), Ok(256));
        assert!(dimensions(&cfg(titan, Some(300)))
            .unwrap_err()
            .contains("256, 512 or 1024"));
        assert_eq!(
            dimensions(&cfg("us.cohere.embed-english-v3", None)),
            Ok(1024)
        );
        assert_eq!(
            dimensions(&cfg("cohere.embed-english-light-v3", None)),
            Ok(384)
        );
        assert!(dimensions(&cfg("cohere.embed-english-v3", Some(512))).is_err());
        assert_eq!(
            Family::resolve("cohere.embed-multilingual-v3").map(Family::max_batch),
            Ok(96)
        );
        assert!(Family::resolve("amazon.titan-text-express-v1").is_err());
        // Embed v4 answers another shape: refused at load, not dead-lettered row by row.
        assert!(Family::resolve("cohere.embed-v4:0").is_err());
    }
}
