//! What a row gives its backend: a document (Comprehend), a CSV line (SageMaker) or a
//! rendered prompt (Bedrock) — or no call at all (a delete, no text, input unchanged).

use crate::model::ColumnValue as Value;

use crate::backend::comprehend::MAX_DOCUMENT_BYTES;
use crate::backend::sagemaker::csv_line;
use crate::backend::template::Template;
use crate::backend::Input;
use crate::config::pipeline::{BackendConfig, EnrichmentConfig, OnTooLong};
use crate::model::record::ChangeRecord;
use crate::model::record::Skip;

use super::window::WindowSpec;

pub enum InputSpec {
    Document {
        text: String,
        language: String,
        language_column: Option<String>,
        on_too_long: OnTooLong,
    },
    Csv {
        columns: Vec<String>,
    },
    Prompt {
        template: Template,
    },
    /// A windowed pipeline: a row's input is its section of the window's prompt.
    Window(std::sync::Arc<WindowSpec>),
}

/// What one record needs.
pub enum Prepared {
    /// No call: the reason goes into the record (`skipped`).
    Skip(Skip),
    /// A call; `truncated` when the text was cut to the service's limit.
    Call { input: Input, truncated: bool },
    /// The input can never be sent (too long under `on_too_long: dead_letter`).
    Reject(String),
}

impl InputSpec {
    pub fn from_config(e: &EnrichmentConfig) -> Result<InputSpec, String> {
        if let Some(w) = &e.window {
            let prompt = match e.backend() {
                Some(BackendConfig::Bedrock(b)) => &b.prompt,
                Some(BackendConfig::Embedding(m)) => &m.text,
                _ => return Err("enrichment.window is for bedrock and embedding".into()),
            };
            let spec = WindowSpec::new(w, Template::parse(prompt)?)?;
            return Ok(InputSpec::Window(std::sync::Arc::new(spec)));
        }
        Ok(match e.backend() {
            Some(BackendConfig::Comprehend(c)) => InputSpec::Document {
                text: c.text.clone(),
                language: c.language.clone(),
                language_column: c.language_column.clone(),
                on_too_long: c.on_too_long,
            },
            Some(BackendConfig::SageMaker(s)) => InputSpec::Csv {
                columns: s.input.clone(),
            },
            Some(BackendConfig::Bedrock(b)) => InputSpec::Prompt {
                template: Template::parse(&b.prompt)?,
            },
            Some(BackendConfig::Embedding(e)) => InputSpec::Prompt {
                template: Template::parse(&e.text)?,
            },
            None => return Err("no backend".into()),
        })
    }

    /// How the input is made, for the lineage: the document column and language settings, the
    /// CSV columns in order, or the template as written. (`on_too_long` is left out: it decides
    /// whether a long text is cut or dead-lettered, not the answer to a text.)
    pub fn describe(&self) -> String {
        match self {
            InputSpec::Document {
                text,
                language,
                language_column,
                ..
            } => format!("document|{text}|{language}|{language_column:?}"),
            InputSpec::Csv { columns } => format!("csv|{}", columns.join(",")),
            InputSpec::Prompt { template } => format!("template|{}", template.source()),
            InputSpec::Window(spec) => spec.describe(),
        }
    }

    /// The columns the input is made of.
    fn columns(&self) -> Vec<&str> {
        match self {
            InputSpec::Document {
                text,
                language_column,
                ..
            } => std::iter::once(text.as_str())
                .chain(language_column.as_deref())
                .collect(),
            InputSpec::Csv { columns } => columns.iter().map(String::as_str).collect(),
            InputSpec::Prompt { template } => template.columns(),
            InputSpec::Window(spec) => spec.columns(),
        }
    }

    /// True when an update left every input column as it was: no call, and no loop when the
    /// daemon writes its own results back to the row. Not for a row that entered the
    /// pipeline's filter with the update: the pipeline has no result for it yet.
    pub fn unchanged(&self, rec: &ChangeRecord) -> bool {
        if rec.filter_change == Some(crate::model::record::FilterChange::Entered) {
            return false;
        }
        match (&rec.before, &rec.after) {
            (Some(b), Some(a)) => self.columns().into_iter().all(|c| b.get(c) == a.get(c)),
            _ => false,
        }
    }

    pub fn prepare(&self, rec: &ChangeRecord) -> Prepared {
        if rec.op == crate::model::Op::Truncate {
            return Prepared::Skip(Skip::Truncated);
        }
        let Some(after) = &rec.after else {
            return Prepared::Skip(Skip::Deleted);
        };
        if self.unchanged(rec) {
            return Prepared::Skip(Skip::InputUnchanged);
        }
        self.prepare_row(after)
    }

    /// What a row image (a new or backfilled row) sends, or why it sends nothing.
    pub fn prepare_row(&self, after: &crate::model::record::Image) -> Prepared {
        match self {
            InputSpec::Document {
                text,
                language,
                language_column,
                on_too_long,
            } => {
                let t = match after.get(text) {
                    Some(Value::Text(t)) if !t.trim().is_empty() => t,
                    _ => return Prepared::Skip(Skip::NoText),
                };
                let (cut, truncated) = crate::backend::truncate(t, MAX_DOCUMENT_BYTES);
                if truncated && *on_too_long == OnTooLong::DeadLetter {
                    return Prepared::Reject(format!(
                        "`{text}` holds {} UTF-8 bytes; Comprehend takes at most {MAX_DOCUMENT_BYTES} (on_too_long: dead_letter)",
                        t.len()
                    ));
                }
                let lang = language_column
                    .as_ref()
                    .and_then(|c| after.get(c))
                    .and_then(Value::as_str)
                    .filter(|l| !l.trim().is_empty())
                    .unwrap_or(language);
                Prepared::Call {
                    input: Input {
                        text: cut.to_string(),
                        language: lang.to_string(),
                    },
                    truncated,
                }
            }
            InputSpec::Csv { columns } => {
                let values: Vec<Option<&Value>> = columns.iter().map(|c| after.get(c)).collect();
                Prepared::Call {
                    input: Input {
                        text: csv_line(&values),
                        language: String::new(),
                    },
                    truncated: false,
                }
            }
            InputSpec::Window(spec) => match spec.section(after) {
                Some(text) => Prepared::Call {
                    input: Input {
                        text,
                        language: String::new(),
                    },
                    truncated: false,
                },
                None => Prepared::Skip(Skip::NoText),
            },
            InputSpec::Prompt { template } => {
                if template.columns().iter().all(|c| is_empty(after, c)) {
                    return Prepared::Skip(Skip::NoText);
                }
                Prepared::Call {
                    input: Input {
                        text: template.render(|c| after.get(c)),
                        language: String::new(),
                    },
                    truncated: false,
                }
            }
        }
    }
}

fn is_empty(row: &crate::model::record::Image, c: &str) -> bool {
    row.get(c).is_none_or(Value::is_blank)
}
