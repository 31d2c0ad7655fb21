//! The record query language shared by lists and filtered subscriptions.
//!
//! `title ~ "rust" && views > 10 || author = "u1"`: one parser, two back ends — the store
//! compiles the AST to SQL for lists, and [`Filter::matches`] evaluates it in memory for
//! realtime record subscriptions, with the same semantics:
//! - values of different JSON types never compare (`views > "10"` is false), so SQL and
//!   memory agree without SQLite's cross-type ordering;
//! - `~` / `!~` are substring tests on strings, case-insensitive for ASCII letters (as
//!   SQLite's `lower()` is);
//! - `!=` and `!~` are the negations of `=` and `~` (a missing field is `!=` anything but
//!   `null`).

use std::fmt;

use serde_json::Value;

use crate::record::Record;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `~` contains (case-insensitive)
    Like,
    /// `!~` does not contain
    NotLike,
}

/// A literal on the right of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `"text"` or `'text'`
    Str(String),
    /// `42`, `-1.5`
    Num(f64),
    /// `true` / `false`
    Bool(bool),
    /// `null`
    Null,
}

/// A parsed filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
    /// `path op literal`
    Cmp {
        /// Field path: a system field or a JSON path into the document.
        path: Vec<String>,
        /// Operator.
        op: Op,
        /// Right-hand side.
        value: Literal,
    },
}

/// A filter that could not be parsed, with the byte offset of the mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at position {position}")]
pub struct FilterError {
    /// Zero-based byte offset into the filter text.
    pub position: usize,
    /// What was expected or found.
    pub message: String,
}

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
pub(crate) const MAX_DEPTH: usize = 32;

impl Filter {
    /// Parses filter text.
    pub fn parse(src: &str) -> Result<Filter, FilterError> {
        if src.len() > MAX_FILTER_LEN {
            return Err(FilterError {
                position: MAX_FILTER_LEN,
                message: format!("filter is longer than {MAX_FILTER_LEN} bytes"),
            });
        }
        let mut p = Parser { src, pos: 0 };
        let f = p.or(0)?;
        p.ws();
        if p.pos < src.len() {
            return Err(p.err("expected && or || or end of filter"));
        }
        Ok(f)
    }

    /// Evaluates the filter against a record.
    pub fn matches(&self, r: &Record) -> bool {
        match self {
            Filter::And(a, b) => a.matches(r) && b.matches(r),
            Filter::Or(a, b) => a.matches(r) || b.matches(r),
            Filter::Cmp { path, op, value } => compare(r.lookup(path).as_ref(), *op, value),
        }
    }
}

pub(crate) fn compare(v: Option<&Value>, op: Op, lit: &Literal) -> bool {
    match op {
        Op::Ne => return !compare(v, Op::Eq, lit),
        Op::NotLike => return !compare(v, Op::Like, lit),
        _ => {}
    }
    let v = v.unwrap_or(&Value::Null);
    match (v, lit) {
        (Value::Null, Literal::Null) => op == Op::Eq || op == Op::Ge || op == Op::Le,
        (Value::String(a), Literal::Str(b)) => match op {
            Op::Like => a.to_ascii_lowercase().contains(&b.to_ascii_lowercase()),
            _ => ord(op, a.as_str().cmp(b.as_str())),
        },
        (Value::Number(a), Literal::Num(b)) => match (a.as_f64(), op) {
            (_, Op::Like) => false,
            (Some(a), _) => a.partial_cmp(b).is_some_and(|o| ord(op, o)),
            (None, _) => false,
        },
        (Value::Bool(a), Literal::Bool(b)) => op != Op::Like && ord(op, a.cmp(b)),
        _ => false,
    }
}

fn ord(op: Op, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => o == Equal,
        Op::Gt => o == Greater,
        Op::Ge => o != Less,
        Op::Lt => o == Less,
        Op::Le => o != Greater,
        Op::Ne | Op::Like | Op::NotLike => false,
    }
}

/// The filter language's tokenizer, shared with the rule language (`rules.rs`).
pub(crate) struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(src: &'a str) -> Result<Self, FilterError> {
        if src.len() > MAX_FILTER_LEN {
            return Err(FilterError {
                position: MAX_FILTER_LEN,
                message: format!("longer than {MAX_FILTER_LEN} bytes"),
            });
        }
        Ok(Parser { src, pos: 0 })
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    /// Whether the text continues with one of `toks` (after spaces).
    pub(crate) fn peek_any(&self, toks: &[&str]) -> bool {
        let rest = self.src[self.pos..].trim_start();
        toks.iter().any(|t| rest.starts_with(t))
    }

    /// Whether a literal (string, number, true, false, null) starts here.
    pub(crate) fn starts_literal(&self) -> bool {
        let rest = self.src[self.pos..].trim_start();
        let word = |w: &str| {
            rest.starts_with(w)
                && !rest[w.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        rest.starts_with(['"', '\'', '-'])
            || rest.starts_with(|c: char| c.is_ascii_digit())
            || word("true")
            || word("false")
            || word("null")
    }

    pub(crate) fn err(&self, msg: &str) -> FilterError {
        let found = self.src[self.pos..].chars().next();
        FilterError {
            position: self.pos,
            message: match found {
                Some(c) => format!("{msg}, found '{c}'"),
                None => format!("{msg}, found end of filter"),
            },
        }
    }

    pub(crate) fn ws(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    pub(crate) fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.src[self.pos..].starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.and(depth)?;
        while self.eat("||") {
            let right = self.and(depth)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut left = self.atom(depth)?;
        while self.eat("&&") {
            let right = self.atom(depth)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn atom(&mut self, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_DEPTH {
            return Err(self.err("parentheses nested too deeply"));
        }
        if self.eat("(") {
            let f = self.or(depth + 1)?;
            if !self.eat(")") {
                return Err(self.err("expected ')'"));
            }
            return Ok(f);
        }
        let path = self.path()?;
        let op = self.op()?;
        let value = self.literal()?;
        Ok(Filter::Cmp { path, op, value })
    }

    fn ident(&mut self) -> Option<String> {
        let rest = &self.src[self.pos..];
        let len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        if len == 0 {
            return None;
        }
        self.pos += len;
        Some(rest[..len].to_string())
    }

    pub(crate) fn path(&mut self) -> Result<Vec<String>, FilterError> {
        self.ws();
        let mut path = vec![
            self.ident()
                .ok_or_else(|| self.err("expected a field name"))?,
        ];
        while self.src[self.pos..].starts_with('.') {
            self.pos += 1;
            path.push(
                self.ident()
                    .ok_or_else(|| self.err("expected a field name after '.'"))?,
            );
        }
        Ok(path)
    }

    pub(crate) fn op(&mut self) -> Result<Op, FilterError> {
        self.ws();
        const OPS: &[(&str, Op)] = &[
            ("!=", Op::Ne),
            ("!~", Op::NotLike),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("=", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
            ("~", Op::Like),
        ];
        for (t, op) in OPS {
            if self.src[self.pos..].starts_with(t) {
                self.pos += t.len();
                return Ok(*op);
            }
        }
        Err(self.err("expected an operator (= != > >= < <= ~ !~)"))
    }

    pub(crate) fn literal(&mut self) -> Result<Literal, FilterError> {
        self.ws();
        let rest = &self.src[self.pos..];
        let Some(c) = rest.chars().next() else {
            return Err(self.err("expected a value"));
        };
        if c == '"' || c == '\'' {
            let mut out = String::new();
            let mut chars = rest.char_indices().skip(1);
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => match chars.next() {
                        Some((_, e)) => out.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        }),
                        None => break,
                    },
                    _ if ch == c => {
                        self.pos += i + 1;
                        return Ok(Literal::Str(out));
                    }
                    _ => out.push(ch),
                }
            }
            return Err(FilterError {
                position: self.pos,
                message: "unterminated string".into(),
            });
        }
        if c == '-' || c.is_ascii_digit() {
            let len = rest
                .char_indices()
                .skip(1)
                .find(|(_, ch)| !(ch.is_ascii_digit() || matches!(ch, '.' | 'e' | 'E' | '+' | '-')))
                .map(|(i, _)| i)
                .unwrap_or(rest.len());
            return match rest[..len].parse::<f64>() {
                Ok(n) if n.is_finite() => {
                    self.pos += len;
                    Ok(Literal::Num(n))
                }
                _ => Err(self.err("malformed number")),
            };
        }
        for (word, lit) in [
            ("true", Literal::Bool(true)),
            ("false", Literal::Bool(false)),
            ("null", Literal::Null),
        ] {
            if rest.starts_with(word)
                && !rest[word.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                self.pos += word.len();
                return Ok(lit);
            }
        }
        Err(self.err("expected a value (a quoted string, number, true, false or null)"))
    }
}

/// The canonical text of a filter: it parses back to the same filter, so it can name
/// things that must stay stable across releases (consumer-group keys).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::And(a, b) => write!(f, "({a} && {b})"),
            Filter::Or(a, b) => write!(f, "({a} || {b})"),
            Filter::Cmp { path, op, value } => {
                write!(f, "{} {op} ", path.join("."))?;
                match value {
                    Literal::Str(s) => {
                        f.write_str("\"")?;
                        for c in s.chars() {
                            match c {
                                '"' => f.write_str("\\\"")?,
                                '\\' => f.write_str("\\\\")?,
                                '\n' => f.write_str("\\n")?,
                                '\t' => f.write_str("\\t")?,
                                c => write!(f, "{c}")?,
                            }
                        }
                        f.write_str("\"")
                    }
                    Literal::Num(n) => write!(f, "{n}"),
                    Literal::Bool(b) => write!(f, "{b}"),
                    Literal::Null => f.write_str("null"),
                }
            }
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Like => "~",
            Op::NotLike => "!~",
        })
    }
}

/// One sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SortKey {
    /// Field path.
    pub path: Vec<String>,
    /// Descending when true.
    pub desc: bool,
}

/// Parses `-created_at,title`.
pub fn parse_sort(src: &str) -> Result<Vec<SortKey>, FilterError> {
    let mut keys = Vec::new();
    let mut offset = 0;
    for part in src.split(',') {
        let trimmed = part.trim();
        let (desc, name) = match trimmed.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
        };
        let path: Vec<String> = name.split('.').map(str::to_string).collect();
        if path
            .iter()
            .any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(FilterError {
                position: offset,
                message: format!("invalid sort field '{trimmed}'"),
            });
        }
        keys.push(SortKey { path, desc });
        offset += part.len() + 1;
    }
    if keys.len() > 8 {
        return Err(FilterError {
            position: 0,
            message: "at most 8 sort fields".into(),
        });
    }
    Ok(keys)
}

/// A list request, after parsing.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only records matching this.
    pub filter: Option<Filter>,
    /// Order; `id` is always appended as the final tie-breaker.
    pub sort: Vec<SortKey>,
    /// Page size.
    pub limit: usize,
    /// Opaque keyset cursor from a previous page.
    pub cursor: Option<String>,
    /// Also count all matches.
    pub count: bool,
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct Page {
    /// The records.
    pub items: Vec<Record>,
    /// For each item, the cursor that continues right after it (Relay edge cursors).
    pub cursors: Vec<String>,
    /// Cursor for the next page, when there is one.
    pub next_cursor: Option<String>,
    /// Total matches, when asked for.
    pub total: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::json;

    fn rec(data: Value) -> Record {
        Record {
            collection: "posts".into(),
            id: "r1".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            version: 3,
            data: data.as_object().cloned().unwrap(),
        }
    }

    #[test]
    fn parses_precedence_and_evaluates() {
        let f = Filter::parse(r#"title ~ "RUST" && views > 10 || author = "u1""#).unwrap();
        assert!(matches!(f, Filter::Or(..)));
        assert!(f.matches(&rec(json!({"title": "I love rust", "views": 11}))));
        assert!(!f.matches(&rec(json!({"title": "I love rust", "views": 10}))));
        assert!(f.matches(&rec(json!({"author": "u1"}))));
        let g = Filter::parse(r#"title ~ "rust" && (views > 10 || author = "u1")"#).unwrap();
        assert!(!g.matches(&rec(json!({"author": "u1"}))));
    }

    #[test]
    fn nested_paths_system_fields_and_types() {
        let r = rec(json!({"meta": {"lang": "en", "n": [5]}, "flag": true}));
        for (src, want) in [
            (r#"meta.lang = "en""#, true),
            ("meta.n.0 = 5", true),
            ("version >= 3", true),
            (r#"id = "r1""#, true),
            ("flag = true", true),
            (r#"flag = "true""#, false),
            ("missing = null", true),
            ("missing != null", false),
            (r#"missing != "x""#, true),
            (r#"meta.lang !~ "E""#, false),
            (r#"version > "2""#, false),
        ] {
            assert_eq!(Filter::parse(src).unwrap().matches(&r), want, "{src}");
        }
    }

    #[test]
    fn errors_point_at_the_mistake() {
        let e = Filter::parse(r#"title == "x""#).unwrap_err();
        assert_eq!(e.position, 7);
        let e = Filter::parse("views > ").unwrap_err();
        assert_eq!(e.position, 8);
        let e = Filter::parse(r#"(a = 1"#).unwrap_err();
        assert_eq!(e.position, 6);
        let e = Filter::parse(r#"a = "open"#).unwrap_err();
        assert!(e.message.contains("unterminated"));
        let e = Filter::parse("a = 1 b = 2").unwrap_err();
        assert_eq!(e.position, 6);
        assert!(Filter::parse(&"(".repeat(100)).is_err());
    }

    proptest::proptest! {
        /// The parser faces the network: no input may panic it, and errors point inside
        /// the input.
        #[test]
        fn parse_never_panics(src in "[ -~]{0,64}|[a-z.=<>!~&|()\"' 0-9-]{0,64}") {
            match Filter::parse(&src) {
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(e.position <= src.len()),
            }
            let _ = parse_sort(&src);
        }

        /// A filter's canonical text parses back to the same filter (group keys rely on it).
        #[test]
        fn display_round_trips(src in "[ -~]{0,64}|[a-z.=<>!~&|()\"' 0-9-]{0,64}") {
            if let Ok(f) = Filter::parse(&src) {
                let text = f.to_string();
                let back = Filter::parse(&text);
                proptest::prop_assert_eq!(back, Ok(f), "{}", text);
            }
        }
    }

    #[test]
    fn display_is_canonical() {
        let f = Filter::parse(r#"a.b="x\"y" && (n > -1.5 || ok = true) || z != null"#).unwrap();
        assert_eq!(
            f.to_string(),
            r#"((a.b = "x\"y" && (n > -1.5 || ok = true)) || z != null)"#
        );
    }

    #[test]
    fn sort_parsing() {
        let s = parse_sort("-created_at,title,meta.x").unwrap();
        assert_eq!(s.len(), 3);
        assert!(s[0].desc);
        assert_eq!(s[2].path, vec!["meta", "x"]);
        assert!(parse_sort("a,,b").is_err());
        assert!(parse_sort("a;drop").is_err());
    }
}
