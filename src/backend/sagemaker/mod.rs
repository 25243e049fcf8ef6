//! A SageMaker endpoint through `aws-sdk-sagemakerruntime` InvokeEndpoint: the rows of a batch
//! as RFC 4180 CSV lines in (`text/csv`), one line per row out (CSV or JSON lines), typed as
//! the pipeline says (Aurora's SageMaker functions with `MAX_BATCH_SIZE`).

use aws_sdk_sagemakerruntime::operation::invoke_endpoint::InvokeEndpointError;
use aws_sdk_sagemakerruntime::primitives::Blob;
use serde_json::{Map, Value};

use super::{aws, Backend, BackendError, BoxFuture, ErrorKind, Input, ItemResult};
pub mod config;

use super::CallSettings;
use config::{SageMakerAccept, SageMakerConfig};

/// Rows per call unless the pipeline says otherwise (Aurora's `MAX_BATCH_SIZE` default).
pub const DEFAULT_BATCH: usize = 10_000;
/// InvokeEndpoint's request body limit.
pub const MAX_BODY_BYTES: usize = 6_000_000;

/// The result's type, as Aurora's `RETURNS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Returns {
    Double,
    Bigint,
    Varchar(usize),
    Json,
}

impl Returns {
    pub fn parse(s: &str) -> Result<Returns, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "double" => return Ok(Returns::Double),
            "bigint" => return Ok(Returns::Bigint),
            "json" => return Ok(Returns::Json),
            _ => {}
        }
        if let Some(n) = t.strip_prefix("varchar(").and_then(|r| r.strip_suffix(')')) {
            if let Ok(n) = n.trim().parse::<usize>() {
                if n > 0 {
                    return Ok(Returns::Varchar(n));
                }
            }
        }
        Err(format!(
            "`{s}` is not a type; use double, bigint, varchar(n) or json"
        ))
    }

    /// Types one answer: a CSV field (text) or a JSON value.
    pub fn value(self, v: Value) -> Result<Value, String> {
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match self {
            Returns::Json => Ok(match v {
                Value::String(s) => serde_json::from_str(&s)
                    .map_err(|e| format!("`{}` is not JSON: {e}", clip(&s)))?,
                other => other,
            }),
            Returns::Double => text(&v)
                .and_then(|s| s.trim().parse::<f64>().ok())
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("`{}` is not a double", clip(&v_text(&v)))),
            Returns::Bigint => text(&v)
                .and_then(|s| s.trim().parse::<i64>().ok())
                .map(Value::from)
                .ok_or_else(|| format!("`{}` is not a bigint", clip(&v_text(&v)))),
            Returns::Varchar(n) => {
                let s = text(&v).ok_or_else(|| format!("`{}` is not text", clip(&v_text(&v))))?;
                let len = s.chars().count();
                if len > n {
                    return Err(format!("{len} characters do not fit varchar({n})"));
                }
                Ok(Value::String(s))
            }
        }
    }
}

/// Whether a validation message is about the endpoint itself, not about the request's rows:
/// it begins with "Endpoint NAME" — missing ("Endpoint NAME of account N not found.") or not
/// serving in its state (being created, updated or rolled back: "Endpoint NAME is in Updating
/// state…", "… is not in service") — which waiting for the operator cures and no row causes.
/// Endpoint names are case-insensitive.
fn names_endpoint(message: &str, endpoint: &str) -> bool {
    let Some(rest) = message.strip_prefix("Endpoint ") else {
        return false;
    };
    let named = rest
        .get(..endpoint.len())
        .is_some_and(|n| n.eq_ignore_ascii_case(endpoint));
    let after = rest.get(endpoint.len()..).unwrap_or("");
    named && (after.is_empty() || after.starts_with([' ', '.', ':', ',']))
}

fn v_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn clip(s: &str) -> String {
    super::truncate(s, 80).0.to_string()
}

/// One row's values as an RFC 4180 CSV line (no line end), written by the `csv` crate: NULL is
/// an empty field; a field holding `,` `"` CR or LF is quoted, with `"` doubled (a row of one
/// empty field is `""`, so that the line is not blank).
pub fn csv_line(values: &[Option<&crate::model::ColumnValue>]) -> String {
    let fields: Vec<String> = values
        .iter()
        .map(|v| {
            let mut f = String::new();
            super::template::push_value(&mut f, *v);
            f
        })
        .collect();
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .buffer_capacity(256)
        .from_writer(Vec::new());
    // Writing into a Vec cannot fail, and the fields are UTF-8.
    let bytes = w
        .write_record(&fields)
        .ok()
        .and_then(|()| w.into_inner().ok())
        .unwrap_or_default();
    let mut line = String::from_utf8(bytes).unwrap_or_default();
    line.pop();
    line
}

/// Splits a CSV answer into records of fields (RFC 4180, read by the `csv` crate: quotes
/// respected, CRLF or LF line ends, a final line end optional, a blank line no record). An
/// answer with an odd number of `"` has a quoted field that is not closed: an error.
pub fn csv_records(body: &str) -> Result<Vec<Vec<String>>, String> {
    if body.bytes().filter(|b| *b == b'"').count() % 2 == 1 {
        return Err("a quoted field is not closed".into());
    }
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(body.as_bytes())
        .records()
        .map(|r| {
            r.map(|r| r.iter().map(str::to_string).collect())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// What can be checked of `enrichment.sagemaker` without calling the endpoint.
pub fn validate(s: &SageMakerConfig) -> Result<(), String> {
    if s.endpoint.trim().is_empty() {
        return Err("enrichment.sagemaker.endpoint is empty".into());
    }
    if s.input.is_empty() {
        return Err("enrichment.sagemaker.input names no column".into());
    }
    Returns::parse(&s.returns).map_err(|m| format!("enrichment.sagemaker.returns: {m}"))?;
    if let Some(ptr) = &s.result_pointer {
        if s.accept != SageMakerAccept::Jsonlines {
            return Err("enrichment.sagemaker.result_pointer needs `accept: jsonlines`".into());
        }
        super::check_pointer("enrichment.sagemaker.result_pointer", ptr)?;
    }
    Ok(())
}

pub struct SageMaker {
    client: aws_sdk_sagemakerruntime::Client,
    cfg: SageMakerConfig,
    returns: Returns,
    max_batch: usize,
    max_bytes: usize,
}

impl SageMaker {
    pub async fn new(call: &CallSettings, cfg: &SageMakerConfig) -> Result<SageMaker, String> {
        let sdk = aws::sdk_config(&call.aws, call.timeout).await;
        Ok(SageMaker {
            client: aws_sdk_sagemakerruntime::Client::new(&sdk),
            returns: Returns::parse(&cfg.returns)?,
            cfg: cfg.clone(),
            max_batch: call.max_batch,
            max_bytes: call.max_batch_bytes.unwrap_or(MAX_BODY_BYTES),
        })
    }

    fn err(&self, kind: ErrorKind, message: String) -> BackendError {
        BackendError {
            backend: "sagemaker",
            operation: self.cfg.endpoint.clone(),
            kind,
            message,
            retry_after: None,
            usage: None,
        }
    }

    /// An InvokeEndpoint failure. Beyond [`aws::classify`]: a `ModelError` (424: the model
    /// container answered with an error) is classified by the container's own status
    /// ([`aws::model_error_kind`]; without one it is taken as the input's fault, so a poison
    /// row is isolated rather than retried for ever) and carries the container's message; a
    /// `ValidationError` about the endpoint itself — "Endpoint NAME of account N not found.",
    /// as while it is created or redeployed — waits for the operator (`denied`), since no row
    /// is at fault. Shapes from the InvokeEndpoint API reference, Errors.
    fn classify(
        &self,
        e: &aws_smithy_runtime_api::client::result::SdkError<
            InvokeEndpointError,
            aws_smithy_runtime_api::http::Response,
        >,
    ) -> BackendError {
        let mut err = aws::classify("sagemaker", &self.cfg.endpoint, e);
        let Some(service) = e.as_service_error() else {
            return err;
        };
        match service {
            InvokeEndpointError::ModelError(m) => {
                err.kind = aws::model_error_kind(m.original_status_code(), ErrorKind::BadInput);
                err.message = format!(
                    "ModelError: the model container answered {}: {}",
                    m.original_status_code()
                        .map_or("with no status".to_string(), |s| s.to_string()),
                    m.original_message().or(m.message()).unwrap_or("")
                );
            }
            InvokeEndpointError::ValidationError(v)
                if names_endpoint(v.message().unwrap_or(""), &self.cfg.endpoint) =>
            {
                err.kind = ErrorKind::Denied;
            }
            _ => {}
        }
        err
    }

    /// One raw answer per line of the body.
    fn answers(&self, body: &[u8]) -> Result<Vec<Result<Value, String>>, BackendError> {
        let bad = |m: String| self.err(ErrorKind::BadOutput, m);
        let text =
            std::str::from_utf8(body).map_err(|e| bad(format!("the answer is not UTF-8: {e}")))?;
        match self.cfg.accept {
            SageMakerAccept::Csv => Ok(csv_records(text)
                .map_err(|m| bad(format!("the CSV answer cannot be read: {m}")))?
                .into_iter()
                .map(|mut r| match (r.len(), self.returns) {
                    (1, _) => Ok(Value::String(r.remove(0))),
                    (_, Returns::Json) => {
                        Ok(Value::Array(r.into_iter().map(Value::String).collect()))
                    }
                    (n, _) => Err(format!(
                        "the line has {n} fields; {:?} takes one",
                        self.returns
                    )),
                })
                .collect()),
            SageMakerAccept::Jsonlines => Ok(text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    let v: Value = serde_json::from_str(l)
                        .map_err(|e| format!("`{}` is not JSON: {e}", clip(l)))?;
                    match self.cfg.result_pointer.as_deref() {
                        None | Some("") => Ok(v),
                        Some(p) => v
                            .pointer(p)
                            .cloned()
                            .ok_or_else(|| format!("no value at {p} in `{}`", clip(l))),
                    }
                })
                .collect()),
        }
    }
}

impl Backend for SageMaker {
    fn name(&self) -> &'static str {
        "sagemaker"
    }

    fn labels(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("backend".into(), "sagemaker".into());
        m.insert("endpoint".into(), self.cfg.endpoint.clone().into());
        m
    }

    fn cache_scope(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{}",
            self.cfg.endpoint, self.cfg.accept, self.cfg.result_pointer, self.cfg.returns
        )
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn max_batch_bytes(&self) -> usize {
        self.max_bytes
    }

    fn call<'a>(
        &'a self,
        inputs: &'a [Input],
    ) -> BoxFuture<'a, Result<Vec<ItemResult>, BackendError>> {
        Box::pin(async move {
            let mut body = String::with_capacity(inputs.iter().map(|i| i.text.len() + 1).sum());
            for i in inputs {
                body.push_str(&i.text);
                body.push('\n');
            }
            let accept = match self.cfg.accept {
                SageMakerAccept::Csv => "text/csv",
                SageMakerAccept::Jsonlines => "application/jsonlines",
            };
            let out = self
                .client
                .invoke_endpoint()
                .endpoint_name(&self.cfg.endpoint)
                .content_type("text/csv")
                .accept(accept)
                .body(Blob::new(body.into_bytes()))
                .send()
                .await
                .map_err(|e| self.classify(&e))?;
            let answers = self.answers(out.body().map(|b| b.as_ref()).unwrap_or_default())?;
            if answers.len() != inputs.len() {
                return Err(self.err(
                    ErrorKind::BadOutput,
                    format!(
                        "sent {} rows, the endpoint answered {} lines; a batch is never aligned by guess",
                        inputs.len(),
                        answers.len()
                    ),
                ));
            }
            Ok(answers
                .into_iter()
                .map(|a| {
                    let v = a
                        .and_then(|v| self.returns.value(v))
                        .map_err(|m| self.err(ErrorKind::BadOutput, m))?;
                    let mut m = Map::new();
                    m.insert("result".into(), v);
                    Ok(m.into())
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_lines_quote_what_needs_quoting() {
        use crate::model::ColumnValue as V;
        let (a, b, c, d) = (
            V::Text("plain".into()),
            V::Text("a,b".into()),
            V::Text("say \"hi\"\nbye".into()),
            V::Float(2.5),
        );
        assert_eq!(
            csv_line(&[Some(&a), Some(&b), Some(&c), None, Some(&d)]),
            "plain,\"a,b\",\"say \"\"hi\"\"\nbye\",,2.5"
        );
    }

    #[test]
    fn csv_edges_a_lone_null_a_blank_line_a_stray_quote() {
        // A row of one NULL is `""`, not a blank line (which readers skip).
        assert_eq!(csv_line(&[None]), "\"\"");
        assert_eq!(csv_records("\"\"\n").unwrap(), vec![vec![String::new()]]);
        // A blank line is no record: the line count then differs and the call is split.
        assert_eq!(csv_records("1\n\n2\n").unwrap().len(), 2);
        assert!(csv_records("a\"b\n").is_err());
        assert_eq!(
            csv_records("\"a\nb\",1\r\n").unwrap(),
            vec![vec!["a\nb".to_string(), "1".to_string()]]
        );
    }

    #[test]
    fn csv_answers_split_into_records() {
        assert_eq!(
            csv_records("0.5\n\"x,\"\"y\"\"\nz\"\r\n3,4").unwrap(),
            vec![
                vec!["0.5".to_string()],
                vec!["x,\"y\"\nz".to_string()],
                vec!["3".to_string(), "4".to_string()]
            ]
        );
        assert_eq!(csv_records("").unwrap(), Vec::<Vec<String>>::new());
        assert!(csv_records("\"open").is_err());
    }

    #[test]
    fn a_missing_endpoint_is_told_from_a_bad_request() {
        assert!(names_endpoint(
            "Endpoint anomaly of account 123456789012 not found.",
            "anomaly"
        ));
        assert!(names_endpoint("Endpoint anomaly not found.", "anomaly"));
        // Not serving while it is created, updated or rolled back: the operator's, not a row's.
        for state in [
            "Endpoint anomaly is in Updating state and cannot be invoked.",
            "Endpoint ANOMALY is not in service.",
            "Endpoint anomaly: status Creating",
        ] {
            assert!(names_endpoint(state, "anomaly"), "{state}");
        }
        assert!(!names_endpoint(
            "Endpoint anomaly-v2 of account 1 not found.",
            "anomaly"
        ));
        assert!(!names_endpoint(
            "Request payload is larger than 6 MB",
            "anomaly"
        ));
    }

    #[test]
    fn answers_are_typed() {
        assert_eq!(
            Returns::parse("double").unwrap().value(json!(" 0.25")),
            Ok(json!(0.25))
        );
        assert_eq!(
            Returns::parse("BIGINT").unwrap().value(json!("42")),
            Ok(json!(42))
        );
        assert_eq!(
            Returns::parse("varchar(3)").unwrap().value(json!("abc")),
            Ok(json!("abc"))
        );
        assert_eq!(
            Returns::Varchar(2).value(json!("abc")),
            Err("3 characters do not fit varchar(2)".to_string())
        );
        assert_eq!(Returns::Json.value(json!("{\"a\":1}")), Ok(json!({"a": 1})));
        assert_eq!(
            Returns::Double.value(json!("x")),
            Err("`x` is not a double".to_string())
        );
        assert!(Returns::parse("varchar(0)").is_err());
        assert!(Returns::parse("float").is_err());
    }
}
