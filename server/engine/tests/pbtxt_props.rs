//! Property tests for the `config.pbtxt` parser: it never panics on any input, bounds nesting, and parses
//! every well-formed document (built here from a random tree, with random layout) back into that tree.

#![allow(clippy::unwrap_used)]

use ferroserve_engine::pbtxt::{MAX_DEPTH, Node, parse};
use proptest::prelude::*;

/// A generated value: the tree the parser should return, and how to write it.
#[derive(Debug, Clone)]
enum Gen {
    /// A scalar: its text in the file and the value the parser returns.
    Scalar { text: String, value: String },
    /// A message, each field with a separator choice; `angle` writes `<...>` instead of `{...}`.
    Message { fields: Vec<(String, Gen, u8)>, angle: bool, colon: bool },
    /// A `[...]` list.
    List(Vec<Gen>),
}

impl Gen {
    fn expected(&self) -> Node {
        match self {
            Gen::Scalar { value, .. } => Node::Scalar(value.clone()),
            Gen::Message { fields, .. } => {
                Node::Message(fields.iter().map(|(name, v, _)| (name.clone(), v.expected())).collect())
            }
            Gen::List(items) => Node::List(items.iter().map(Gen::expected).collect()),
        }
    }

    fn write(&self, out: &mut String) {
        match self {
            Gen::Scalar { text, .. } => out.push_str(text),
            Gen::Message { fields, angle, .. } => {
                out.push(if *angle { '<' } else { '{' });
                write_fields(fields, out);
                out.push(if *angle { '>' } else { '}' });
            }
            Gen::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
        }
    }
}

/// Fields of a message: `name: value` for scalars, `name {..}` / `name: {..}` for messages, and the field
/// separated from the next by whitespace, a newline, a comment, `,` or `;`.
fn write_fields(fields: &[(String, Gen, u8)], out: &mut String) {
    for (name, value, sep) in fields {
        out.push_str(name);
        match value {
            Gen::Message { colon: false, .. } => out.push(' '),
            Gen::List(_) if sep % 2 == 0 => out.push(' '),
            _ => out.push_str(": "),
        }
        value.write(out);
        out.push_str(match sep % 6 {
            0 => " ",
            1 => "\n",
            2 => "  # a comment, with { [ \" ' } in it\n",
            3 => ", ",
            4 => ";\n",
            _ => "\t\r\n ",
        });
    }
}

fn field_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,12}"
}

/// A quoted string with escapes, and its value.
fn quoted() -> impl Strategy<Value = Gen> {
    // Any characters, with the ones that need escaping (or look like syntax) made common.
    let special = prop::sample::select(vec!['\n', '\t', '\\', '"', '\'', '#', '{', '}', '[', ':', ' ', '\r']);
    let chars = prop::collection::vec(prop_oneof![any::<char>(), special], 0..24);
    (chars, any::<bool>()).prop_map(|(value, single)| {
        let value: String = value.into_iter().collect();
        let quote = if single { '\'' } else { '"' };
        let mut text = String::from(quote);
        for c in value.chars() {
            match c {
                '\n' => text.push_str("\\n"),
                '\t' => text.push_str("\\t"),
                '\\' => text.push_str("\\\\"),
                c if c == quote => {
                    text.push('\\');
                    text.push(c);
                }
                c => text.push(c),
            }
        }
        text.push(quote);
        Gen::Scalar { text, value }
    })
}

fn scalar() -> impl Strategy<Value = Gen> {
    let unquoted = prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|u| u.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
        Just("-inf".to_string()),
        Just("true".to_string()),
        "TYPE_[A-Z0-9]{2,6}",
        "[a-zA-Z_][a-zA-Z0-9_.+-]{0,12}",
    ]
    .prop_map(|text| Gen::Scalar { value: text.clone(), text });
    prop_oneof![3 => unquoted, 2 => quoted()]
}

fn value() -> impl Strategy<Value = Gen> {
    scalar().prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            (prop::collection::vec((field_name(), inner.clone(), any::<u8>()), 0..6), any::<bool>(), any::<bool>())
                .prop_map(|(fields, angle, colon)| Gen::Message { fields, angle, colon }),
            prop::collection::vec(inner, 0..6).prop_map(Gen::List),
        ]
    })
}

fn document() -> impl Strategy<Value = Vec<(String, Gen, u8)>> {
    prop::collection::vec((field_name(), value(), any::<u8>()), 0..8)
}

/// Text made of the parser's own punctuation, so random input reaches deep into the grammar.
fn pbtxt_ish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "{", "}", "[", "]", "<", ">", ":", ";", ",", "#", "\"", "'", "\\", "\n", " ", "a", "_x", "1", "-", "+",
            ".", "é", "\u{0}",
        ]),
        0..200,
    )
    .prop_map(|parts| parts.concat())
}

/// A parse error must point at a line of the input.
fn check_result(text: &str, result: Result<Node, ferroserve_engine::pbtxt::ParseError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let lines = text.matches('\n').count() + 1;
        prop_assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}: {e}", e.line);
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        check_result(&text, parse(&text))?;
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any::<String>()) {
        check_result(&text, parse(&text))?;
    }

    #[test]
    fn pbtxt_ish_text_never_panics(text in pbtxt_ish()) {
        check_result(&text, parse(&text))?;
    }

    #[test]
    fn truncated_documents_never_panic(fields in document(), cut in any::<prop::sample::Index>()) {
        let mut text = String::new();
        write_fields(&fields, &mut text);
        let chars: Vec<char> = text.chars().collect();
        let prefix: String = chars[..cut.index(chars.len() + 1)].iter().collect();
        check_result(&prefix, parse(&prefix))?;
    }

    #[test]
    fn well_formed_documents_parse_to_their_tree(fields in document()) {
        let mut text = String::new();
        write_fields(&fields, &mut text);
        let expected = Node::Message(fields.iter().map(|(name, v, _)| (name.clone(), v.expected())).collect());
        prop_assert_eq!(parse(&text).map_err(|e| format!("{e}\n{text}")), Ok(expected));
    }

    #[test]
    fn nesting_is_bounded(depth in 1usize..200, opens in prop::collection::vec(0u8..3, 200)) {
        // `depth` levels of a random mix of `a {`, `a <` and `a: [`, closed again.
        let (mut text, mut close) = (String::new(), String::new());
        for kind in &opens[..depth] {
            match kind {
                0 => { text.push_str("a { "); close.insert(0, '}'); }
                1 => { text.push_str("a < "); close.insert(0, '>'); }
                _ => { text.push_str("a: [{ "); close.insert_str(0, "}]"); }
            }
        }
        // A list level holds a message, so it counts twice.
        let levels: usize = opens[..depth].iter().map(|&k| if k == 2 { 2 } else { 1 }).sum();
        let result = parse(&format!("{text}{close}"));
        if levels <= MAX_DEPTH {
            prop_assert!(result.is_ok(), "{levels} levels: {result:?}");
        } else {
            let err = result.unwrap_err();
            prop_assert!(err.message.contains("nests deeper than the limit of 64 levels"), "{err}");
        }
    }
}
