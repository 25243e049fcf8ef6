//! A small row-filter language over column values:
//! `stars >= 4 AND (lang = 'en' OR lang IS NULL) AND status IN ('new', 'open') AND NOT spam`
//! with `=`, `!=`/`<>`, `<`, `<=`, `>`, `>=`, `IS [NOT] NULL`, `[NOT] IN (…)`,
//! `[NOT] LIKE '%x_'`, `AND`, `OR`, `NOT` and parentheses. Comparisons with NULL are false.

use super::ColumnValue as Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(Operand, CmpOp, Operand),
    IsNull(Operand, bool),
    In(Operand, Vec<Operand>, bool),
    Like(Operand, String, bool),
    Truthy(Operand),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Column(String),
    /// Resolved column index (after [`Expr::bind`]).
    Index(usize),
    Lit(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i] as char;
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let next = b.get(i + 1).copied();
        let (tok, len) = match (c, next) {
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            (',', _) => (Tok::Comma, 1),
            ('=', _) => (Tok::Op("="), 1),
            ('!', Some(b'=')) | ('<', Some(b'>')) => (Tok::Op("!="), 2),
            ('<', Some(b'=')) => (Tok::Op("<="), 2),
            ('>', Some(b'=')) => (Tok::Op(">="), 2),
            ('<', _) => (Tok::Op("<"), 1),
            ('>', _) => (Tok::Op(">"), 1),
            ('\'', _) => string(s, start)?,
            ('`', _) => {
                let end = s[i + 1..].find('`').ok_or_else(|| {
                    format!("unterminated `identifier` at character {}", start + 1)
                })?;
                (Tok::Ident(s[i + 1..i + 1 + end].to_string()), end + 2)
            }
            (c, d) if c.is_ascii_digit() || (c == '-' && d.is_some_and(|d| d.is_ascii_digit())) => {
                let n = 1 + b[i + 1..]
                    .iter()
                    .take_while(|x| x.is_ascii_digit() || matches!(x, b'.' | b'e' | b'E'))
                    .count();
                (Tok::Num(s[start..start + n].to_string()), n)
            }
            (c, _) if c.is_alphabetic() || c == '_' => {
                let n = b[i..]
                    .iter()
                    .take_while(|x| (**x as char).is_alphanumeric() || **x == b'_' || **x >= 0x80)
                    .count();
                (Tok::Ident(s[start..start + n].to_string()), n)
            }
            (other, _) => return Err(format!("unexpected `{other}` at character {}", start + 1)),
        };
        i += len;
        out.push((start, tok));
    }
    Ok(out)
}

/// A quoted string starting at `start` (`''` is a quote); the token and its length in bytes.
fn string(s: &str, start: usize) -> Result<(Tok, usize), String> {
    let mut v = String::new();
    let mut i = start + 1;
    loop {
        match s[i..].chars().next() {
            None => {
                return Err(format!(
                    "unterminated string starting at character {}",
                    start + 1
                ))
            }
            Some('\'') if s[i + 1..].starts_with('\'') => {
                v.push('\'');
                i += 2;
            }
            Some('\'') => return Ok((Tok::Str(v), i + 1 - start)),
            Some(ch) => {
                v.push(ch);
                i += ch.len_utf8();
            }
        }
    }
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    i: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.i), Some((_, Tok::Ident(s))) if s.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek_kw(kw) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn at(&self) -> String {
        match self.toks.get(self.i) {
            Some((p, _)) => format!("character {}", p + 1),
            None => "the end".into(),
        }
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat_kw("OR") {
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.not()?;
        while self.eat_kw("AND") {
            l = Expr::And(Box::new(l), Box::new(self.not()?));
        }
        Ok(l)
    }
    fn not(&mut self) -> Result<Expr, String> {
        if self.eat_kw("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, String> {
        if matches!(self.toks.get(self.i), Some((_, Tok::LParen))) {
            self.i += 1;
            let e = self.or()?;
            match self.toks.get(self.i) {
                Some((_, Tok::RParen)) => self.i += 1,
                _ => return Err(format!("expected `)` at {}", self.at())),
            }
            return Ok(e);
        }
        let l = self.operand()?;
        if self.eat_kw("IS") {
            let neg = self.eat_kw("NOT");
            if !self.eat_kw("NULL") {
                return Err(format!("expected NULL at {}", self.at()));
            }
            return Ok(Expr::IsNull(l, neg));
        }
        let neg = self.eat_kw("NOT");
        if self.eat_kw("IN") {
            if !matches!(self.toks.get(self.i), Some((_, Tok::LParen))) {
                return Err(format!("expected `(` after IN at {}", self.at()));
            }
            self.i += 1;
            let mut list = vec![self.operand()?];
            while matches!(self.toks.get(self.i), Some((_, Tok::Comma))) {
                self.i += 1;
                list.push(self.operand()?);
            }
            if !matches!(self.toks.get(self.i), Some((_, Tok::RParen))) {
                return Err(format!("expected `)` at {}", self.at()));
            }
            self.i += 1;
            return Ok(Expr::In(l, list, neg));
        }
        if self.eat_kw("LIKE") {
            return match self.operand()? {
                Operand::Lit(Value::Text(p)) => Ok(Expr::Like(l, p, neg)),
                _ => Err("LIKE takes a string pattern".into()),
            };
        }
        if neg {
            return Err(format!("expected IN or LIKE after NOT at {}", self.at()));
        }
        if let Some((_, Tok::Op(op))) = self.toks.get(self.i) {
            let op = match *op {
                "=" => CmpOp::Eq,
                "!=" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            };
            self.i += 1;
            let r = self.operand()?;
            return Ok(Expr::Cmp(l, op, r));
        }
        Ok(Expr::Truthy(l))
    }
    fn operand(&mut self) -> Result<Operand, String> {
        let at = self.at();
        let (_, t) = self
            .toks
            .get(self.i)
            .cloned()
            .ok_or_else(|| format!("expected a value at {at}"))?;
        self.i += 1;
        Ok(match t {
            Tok::Str(s) => Operand::Lit(Value::Text(s)),
            Tok::Num(n) => {
                Operand::Lit(number(&n).ok_or_else(|| format!("bad number `{n}` at {at}"))?)
            }
            Tok::Ident(s) if s.eq_ignore_ascii_case("NULL") => Operand::Lit(Value::Null),
            Tok::Ident(s) if s.eq_ignore_ascii_case("TRUE") => Operand::Lit(Value::Int(1)),
            Tok::Ident(s) if s.eq_ignore_ascii_case("FALSE") => Operand::Lit(Value::Int(0)),
            Tok::Ident(s) => Operand::Column(s),
            other => return Err(format!("unexpected {other:?} at {at}")),
        })
    }
}

impl Expr {
    pub fn parse(s: &str) -> Result<Expr, String> {
        let mut p = Parser {
            toks: lex(s)?,
            i: 0,
        };
        let e = p.or()?;
        if p.i != p.toks.len() {
            return Err(format!("unexpected text at {}", p.at()));
        }
        Ok(e)
    }

    /// Every column the expression names.
    pub fn columns(&self) -> Vec<String> {
        let mut v = Vec::new();
        self.visit(&mut |o| {
            if let Operand::Column(c) = o {
                v.push(c.clone());
            }
        });
        v
    }

    fn visit(&self, f: &mut dyn FnMut(&Operand)) {
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::Not(a) => a.visit(f),
            Expr::Cmp(a, _, b) => {
                f(a);
                f(b);
            }
            Expr::IsNull(a, _) | Expr::Like(a, _, _) | Expr::Truthy(a) => f(a),
            Expr::In(a, l, _) => {
                f(a);
                l.iter().for_each(&mut *f);
            }
        }
    }

    /// Replaces column names with indexes; `Err(name)` for a column `index` does not know.
    pub fn bind(&self, index: &dyn Fn(&str) -> Option<usize>) -> Result<Expr, String> {
        let b = |o: &Operand| -> Result<Operand, String> {
            Ok(match o {
                Operand::Column(c) => Operand::Index(index(c).ok_or_else(|| c.clone())?),
                o => o.clone(),
            })
        };
        Ok(match self {
            Expr::Or(a, c) => Expr::Or(Box::new(a.bind(index)?), Box::new(c.bind(index)?)),
            Expr::And(a, c) => Expr::And(Box::new(a.bind(index)?), Box::new(c.bind(index)?)),
            Expr::Not(a) => Expr::Not(Box::new(a.bind(index)?)),
            Expr::Cmp(a, op, c) => Expr::Cmp(b(a)?, *op, b(c)?),
            Expr::IsNull(a, n) => Expr::IsNull(b(a)?, *n),
            Expr::In(a, l, n) => Expr::In(b(a)?, l.iter().map(b).collect::<Result<_, _>>()?, *n),
            Expr::Like(a, p, n) => Expr::Like(b(a)?, p.clone(), *n),
            Expr::Truthy(a) => Expr::Truthy(b(a)?),
        })
    }

    /// Evaluates a bound expression on a row.
    pub fn eval(&self, row: &[Value]) -> bool {
        let get = |o: &Operand| -> Value {
            match o {
                Operand::Index(i) => row.get(*i).cloned().unwrap_or(Value::Null),
                Operand::Lit(v) => v.clone(),
                Operand::Column(_) => Value::Null,
            }
        };
        match self {
            Expr::Or(a, b) => a.eval(row) || b.eval(row),
            Expr::And(a, b) => a.eval(row) && b.eval(row),
            Expr::Not(a) => !a.eval(row),
            Expr::Cmp(a, op, b) => match compare(&get(a), &get(b)) {
                None => false,
                Some(o) => match op {
                    CmpOp::Eq => o.is_eq(),
                    CmpOp::Ne => o.is_ne(),
                    CmpOp::Lt => o.is_lt(),
                    CmpOp::Le => o.is_le(),
                    CmpOp::Gt => o.is_gt(),
                    CmpOp::Ge => o.is_ge(),
                },
            },
            Expr::IsNull(a, neg) => get(a).is_null() != *neg,
            Expr::In(a, list, neg) => {
                let v = get(a);
                if v.is_null() {
                    return false;
                }
                list.iter()
                    .any(|x| compare(&v, &get(x)).is_some_and(|o| o.is_eq()))
                    != *neg
            }
            Expr::Like(a, p, neg) => match get(a) {
                Value::Text(s) => like(&s, p) != *neg,
                Value::Null => false,
                v => {
                    let mut s = String::new();
                    v.push_text(&mut s);
                    like(&s, p) != *neg
                }
            },
            Expr::Truthy(a) => as_num(&get(a)).is_some_and(|f| f != 0.0),
        }
    }
}

/// A number literal: an exact integer where it is one.
fn number(n: &str) -> Option<Value> {
    if let Ok(i) = n.parse::<i64>() {
        return Some(Value::Int(i));
    }
    if let Ok(u) = n.parse::<u64>() {
        return Some(Value::UInt(u));
    }
    n.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::Float)
}

fn as_num(v: &Value) -> Option<f64> {
    match v {
        Value::Json(j) => j.get().parse().ok(),
        v => v.as_f64(),
    }
}

/// A JSON document that is a string compares as that string.
fn as_text(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::Text(s) => Some(s.into()),
        Value::Json(j) if j.get().starts_with('"') => {
            serde_json::from_str::<String>(j.get()).ok().map(Into::into)
        }
        _ => None,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i as i128),
        Value::UInt(u) => Some(*u as i128),
        _ => None,
    };
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => None,
        _ => {
            if let (Some(x), Some(y)) = (int(a), int(b)) {
                return Some(x.cmp(&y));
            }
            if let (Some(x), Some(y)) = (as_text(a), as_text(b)) {
                return Some(x.cmp(&y));
            }
            // DECIMAL columns are text: compare them with number literals as numbers.
            as_num(a)?.partial_cmp(&as_num(b)?)
        }
    }
}

/// SQL LIKE with `%` and `_` (case-sensitive).
fn like(s: &str, p: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = p.chars().collect();
    let (mut si, mut pi, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(e: &str, row: &[Value]) -> bool {
        let names = ["a", "b", "c"];
        Expr::parse(e)
            .unwrap()
            .bind(&|n| names.iter().position(|x| *x == n))
            .unwrap()
            .eval(row)
    }

    #[test]
    fn evaluates() {
        let row = [Value::Int(5), Value::Text("en".into()), Value::Null];
        assert!(run("a >= 4 AND b = 'en'", &row));
        assert!(!run("a > 5", &row));
        assert!(run("c IS NULL AND NOT (b IN ('fr', 'de'))", &row));
        assert!(run("b LIKE 'e%' OR a < 0", &row));
        assert!(!run("c = 1 OR c != 1", &row));
        assert!(run("a IN (1, 5)", &row));
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(
            Expr::parse("a = ").unwrap_err(),
            "expected a value at the end"
        );
        assert_eq!(
            Expr::parse("a = 1 b").unwrap_err(),
            "unexpected text at character 7"
        );
        let e = Expr::parse("zz = 1").unwrap().bind(&|_| None).unwrap_err();
        assert_eq!(e, "zz");
    }
}
