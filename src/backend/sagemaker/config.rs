//! The `enrichment.sagemaker` section of a pipeline.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SageMakerConfig {
    /// The endpoint's name.
    pub endpoint: String,
    /// The columns sent, in this order, as one CSV line per row (each must be picked).
    pub input: Vec<String>,
    /// The answer's format: `csv` (default; `text/csv`) or `jsonlines`
    /// (`application/jsonlines`, one JSON value per line).
    #[serde(default)]
    pub accept: SageMakerAccept,
    /// For `jsonlines`: a JSON pointer to the result inside each line's value (default: all of it).
    #[serde(default)]
    pub result_pointer: Option<String>,
    /// The result's type, as Aurora's `RETURNS`: `double`, `bigint`, `varchar(n)` or `json`.
    pub returns: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SageMakerAccept {
    #[default]
    Csv,
    Jsonlines,
}
