//! The `enrichment.embedding` section of a pipeline.

use serde::Deserialize;

/// A text embedding model on Bedrock, called with InvokeModel.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// The model id: `amazon.titan-embed-text-v2:0` (one text a call) or a Cohere Embed model
    /// (`cohere.embed-english-v3`, `cohere.embed-multilingual-v3`: up to 96 texts a call). A
    /// cross-region inference profile's prefix (`us.`) is allowed.
    pub model: String,
    /// The text to embed: a template over the row's columns (`{description}`,
    /// `{name}: {description}`; `{{` and `}}` are braces).
    pub text: String,
    /// Numbers in the vector. Titan v2: 256, 512 or 1024 (default 1024, sent as
    /// `dimensions`). Cohere: the model's own (1,024; 384 for the `-light-` models) — when
    /// given it is checked against the model and every answer.
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// Titan v2: scale the vector to unit length (`normalize`, default true).
    #[serde(default = "default_normalize")]
    pub normalize: bool,
    /// Cohere: what the texts are for (`input_type`, default `search_document`).
    #[serde(default)]
    pub input_type: Option<CohereInputType>,
}

fn default_normalize() -> bool {
    true
}

/// Cohere Embed's `input_type` (the Bedrock model-parameters page for Cohere Embed).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CohereInputType {
    /// Texts stored to be searched.
    #[default]
    SearchDocument,
    /// A query searched with.
    SearchQuery,
    /// Texts to classify.
    Classification,
    /// Texts to cluster.
    Clustering,
}

impl CohereInputType {
    /// As the request body says it.
    pub fn as_str(self) -> &'static str {
        match self {
            CohereInputType::SearchDocument => "search_document",
            CohereInputType::SearchQuery => "search_query",
            CohereInputType::Classification => "classification",
            CohereInputType::Clustering => "clustering",
        }
    }
}
