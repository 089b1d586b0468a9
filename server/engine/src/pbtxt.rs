//! A small parser for protobuf text format, enough for Triton's `config.pbtxt`.
//!
//! It produces an untyped tree ([`Node`]); [`crate::config`] maps the fields it knows onto typed structs.
//! Supported: `name: value`, `name { ... }`, `name: { ... }`, lists `[a, b]`, repeated fields, `#` comments,
//! single- or double-quoted strings with escapes, and optional `,`/`;` separators.
//!
//! Input is untrusted (a repository anyone with write access fills, or a load request's override), so the
//! parser bounds it: at most [`MAX_INPUT_BYTES`] of text and [`MAX_DEPTH`] levels of `{`/`<`/`[` nesting (the
//! parser recurses once per level, so an unbounded depth would overflow the stack). Real Triton configs are a
//! few KiB and nest about 6 levels.

use std::fmt;

/// The deepest nesting of messages and lists (`{`, `<`, `[`) a document may have; the document itself is level 0.
pub const MAX_DEPTH: usize = 64;

/// The largest document [`parse`] accepts, in bytes of UTF-8 text (1 MiB).
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// A parsed text-format value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A scalar token: number, identifier (enum, `true`) or string (unquoted here).
    Scalar(String),
    /// A message: its fields in file order, repeated names allowed.
    Message(Vec<(String, Node)>),
    /// A `[ ... ]` list.
    List(Vec<Node>),
}

impl Default for Node {
    /// An empty message (an empty document).
    fn default() -> Self {
        Node::Message(Vec::new())
    }
}

/// A syntax error with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses a whole document as the fields of one message.
///
/// Fails on a syntax error, on text longer than [`MAX_INPUT_BYTES`], or on nesting deeper than [`MAX_DEPTH`].
pub fn parse(text: &str) -> Result<Node, ParseError> {
    if text.len() > MAX_INPUT_BYTES {
        // The line where the limit falls, so an editor can find it.
        let line = text.as_bytes()[..MAX_INPUT_BYTES].iter().filter(|&&b| b == b'\n').count() + 1;
        return Err(ParseError {
            line,
            message: format!(
                "text is {} bytes, over the limit of {MAX_INPUT_BYTES} bytes (1 MiB); the limit is reached on this line",
                text.len()
            ),
        });
    }
    let mut parser = Parser { chars: text.chars().collect(), pos: 0, line: 1, depth: 0 };
    let fields = parser.fields(None)?;
    Ok(Node::Message(fields))
}

impl Node {
    /// Every value of field `name` in a message, flattening `[...]` lists (repeated fields).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        let fields: &[(String, Node)] = match self {
            Node::Message(f) => f,
            _ => &[],
        };
        fields.iter().filter(move |(k, _)| k == name).flat_map(|(_, v)| match v {
            Node::List(items) => items.iter().collect::<Vec<_>>(),
            other => vec![other],
        })
    }

    /// The last value of field `name` (text format lets a later value win).
    pub fn get(&self, name: &str) -> Option<&Node> {
        match self {
            Node::Message(f) => f.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn scalar(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// Names of all fields of a message (for rejecting unknown ones).
    pub fn field_names(&self) -> Vec<&str> {
        match self {
            Node::Message(f) => f.iter().map(|(k, _)| k.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    /// How many `{`/`<`/`[` enclose the current position.
    depth: usize,
}

impl Parser {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { line: self.line, message: message.into() })
    }

    /// 1-based column of the current position (in characters), for errors on long lines.
    fn column(&self) -> usize {
        let line_start = self.chars[..self.pos].iter().rposition(|&c| c == '\n').map_or(0, |i| i + 1);
        self.pos - line_start + 1
    }

    /// Enters the `{`/`<`/`[` at the current position, or fails if that would nest deeper than [`MAX_DEPTH`].
    fn open(&mut self, open: char) -> Result<(), ParseError> {
        if self.depth >= MAX_DEPTH {
            let column = self.column();
            return self
                .error(format!("`{open}` at column {column} nests deeper than the limit of {MAX_DEPTH} levels"));
        }
        self.depth += 1;
        self.pos += 1;
        Ok(())
    }

    fn skip_space(&mut self) {
        while let Some(&c) = self.chars.get(self.pos) {
            if c == '#' {
                while let Some(&c) = self.chars.get(self.pos) {
                    if c == '\n' {
                        break;
                    }
                    self.pos += 1;
                }
            } else if c.is_whitespace() {
                if c == '\n' {
                    self.line += 1;
                }
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.chars.get(self.pos).copied()
    }

    fn fields(&mut self, close: Option<char>) -> Result<Vec<(String, Node)>, ParseError> {
        let mut fields = Vec::new();
        loop {
            match self.peek() {
                None if close.is_none() => return Ok(fields),
                None => return self.error("unexpected end of file, missing `}`"),
                Some(c) if Some(c) == close => {
                    self.pos += 1;
                    return Ok(fields);
                }
                Some(',') | Some(';') => self.pos += 1,
                Some(c) if c.is_alphabetic() || c == '_' => {
                    let name = self.identifier();
                    let value = match self.peek() {
                        Some(':') => {
                            self.pos += 1;
                            self.value()?
                        }
                        Some('{') | Some('<') | Some('[') => self.value()?,
                        _ => return self.error(format!("expected `:` or `{{` after `{name}`")),
                    };
                    fields.push((name, value));
                }
                Some(c) => return self.error(format!("unexpected `{c}`")),
            }
        }
    }

    fn identifier(&mut self) -> String {
        let start = self.pos;
        while let Some(&c) = self.chars.get(self.pos) {
            if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' || c == '+' {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn value(&mut self) -> Result<Node, ParseError> {
        match self.peek() {
            Some('{') => {
                self.open('{')?;
                let fields = self.fields(Some('}'))?;
                self.depth -= 1;
                Ok(Node::Message(fields))
            }
            Some('<') => {
                self.open('<')?;
                let fields = self.fields(Some('>'))?;
                self.depth -= 1;
                Ok(Node::Message(fields))
            }
            Some('[') => {
                self.open('[')?;
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        Some(']') => {
                            self.pos += 1;
                            self.depth -= 1;
                            return Ok(Node::List(items));
                        }
                        Some(',') => self.pos += 1,
                        None => return self.error("unexpected end of file, missing `]`"),
                        Some(_) => items.push(self.value()?),
                    }
                }
            }
            Some(q @ ('"' | '\'')) => {
                self.pos += 1;
                let mut out = String::new();
                loop {
                    match self.chars.get(self.pos).copied() {
                        None | Some('\n') => return self.error("unterminated string"),
                        Some(c) if c == q => {
                            self.pos += 1;
                            break;
                        }
                        Some('\\') => {
                            let escaped = self.chars.get(self.pos + 1).copied();
                            out.push(match escaped {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some(c) => c,
                                None => return self.error("unterminated string"),
                            });
                            self.pos += 2;
                        }
                        Some(c) => {
                            out.push(c);
                            self.pos += 1;
                        }
                    }
                }
                Ok(Node::Scalar(out))
            }
            Some(c) if c.is_alphanumeric() || c == '-' || c == '+' || c == '.' || c == '_' => {
                Ok(Node::Scalar(self.identifier()))
            }
            Some(c) => self.error(format!("unexpected `{c}` where a value was expected")),
            None => self.error("unexpected end of file, expected a value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_triton_config() {
        let doc = parse(
            r#"
            name: "mlp"  # the model
            platform: 'onnxruntime_onnx'
            max_batch_size: 8
            input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 16 ] } ]
            output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }
            output { name: "OUTPUT1" data_type: TYPE_FP32 dims: 4 dims: 2 }
            instance_group [ { count: 2, kind: KIND_CPU } ]
            dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 100 }
            "#,
        )
        .unwrap();
        assert_eq!(doc.get("name").and_then(Node::scalar), Some("mlp"));
        assert_eq!(doc.get("platform").and_then(Node::scalar), Some("onnxruntime_onnx"));
        assert_eq!(doc.all("input").count(), 1);
        assert_eq!(doc.all("output").count(), 2);
        let out1 = doc.all("output").nth(1).unwrap();
        assert_eq!(out1.all("dims").filter_map(Node::scalar).collect::<Vec<_>>(), ["4", "2"]);
        let batching = doc.get("dynamic_batching").unwrap();
        assert_eq!(batching.all("preferred_batch_size").count(), 2);
    }

    #[test]
    fn reports_line_of_error() {
        let err = parse("name: \"x\"\nmax_batch_size 8\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse("input { name: \"x\"").is_err());
        assert!(parse("name: \"unterminated").is_err());
    }

    /// `depth` nested `a {`, closed again.
    fn nested(depth: usize) -> String {
        format!("{}{}", "a {".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn nesting_at_the_limit_parses() {
        let mut doc = parse(&nested(MAX_DEPTH)).unwrap();
        for _ in 0..MAX_DEPTH {
            doc = doc.get("a").unwrap().clone();
        }
        assert_eq!(doc, Node::Message(Vec::new()));
        // Lists and `<...>` count the same, and levels closed earlier are given back.
        let lists = format!("a: {}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&lists).is_ok());
        let angles = format!("{}{}", "a <".repeat(MAX_DEPTH), ">".repeat(MAX_DEPTH));
        assert!(parse(&angles).is_ok());
        let siblings = format!("{} {}", nested(MAX_DEPTH), nested(MAX_DEPTH));
        assert!(parse(&siblings).is_ok());
    }

    #[test]
    fn nesting_past_the_limit_fails_with_its_position() {
        let err = parse(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(err.line, 1);
        // The 65th `{` is the last character of the 65th `a {`.
        let column = 3 * (MAX_DEPTH + 1);
        assert_eq!(err.message, format!("`{{` at column {column} nests deeper than the limit of 64 levels"));

        let lists = format!("x: 1\na: {}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let err = parse(&lists).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.starts_with(&format!("`[` at column {} nests deeper", 4 + MAX_DEPTH)), "{err}");
        assert!(err.to_string().contains("limit of 64 levels"), "{err}");
    }

    #[test]
    fn very_deep_nesting_fails_without_overflowing_the_stack() {
        for text in [
            "a {".repeat(100_000),
            format!("a: {}", "[".repeat(100_000)),
            format!("a: {}", "{ b: [".repeat(50_000)),
            "a <".repeat(100_000),
        ] {
            let err = parse(&text).unwrap_err();
            assert!(err.message.contains("nests deeper than the limit of 64 levels"), "{err}");
        }
    }

    #[test]
    fn oversize_input_fails() {
        let at_limit = format!("a: 1{}", " ".repeat(MAX_INPUT_BYTES - 4));
        assert!(parse(&at_limit).is_ok());
        let over = format!("a: 1\nb: 2\n{}", " ".repeat(MAX_INPUT_BYTES));
        let err = parse(&over).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains(&format!("{} bytes", over.len())), "{err}");
        assert!(err.message.contains("over the limit of 1048576 bytes (1 MiB)"), "{err}");
    }
}
