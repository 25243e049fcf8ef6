//! `${NAME}` and `${NAME:-default}` interpolation, done on the text before YAML parsing so
//! that an error can name the line and column of the placeholder. `$$` is a literal `$`.

pub struct InterpolationError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(text.len());
    for (ln, full) in text.split_inclusive('\n').enumerate() {
        // Comments are copied as they are: `# use ${VAR}` must not need VAR.
        let cut = comment_start(full);
        let (line, comment) = full.split_at(cut);
        let mut rest = line;
        let mut col = 1;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            col += rest[..i].chars().count();
            let after = &rest[i + 1..];
            if let Some(a) = after.strip_prefix('$') {
                out.push('$');
                rest = a;
                col += 2;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or_else(|| InterpolationError {
                    line: ln + 1,
                    column: col,
                    message: "`${` without a closing `}`".into(),
                })?;
                let expr = &body[..end];
                let (name, default) = match expr.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (expr, None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(InterpolationError {
                        line: ln + 1,
                        column: col,
                        message: format!(
                            "`${{{expr}}}` is not a valid environment variable reference"
                        ),
                    });
                }
                match lookup(name).or_else(|| default.map(str::to_string)) {
                    Some(v) => out.push_str(&v),
                    None => {
                        return Err(InterpolationError {
                            line: ln + 1,
                            column: col,
                            message: format!(
                                "environment variable {name} is not set (write `${{{name}:-default}}` for a default)"
                            ),
                        })
                    }
                }
                col += expr.chars().count() + 3;
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
                col += 1;
            }
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    Ok(out)
}

/// Byte index where a YAML comment starts in `line` (`#` at the start or after white space,
/// outside quotes), or the line's length.
fn comment_start(line: &str) -> usize {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') if prev.is_whitespace() => return i,
            (None, '\'' | '"')
                if prev.is_whitespace() || prev == ':' || prev == '[' || prev == ',' =>
            {
                quote = Some(c)
            }
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        prev = c;
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates() {
        let f = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(
            interpolate("a: ${A}\nb: ${B:-d} $$", f).ok().unwrap(),
            "a: x\nb: d $"
        );
        let e = interpolate("a: 1\nb:  ${MISSING}\n", f).err().unwrap();
        assert_eq!((e.line, e.column), (2, 5));
        assert!(e.message.contains("MISSING is not set"));
        assert_eq!(
            interpolate("# ${NOPE}\na: ${A} # ${NOPE}\nb: \"#${A}\"\n", f)
                .ok()
                .unwrap(),
            "# ${NOPE}\na: x # ${NOPE}\nb: \"#x\"\n"
        );
    }
}
