//! The `enrichment.bedrock` section of a pipeline.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BedrockConfig {
    /// The model id, e.g. `anthropic.claude-3-haiku-20240307-v1:0`.
    pub model: String,
    /// `invoke` (InvokeModel with the family's own body: `anthropic.*`, `amazon.titan-text*`)
    /// or `converse` (the Converse API, any model). Default: `invoke` for those families,
    /// else `converse`.
    #[serde(default)]
    pub api: Option<BedrockApi>,
    /// The prompt: `{column}` is replaced by the row's value (`{{` and `}}` are braces).
    pub prompt: String,
    /// A system prompt.
    #[serde(default)]
    pub system: Option<String>,
    /// The most tokens the answer may have (required: it bounds cost and the token quota).
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// A JSON pointer to the answer's text in the model's JSON answer (InvokeModel only).
    /// Default: `/content/0/text` (Anthropic), `/results/0/outputText` (Titan).
    #[serde(default)]
    pub result_pointer: Option<String>,
    /// `text` (default) or `json`: the model's text is parsed as JSON (a ``` fence is
    /// removed) and checked for `fields`.
    #[serde(default)]
    pub output: BedrockOutput,
    /// With `output: json`: the fields the object must have.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// An answer cut at `max_tokens`: `dead_letter` (default; the reason names the limit) or
    /// `accept` (delivered marked `truncated: true` with its `stop_reason`). Never cached.
    #[serde(default)]
    pub on_max_tokens: OnMaxTokens,
}

/// What becomes of an answer the model stopped at `max_tokens`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnMaxTokens {
    #[default]
    DeadLetter,
    Accept,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BedrockApi {
    Invoke,
    Converse,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BedrockOutput {
    #[default]
    Text,
    Json,
}
