//! Prompt templates: `{column}` is replaced by the row's value of that column; `{{` and `}}`
//! are literal braces. Parsed once when the pipeline loads, so a typo is a start-up error.

use crate::model::ColumnValue as Value;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Column(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    /// The template as written.
    source: String,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|x| x.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|x| x.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) if c.is_alphanumeric() || c == '_' || c == '$' => {
                                name.push(c)
                            }
                            Some((j, c)) => {
                                return Err(format!(
                                    "`{c}` at byte {j} inside the placeholder opened at byte {i}; a placeholder is `{{column}}`, a literal brace `{{{{`"
                                ))
                            }
                            None => {
                                return Err(format!(
                                    "the brace at byte {i} is not closed; a literal brace is written `{{{{`"
                                ))
                            }
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("an empty placeholder `{{}}` at byte {i}"));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Column(name));
                }
                '}' => {
                    return Err(format!(
                        "a lone `}}` at byte {i}; a literal brace is written `}}}}`"
                    ))
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        if !parts.iter().any(|p| matches!(p, Part::Column(_))) {
            return Err("names no column: every row would get the same prompt".into());
        }
        Ok(Template {
            parts,
            source: s.to_string(),
        })
    }

    /// The template as written in the pipeline.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The columns named, in order of first use.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.parts {
            if let Part::Column(c) = p {
                if !out.contains(&c.as_str()) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The prompt for one row: text as it is, numbers as printed, NULL as an empty string,
    /// anything else as JSON.
    pub fn render<'a>(&self, get: impl Fn(&str) -> Option<&'a Value>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Column(c) => push_value(&mut out, get(c)),
            }
        }
        out
    }
}

/// A column value as plain text (shared by prompts and CSV lines).
pub fn push_value(out: &mut String, v: Option<&Value>) {
    if let Some(v) = v {
        v.push_text(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn renders_columns_and_escapes() {
        let t = Template::parse("Summarize {title}: {body} {{json}} {n}").unwrap();
        assert_eq!(t.columns(), vec!["title", "body", "n"]);
        let text = |s: &str| Value::Text(s.into());
        let row = HashMap::from([
            ("title", text("T")),
            ("body", text("B")),
            ("n", Value::Int(3)),
        ]);
        assert_eq!(t.render(|c| row.get(c)), "Summarize T: B {json} 3");
        let row = HashMap::from([
            ("title", Value::Null),
            ("body", text("B")),
            ("n", Value::Float(1.5)),
        ]);
        assert_eq!(t.render(|c| row.get(c)), "Summarize : B {json} 1.5");
    }

    #[test]
    fn errors_name_the_byte() {
        assert_eq!(
            Template::parse("a {body").unwrap_err(),
            "the brace at byte 2 is not closed; a literal brace is written `{{`"
        );
        assert_eq!(
            Template::parse("a } {b}").unwrap_err(),
            "a lone `}` at byte 2; a literal brace is written `}}`"
        );
        assert_eq!(
            Template::parse("{a b}").unwrap_err(),
            "` ` at byte 2 inside the placeholder opened at byte 0; a placeholder is `{column}`, a literal brace `{{`"
        );
        assert!(Template::parse("no columns").is_err());
    }
}
