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
    /// Static text sent before every row's prompt in the user message (instructions, few-shot
    /// examples): the same for every row, so it can be cached (`cache_prompt`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Mark the system prompt and the prefix as a cacheable prompt prefix: Anthropic
    /// `cache_control: {type: ephemeral}` on InvokeModel, a Converse `cachePoint` after each.
    /// Cache reads and writes are reported in `usage` and on `/metrics`, and weigh in budgets
    /// as `budget.cache_read_weight` and `cache_write_weight` say. Default false.
    #[serde(default)]
    pub cache_prompt: bool,
    /// The most tokens the answer may have (required: it bounds cost and the token quota).
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: Option<f32>,
    /// A JSON pointer to the answer's text in the model's JSON answer (InvokeModel only).
    /// Default: every text block of `content`, joined (Anthropic), `/results/0/outputText`
    /// (Titan).
    #[serde(default)]
    pub result_pointer: Option<String>,
    /// `text` (default) or `json`: the model's text is parsed as JSON (a ``` fence is
    /// removed) and checked for `fields`.
    #[serde(default)]
    pub output: BedrockOutput,
    /// With `output: json`: the fields the object must have.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// A JSON Schema the answer must match (an object schema; implies `output: json`). The
    /// model is made to answer through a tool with this input schema where the API has tool
    /// use (`schema_mode: tool`, the default: Converse, and InvokeModel for Anthropic), and
    /// every answer is validated on receipt; one that does not match is asked again up to
    /// `parse_attempts` times, then dead-lettered with the validation error.
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
    /// `tool` (default): enforce `schema` through tool use where the API has it; `validate`:
    /// only validate the answer's text (for Converse models without tool use).
    #[serde(default)]
    pub schema_mode: SchemaMode,
    /// An answer cut at `max_tokens`: `dead_letter` (default; the reason names the limit) or
    /// `accept` (delivered marked `truncated: true` with its `stop_reason`). Never cached.
    #[serde(default)]
    pub on_max_tokens: OnMaxTokens,
}

/// How `schema` is enforced.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchemaMode {
    /// The model answers through a tool whose input schema is `schema` (where the API has tool
    /// use), and the answer is validated.
    #[default]
    Tool,
    /// The answer's text is parsed and validated; no tool is sent.
    Validate,
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
