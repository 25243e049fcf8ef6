//! `enrichment.window`: a prompt over a window of rows instead of one call a row.

use serde::Deserialize;

use crate::backend::template::Template;

/// The placeholder of a windowed prompt that the window's rendered rows replace.
pub const ROWS: &str = "rows";
/// The placeholder of a windowed prompt that the window's row count replaces.
pub const COUNT: &str = "count";

/// `enrichment.window`: rows are gathered into windows — by count (`rows`), by commit time
/// (`every`), or both, optionally one window per value of a `group` column — and each window
/// makes one call: the backend's prompt (Bedrock `prompt`, embedding `text`) with `{rows}`
/// replaced by the window's rows, each rendered by `row` and joined by `separator`. One record
/// per window is emitted (`op: "w"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// A window closes when it holds this many rows.
    #[serde(default)]
    pub rows: Option<usize>,
    /// A window spans this much commit time (`30s`, `5m`, `1h`; aligned to the Unix epoch):
    /// it closes when the stream passes its end. At least 1 s.
    #[serde(default)]
    pub every: Option<String>,
    /// A column: one window per value of it (and `{column}` in the prompt gives the value).
    #[serde(default)]
    pub group: Option<String>,
    /// One row's section of the prompt: a template over the row's columns (`{column}`).
    pub row: String,
    /// Between two rows' sections. Default a newline.
    #[serde(default = "default_separator")]
    pub separator: String,
    /// The most bytes of rendered rows one window holds: a row that would pass it closes the
    /// window before it (a single row longer than this is cut, and the window marked
    /// `truncated`). Default 100,000.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_separator() -> String {
    "\n".into()
}
fn default_max_bytes() -> usize {
    100_000
}

impl WindowConfig {
    /// `every` in milliseconds (checked when the pipeline is loaded).
    pub fn every_ms(&self) -> Option<u64> {
        self.every
            .as_deref()
            .and_then(|e| humantime::parse_duration(e).ok())
            .map(|d| d.as_millis() as u64)
    }

    /// The row template (checked when the pipeline is loaded).
    pub fn row_template(&self) -> Result<Template, String> {
        Template::parse(&self.row).map_err(|m| format!("enrichment.window.row: {m}"))
    }

    /// What can be checked without a server. `prompt`: the backend's prompt (or text)
    /// template, with `what` its setting's name; it may name only `{rows}`, `{count}` and the
    /// group column, and must name `{rows}`.
    pub fn validate(&self, prompt: &Template, what: &str) -> Result<(), String> {
        if self.rows.is_none() && self.every.is_none() {
            return Err("enrichment.window needs `rows`, `every` or both".into());
        }
        if self.rows == Some(0) {
            return Err("enrichment.window.rows must be above 0".into());
        }
        if let Some(e) = &self.every {
            let d = humantime::parse_duration(e).map_err(|err| {
                format!("enrichment.window.every `{e}`: {err} (write `30s`, `5m`, `1h`)")
            })?;
            if d < std::time::Duration::from_secs(1) {
                return Err(format!(
                    "enrichment.window.every `{e}` is under 1s (commit times are in seconds)"
                ));
            }
            if d > std::time::Duration::from_secs(7 * 86_400) {
                return Err(format!(
                    "enrichment.window.every `{e}` is over a week (an open window holds the checkpoint)"
                ));
            }
        }
        if self.max_bytes == 0 {
            return Err("enrichment.window.max_bytes must be above 0".into());
        }
        self.row_template()?;
        let cols = prompt.columns();
        if !cols.contains(&ROWS) {
            return Err(format!(
                "{what} must name `{{{ROWS}}}`: the window's rows go there"
            ));
        }
        let group = self.group.as_deref();
        if let Some(c) = cols
            .iter()
            .find(|c| **c != ROWS && **c != COUNT && Some(**c) != group)
        {
            return Err(format!(
                "{what} names `{{{c}}}`; a windowed prompt takes `{{{ROWS}}}`, `{{{COUNT}}}` \
                 and the group column (row columns go in enrichment.window.row)"
            ));
        }
        Ok(())
    }
}
