//! A Bedrock foundation model through `aws-sdk-bedrockruntime`: InvokeModel with the model
//! family's own body (Anthropic messages, Amazon Titan text) or the Converse API for any model.
//! One rendered prompt per call; the answer's text taken by a JSON pointer and, with
//! `output: json`, parsed and checked. Token usage is reported with every answer.

use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput, InferenceConfiguration, Message,
    SystemContentBlock,
};
use serde_json::{json, Map, Value};

use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError;

use super::{
    aws, Answer, Backend, BackendError, BoxFuture, Cut, ErrorKind, Input, ItemResult, StopClass,
    StopReason, Usage,
};
pub mod config;
pub mod schema;

use super::CallSettings;
use config::{BedrockApi, BedrockConfig, BedrockOutput, OnMaxTokens, SchemaMode};
use schema::{AnswerSchema, ANSWER_TOOL, ANSWER_TOOL_DESCRIPTION};

/// How a model is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// InvokeModel, Anthropic messages body.
    Anthropic,
    /// InvokeModel, Titan text body.
    Titan,
    /// The Converse API.
    Converse,
}

impl Family {
    pub fn resolve(b: &BedrockConfig) -> Result<Family, String> {
        // Cross-region inference profiles prefix the id: `us.anthropic.…`.
        let id = b.model.as_str();
        let known = if id.contains("anthropic.") {
            Some(Family::Anthropic)
        } else if id.contains("amazon.titan-text") {
            Some(Family::Titan)
        } else {
            None
        };
        match (b.api, known) {
            (Some(BedrockApi::Converse), _) => Ok(Family::Converse),
            (_, Some(f)) => Ok(f),
            (None, None) => Ok(Family::Converse),
            (Some(BedrockApi::Invoke), None) => Err(format!(
                "enrichment.bedrock.model `{id}`: no InvokeModel body is known for its family \
                 (anthropic.*, amazon.titan-text*); use `api: converse`"
            )),
        }
    }

    /// Where the text is in an InvokeModel answer (Anthropic's: every text block, see
    /// [`anthropic_text`]; the pointer is its first).
    fn default_pointer(self) -> &'static str {
        match self {
            Family::Anthropic => "/content/0/text",
            Family::Titan => "/results/0/outputText",
            Family::Converse => "",
        }
    }
}

/// The text of a Claude Messages answer: its `text` content blocks joined in order (other
/// blocks — `thinking`, `tool_use` — left out); `None` when it has none
/// (<https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-anthropic-claude-messages.html>).
fn anthropic_text(answer: &Value) -> Option<String> {
    let mut blocks = answer["content"]
        .as_array()?
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .peekable();
    blocks.peek()?;
    Some(blocks.collect())
}

/// What can be checked of `enrichment.bedrock` without calling the model.
pub fn validate(b: &BedrockConfig) -> Result<(), String> {
    if b.model.trim().is_empty() {
        return Err("enrichment.bedrock.model is empty".into());
    }
    super::template::Template::parse(&b.prompt)
        .map_err(|m| format!("enrichment.bedrock.prompt: {m}"))?;
    if b.max_tokens == 0 {
        return Err("enrichment.bedrock.max_tokens must be above 0".into());
    }
    if let Some(t) = b.temperature {
        if !(0.0..=1.0).contains(&t) {
            return Err(format!(
                "enrichment.bedrock.temperature {t} must be between 0 and 1"
            ));
        }
    }
    if b.fields.is_some() && b.output != BedrockOutput::Json {
        return Err("enrichment.bedrock.fields needs `output: json`".into());
    }
    if let Some(ptr) = &b.result_pointer {
        super::check_pointer("enrichment.bedrock.result_pointer", ptr)?;
    }
    if let Some(s) = &b.schema {
        AnswerSchema::compile(s)?;
    }
    let family = Family::resolve(b)?;
    if b.cache_prompt && b.system.is_none() && b.prefix.is_none() {
        return Err(
            "enrichment.bedrock.cache_prompt caches the system prompt and the prefix: set \
             `system` or `prefix`"
                .into(),
        );
    }
    if b.cache_prompt && family == Family::Titan {
        return Err(format!(
            "enrichment.bedrock.cache_prompt: {} has no prompt caching on InvokeModel; use an \
             Anthropic model, or `api: converse` with a model that caches prompts",
            b.model
        ));
    }
    Ok(())
}

pub struct Bedrock {
    client: aws_sdk_bedrockruntime::Client,
    cfg: BedrockConfig,
    family: Family,
    schema: Option<AnswerSchema>,
}

/// The model's text as JSON: a Markdown code fence around it is removed first.
pub fn parse_json_answer(text: &str, fields: Option<&[String]>) -> Result<Value, String> {
    let t = text.trim();
    let t = match t.strip_prefix("```") {
        Some(rest) => {
            let rest = rest.strip_prefix("json").unwrap_or(rest);
            rest.strip_suffix("```").unwrap_or(rest).trim()
        }
        None => t,
    };
    let v: Value = serde_json::from_str(t).map_err(|e| {
        format!(
            "the model's answer is not JSON ({e}): `{}`",
            super::truncate(text, 120).0
        )
    })?;
    if let Some(fields) = fields {
        let Some(obj) = v.as_object() else {
            return Err("the model's answer is JSON but not an object".into());
        };
        let missing: Vec<&str> = fields
            .iter()
            .filter(|f| !obj.contains_key(*f))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(format!("the model's JSON lacks {}", missing.join(", ")));
        }
    }
    Ok(v)
}

/// A stop reason as the model family says it: Converse `stopReason` (end_turn, stop_sequence,
/// max_tokens, model_context_window_exceeded, guardrail_intervened, content_filtered,
/// tool_use, …), Anthropic `stop_reason` (end_turn, stop_sequence, max_tokens, refusal, …),
/// Titan `completionReason` (FINISHED, LENGTH, STOP_CRITERIA_MET, CONTENT_FILTERED). The
/// services' enumerated values, from the Bedrock API and model-parameter references.
pub fn stop_reason(raw: &str) -> StopReason {
    let class = match raw {
        "end_turn" | "FINISHED" | "FINISH" => StopClass::Finished,
        "stop_sequence" | "STOP_CRITERIA_MET" => StopClass::StopSequence,
        "max_tokens" | "LENGTH" | "model_context_window_exceeded" => StopClass::MaxTokens,
        "content_filtered" | "guardrail_intervened" | "CONTENT_FILTERED" | "refusal" => {
            StopClass::Filtered
        }
        _ => StopClass::Other,
    };
    StopReason {
        raw: raw.to_string(),
        class,
    }
}

/// Whether a validation message says the model cannot be called here as configured — an
/// invalid (not yet available) model id, or a model that needs an inference profile or
/// provisioned throughput — which only an operator can fix (Bedrock API reference, Errors).
fn model_unavailable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("model identifier is invalid") || m.contains("on-demand throughput isn")
}

/// What produced a Bedrock answer, first in the record's enrichment: `{"backend": "bedrock",
/// "model": model}` (text models and embedding models alike).
pub fn labels(model: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("backend".into(), "bedrock".into());
    m.insert("model".into(), model.into());
    m
}

/// A failure of a call to `model` found in its answer (not an SDK error: see [`classify`]).
pub fn error(model: &str, kind: ErrorKind, message: String) -> BackendError {
    BackendError {
        backend: "bedrock",
        operation: model.to_string(),
        kind,
        message,
        retry_after: None,
        usage: None,
    }
}

/// A Bedrock failure of `model`. Beyond [`aws::classify`]: `ModelErrorException` by the
/// model's own status ([`aws::model_error_kind`]; without one, transient), and a validation
/// error saying the model id is invalid — a model not (yet) available here — waits for the
/// operator (`denied`) like `ResourceNotFoundException`. Shapes from the InvokeModel and
/// Converse API references, Errors.
pub fn classify<E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::fmt::Debug>(
    model: &str,
    e: &aws_smithy_runtime_api::client::result::SdkError<E, aws_smithy_runtime_api::http::Response>,
    original_status: Option<i32>,
) -> BackendError {
    let mut err = aws::classify("bedrock", model, e);
    let Some(service) = e.as_service_error() else {
        return err;
    };
    match service.code() {
        Some("ModelErrorException") => {
            err.kind = aws::model_error_kind(original_status, ErrorKind::Transient);
        }
        Some("ValidationException") if model_unavailable(service.message().unwrap_or("")) => {
            err.kind = ErrorKind::Denied;
        }
        _ => {}
    }
    err
}

/// Converse's `toolConfig` with one tool, the answer tool, whose input schema is `schema`, and
/// a `toolChoice` naming it (Converse API reference, ToolConfiguration).
fn answer_tool(
    schema: &Value,
    forced: bool,
) -> Result<
    aws_sdk_bedrockruntime::types::ToolConfiguration,
    aws_sdk_bedrockruntime::error::BuildError,
> {
    use aws_sdk_bedrockruntime::types::{
        SpecificToolChoice, Tool, ToolChoice, ToolConfiguration, ToolInputSchema, ToolSpecification,
    };
    let spec = ToolSpecification::builder()
        .name(ANSWER_TOOL)
        .description(ANSWER_TOOL_DESCRIPTION)
        .input_schema(ToolInputSchema::Json(schema::to_document(schema)))
        .build()?;
    let mut config = ToolConfiguration::builder().tools(Tool::ToolSpec(spec));
    if forced {
        config = config.tool_choice(ToolChoice::Tool(
            SpecificToolChoice::builder().name(ANSWER_TOOL).build()?,
        ));
    }
    config.build()
}

/// Whether a model on Converse takes a `toolChoice` naming one tool (the Converse API
/// reference: Anthropic Claude, Mistral Large and Amazon Nova); others are offered the tool
/// with the default choice (`auto`) and may answer in text, which is then parsed and validated.
fn takes_tool_choice(model: &str) -> bool {
    ["anthropic.", "mistral.mistral-large", "amazon.nova"]
        .iter()
        .any(|f| model.contains(f))
}

impl Bedrock {
    pub async fn new(call: &CallSettings, cfg: &BedrockConfig) -> Result<Bedrock, String> {
        let sdk = aws::sdk_config(&call.aws, call.timeout).await;
        Ok(Bedrock {
            client: aws_sdk_bedrockruntime::Client::new(&sdk),
            family: Family::resolve(cfg)?,
            schema: cfg.schema.as_ref().map(AnswerSchema::compile).transpose()?,
            cfg: cfg.clone(),
        })
    }

    /// The schema to answer through a tool, where the pipeline has one and the API (Converse,
    /// or InvokeModel for Anthropic) has tool use.
    fn tool_schema(&self) -> Option<&serde_json::Value> {
        let s = self.schema.as_ref()?;
        let has_tools = matches!(self.family, Family::Anthropic | Family::Converse);
        (has_tools && self.cfg.schema_mode == SchemaMode::Tool).then_some(&s.schema)
    }

    fn err(&self, kind: ErrorKind, message: String) -> BackendError {
        error(&self.cfg.model, kind, message)
    }

    /// The family's InvokeModel body (Anthropic messages API on Bedrock; Titan text): the
    /// system prompt, the static `prefix` and the row's prompt — with `cache_prompt`, the
    /// system prompt and the prefix marked `cache_control: {type: ephemeral}` (Anthropic
    /// prompt caching); the answer tool where the pipeline has a schema.
    fn invoke_body(&self, prompt: &str) -> Value {
        let c = &self.cfg;
        if self.family != Family::Anthropic {
            let text = [c.system.as_deref(), c.prefix.as_deref(), Some(prompt)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("\n\n");
            let mut g = json!({"maxTokenCount": c.max_tokens});
            if let Some(t) = c.temperature {
                g["temperature"] = json!(t);
            }
            return json!({"inputText": text, "textGenerationConfig": g});
        }
        let block = |text: &str, cached: bool| {
            let mut b = json!({"type": "text", "text": text});
            if cached && c.cache_prompt {
                b["cache_control"] = json!({"type": "ephemeral"});
            }
            b
        };
        let content: Vec<Value> = c
            .prefix
            .iter()
            .map(|p| block(p, true))
            .chain(std::iter::once(block(prompt, false)))
            .collect();
        let mut b = json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": c.max_tokens,
            "messages": [{"role": "user", "content": content}],
        });
        if let Some(s) = &c.system {
            b["system"] = match c.cache_prompt {
                true => json!([block(s, true)]),
                false => json!(s),
            };
        }
        if let Some(t) = c.temperature {
            b["temperature"] = json!(t);
        }
        if let Some(s) = self.tool_schema() {
            b["tools"] = json!([{"name": ANSWER_TOOL,
                "description": ANSWER_TOOL_DESCRIPTION, "input_schema": s}]);
            b["tool_choice"] = json!({"type": "tool", "name": ANSWER_TOOL});
        }
        b
    }

    /// InvokeModel with the family's body: the answer's text, its tokens and stop reason
    /// (Anthropic `stop_reason`, Titan `results[0].completionReason`).
    async fn invoke(&self, prompt: &str) -> Result<(String, Usage), BackendError> {
        let c = &self.cfg;
        let body = self.invoke_body(prompt);
        let out = self
            .client
            .invoke_model()
            .model_id(&c.model)
            .content_type("application/json")
            .accept("application/json")
            .body(Blob::new(body.to_string().into_bytes()))
            .send()
            .await
            .map_err(|e| {
                let original = match e.as_service_error() {
                    Some(InvokeModelError::ModelErrorException(m)) => m.original_status_code(),
                    _ => None,
                };
                self.classify(&e, original)
            })?;
        let answer: Value = serde_json::from_slice(out.body().as_ref()).map_err(|e| {
            self.err(
                ErrorKind::BadOutput,
                format!("the model's answer is not JSON: {e}"),
            )
        })?;
        let pointer = c
            .result_pointer
            .as_deref()
            .unwrap_or(self.family.default_pointer());
        let stop_pointer = match self.family {
            Family::Anthropic => "/stop_reason",
            _ => "/results/0/completionReason",
        };
        let stop = answer
            .pointer(stop_pointer)
            .and_then(Value::as_str)
            .map(stop_reason);
        // A cut or filtered answer may hold no text at all: it is reported as cut, not as an
        // unusable answer to be asked again.
        let cut = stop
            .as_ref()
            .is_some_and(|s| matches!(s.class, StopClass::MaxTokens | StopClass::Filtered));
        // Through the answer tool: its input is the answer (Anthropic `tool_use` content).
        let tool_input = self.tool_schema().and_then(|_| {
            answer["content"]
                .as_array()?
                .iter()
                .find(|b| b["type"] == "tool_use" && b["name"] == ANSWER_TOOL)
                .map(|b| b["input"].to_string())
        });
        let found = match (tool_input, &c.result_pointer, self.family) {
            (Some(input), _, _) => Some(input),
            // Claude may answer in several text blocks (beside `thinking` or `tool_use` ones):
            // the answer is all of its text, as Converse gives it.
            (None, None, Family::Anthropic) => anthropic_text(&answer),
            (None, _, _) => answer.pointer(pointer).map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
        };
        let text = match found {
            Some(t) => t,
            None if cut => String::new(),
            None => {
                let place = match (&c.result_pointer, self.family) {
                    (None, Family::Anthropic) => "no text block in the model's answer".to_string(),
                    _ => format!("no value at {pointer} in the model's answer"),
                };
                return Err(self.err(ErrorKind::BadOutput, place));
            }
        };
        let n = |p: &str| answer.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        let usage = match self.family {
            Family::Anthropic => Usage {
                input_tokens: n("/usage/input_tokens"),
                output_tokens: n("/usage/output_tokens"),
                cache_read_tokens: n("/usage/cache_read_input_tokens"),
                cache_write_tokens: n("/usage/cache_creation_input_tokens"),
                stop,
            },
            _ => Usage {
                input_tokens: n("/inputTextTokenCount"),
                output_tokens: n("/results/0/tokenCount"),
                stop,
                ..Usage::default()
            },
        };
        Ok((text, usage))
    }

    /// The Converse API: the answer's text, its tokens and `stopReason`.
    async fn converse(&self, prompt: &str) -> Result<(String, Usage), BackendError> {
        let c = &self.cfg;
        let internal = |e: aws_sdk_bedrockruntime::error::BuildError| {
            self.err(
                ErrorKind::BadInput,
                format!("cannot build the request: {e}"),
            )
        };
        let cache_point = || {
            aws_sdk_bedrockruntime::types::CachePointBlock::builder()
                .r#type(aws_sdk_bedrockruntime::types::CachePointType::Default)
                .build()
        };
        let mut message = Message::builder().role(ConversationRole::User);
        if let Some(p) = &c.prefix {
            message = message.content(ContentBlock::Text(p.clone()));
            if c.cache_prompt {
                message =
                    message.content(ContentBlock::CachePoint(cache_point().map_err(internal)?));
            }
        }
        let message = message
            .content(ContentBlock::Text(prompt.to_string()))
            .build()
            .map_err(internal)?;
        let mut inference = InferenceConfiguration::builder().max_tokens(c.max_tokens as i32);
        if let Some(t) = c.temperature {
            inference = inference.temperature(t);
        }
        let mut req = self
            .client
            .converse()
            .model_id(&c.model)
            .messages(message)
            .inference_config(inference.build());
        if let Some(s) = &c.system {
            req = req.system(SystemContentBlock::Text(s.clone()));
            if c.cache_prompt {
                req = req.system(SystemContentBlock::CachePoint(
                    cache_point().map_err(internal)?,
                ));
            }
        }
        if let Some(s) = self.tool_schema() {
            let forced = takes_tool_choice(&c.model);
            req = req.tool_config(answer_tool(s, forced).map_err(internal)?);
        }
        let out = req.send().await.map_err(|e| {
            let original = match e.as_service_error() {
                Some(ConverseError::ModelErrorException(m)) => m.original_status_code(),
                _ => None,
            };
            self.classify(&e, original)
        })?;
        if *out.stop_reason() == aws_sdk_bedrockruntime::types::StopReason::MalformedModelOutput {
            return Err(self.err(
                ErrorKind::BadOutput,
                "the model's output was malformed (stopReason malformed_model_output)".into(),
            ));
        }
        let text: String = match out.output() {
            Some(ConverseOutput::Message(m)) => {
                // Through the answer tool, its input is the answer (whatever text the model
                // wrote around the call); otherwise the text.
                let tool = m.content().iter().find_map(|b| match b {
                    ContentBlock::ToolUse(t) if t.name() == ANSWER_TOOL => {
                        Some(schema::from_document(t.input()).to_string())
                    }
                    _ => None,
                });
                tool.unwrap_or_else(|| {
                    m.content()
                        .iter()
                        .filter_map(|b| match b {
                            ContentBlock::Text(t) => Some(t.as_str()),
                            _ => None,
                        })
                        .collect()
                })
            }
            _ => String::new(),
        };
        let stop = stop_reason(out.stop_reason().as_str());
        if text.is_empty() && !matches!(stop.class, StopClass::MaxTokens | StopClass::Filtered) {
            return Err(self.err(ErrorKind::BadOutput, "the model answered no text".into()));
        }
        let n = |v: i32| v.max(0) as u64;
        let usage = match out.usage() {
            Some(u) => Usage {
                input_tokens: n(u.input_tokens()),
                output_tokens: n(u.output_tokens()),
                cache_read_tokens: u.cache_read_input_tokens().map_or(0, n),
                cache_write_tokens: u.cache_write_input_tokens().map_or(0, n),
                stop: Some(stop),
            },
            None => Usage {
                stop: Some(stop),
                ..Usage::default()
            },
        };
        Ok((text, usage))
    }

    fn classify<E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::fmt::Debug>(
        &self,
        e: &aws_smithy_runtime_api::client::result::SdkError<
            E,
            aws_smithy_runtime_api::http::Response,
        >,
        original_status: Option<i32>,
    ) -> BackendError {
        classify(&self.cfg.model, e, original_status)
    }

    /// Whether an answer is unfinished, and what the pipeline wants done with it.
    fn cut(&self, stop: Option<&StopReason>) -> Option<Cut> {
        let stop = stop?;
        match stop.class {
            StopClass::MaxTokens if stop.raw == "model_context_window_exceeded" => Some(Cut {
                message: "the prompt and the answer exceed the model's context window (stop \
                     reason `model_context_window_exceeded`): shorten the prompt or its columns"
                    .into(),
                deliver: self.cfg.on_max_tokens == OnMaxTokens::Accept,
            }),
            StopClass::MaxTokens => Some(Cut {
                message: format!(
                    "the model stopped at max_tokens ({} tokens; stop reason `{}`): the answer \
                     is cut — raise enrichment.bedrock.max_tokens or ask for less",
                    self.cfg.max_tokens, stop.raw
                ),
                deliver: self.cfg.on_max_tokens == OnMaxTokens::Accept,
            }),
            StopClass::Filtered => Some(Cut {
                message: format!(
                    "the model's answer was withheld or cut by a content filter (stop reason `{}`)",
                    stop.raw
                ),
                deliver: false,
            }),
            _ => None,
        }
    }

    /// One prompt. A cut answer is not parsed as JSON (it would fail, and calling again
    /// would cut it at the same place): it is reported as cut, with its text as the result.
    async fn one(&self, input: &Input) -> ItemResult {
        let (text, usage) = match self.family {
            Family::Converse => self.converse(&input.text).await?,
            _ => self.invoke(&input.text).await?,
        };
        let cut = self.cut(usage.stop.as_ref());
        let json = self.cfg.output == BedrockOutput::Json || self.schema.is_some();
        let result = match (json, &cut) {
            (true, None) => {
                // The tokens were spent though the answer is not usable: they go with the error.
                let unusable = |m| self.err(ErrorKind::BadOutput, m).with_usage(usage.clone());
                let v = parse_json_answer(&text, self.cfg.fields.as_deref()).map_err(unusable)?;
                if let Some(s) = &self.schema {
                    s.check(&v).map_err(unusable)?;
                }
                v
            }
            _ => Value::String(text),
        };
        let mut fields = Map::new();
        fields.insert("result".into(), result);
        Ok(Answer {
            fields,
            usage: Some(usage),
            cut,
        })
    }
}

impl Backend for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn labels(&self) -> Map<String, Value> {
        labels(&self.cfg.model)
    }

    fn cache_scope(&self) -> String {
        let c = &self.cfg;
        format!(
            "{}|{:?}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{}|{:?}",
            c.model,
            self.family,
            c.system,
            c.max_tokens,
            c.temperature,
            c.result_pointer,
            c.output,
            c.fields,
            c.schema.as_ref().map(Value::to_string).unwrap_or_default(),
            c.schema_mode,
        ) + &format!("|{:?}", c.prefix)
        // cache_prompt is not part of the scope: caching the prefix does not change answers.
        // on_max_tokens is not part of the scope: a cut answer is never cached.
    }

    fn max_batch(&self) -> usize {
        1
    }

    fn tokens(&self, input: &Input) -> Option<(u64, u64)> {
        let system = self.cfg.system.as_deref().map_or(0, str::len)
            + self.cfg.prefix.as_deref().map_or(0, str::len);
        // About four bytes a token for English text, rounded up; settled on the real count.
        let input = (input.text.len() + system).div_ceil(4) as u64;
        Some((input, u64::from(self.cfg.max_tokens)))
    }

    fn call<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> BoxFuture<'a, Result<Vec<ItemResult>, BackendError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(inputs.len());
            for i in inputs {
                match self.one(i).await {
                    // A failed call fails the whole call (one prompt a call), so that it is
                    // retried or dead-lettered by its kind.
                    Err(e) if inputs.len() == 1 => return Err(e),
                    r => out.push(r),
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_are_unfenced_and_checked() {
        let f = vec!["summary".to_string(), "tone".to_string()];
        assert_eq!(
            parse_json_answer(
                "```json\n{\"summary\": \"s\", \"tone\": \"calm\"}\n```",
                Some(&f)
            ),
            Ok(json!({"summary": "s", "tone": "calm"}))
        );
        assert_eq!(
            parse_json_answer("{\"summary\": \"s\"}", Some(&f)),
            Err("the model's JSON lacks tone".to_string())
        );
        assert!(parse_json_answer("Sure! Here it is", None)
            .unwrap_err()
            .starts_with("the model's answer is not JSON"));
    }

    fn cfg(model: &str, api: Option<BedrockApi>) -> BedrockConfig {
        BedrockConfig {
            model: model.into(),
            api,
            prompt: "{a}".into(),
            system: None,
            max_tokens: 10,
            temperature: None,
            result_pointer: None,
            output: BedrockOutput::Text,
            fields: None,
            schema: None,
            schema_mode: SchemaMode::Tool,
            prefix: None,
            cache_prompt: false,
            on_max_tokens: OnMaxTokens::DeadLetter,
        }
    }

    #[test]
    fn stop_reasons_of_every_family() {
        for (raw, class) in [
            ("end_turn", StopClass::Finished),
            ("FINISHED", StopClass::Finished),
            ("max_tokens", StopClass::MaxTokens),
            ("LENGTH", StopClass::MaxTokens),
            ("model_context_window_exceeded", StopClass::MaxTokens),
            ("stop_sequence", StopClass::StopSequence),
            ("STOP_CRITERIA_MET", StopClass::StopSequence),
            ("content_filtered", StopClass::Filtered),
            ("guardrail_intervened", StopClass::Filtered),
            ("CONTENT_FILTERED", StopClass::Filtered),
            ("refusal", StopClass::Filtered),
            ("tool_use", StopClass::Other),
            ("something_new", StopClass::Other),
        ] {
            assert_eq!(stop_reason(raw).class, class, "{raw}");
            assert_eq!(stop_reason(raw).raw, raw);
        }
    }

    #[test]
    fn an_unavailable_model_is_told_from_a_bad_prompt() {
        assert!(model_unavailable(
            "The provided model identifier is invalid."
        ));
        assert!(model_unavailable(
            "Invocation of model ID anthropic.claude-3-5-sonnet with on-demand throughput isn't supported. Retry your request with the ID or ARN of an inference profile that contains this model."
        ));
        assert!(!model_unavailable("Input is too long for requested model."));
    }

    #[test]
    fn families() {
        assert_eq!(
            Family::resolve(&cfg("anthropic.claude-3-haiku-20240307-v1:0", None)),
            Ok(Family::Anthropic)
        );
        assert_eq!(
            Family::resolve(&cfg("us.anthropic.claude-3-5-sonnet", None)),
            Ok(Family::Anthropic)
        );
        assert_eq!(
            Family::resolve(&cfg("amazon.titan-text-express-v1", None)),
            Ok(Family::Titan)
        );
        assert_eq!(
            Family::resolve(&cfg("meta.llama3-8b-instruct-v1:0", None)),
            Ok(Family::Converse)
        );
        assert_eq!(
            Family::resolve(&cfg("anthropic.claude-v2", Some(BedrockApi::Converse))),
            Ok(Family::Converse)
        );
        assert!(Family::resolve(&cfg("meta.llama3", Some(BedrockApi::Invoke))).is_err());
    }
}
