use clojure_reader::error::{Code, Error as ReaderError};
use clojure_reader::parse::{self, NodeKind, SourceReader};

use crate::{Node, Pos, Span, Value};

/// Nesting deeper than this is refused before parsing: configuration files are shallow, and a
/// bound keeps hostile input from exhausting the stack.
pub const MAX_DEPTH: usize = 200;

/// A syntax error, with the 1-based line and column (in characters) where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct EdnError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl EdnError {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        EdnError {
            line: pos.line,
            col: pos.col,
            message: message.into(),
        }
    }

    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
            offset: 0,
        }
    }
}

/// Parse exactly one EDN form from `source`.
///
/// Refuses: syntax errors, an empty input, anything but whitespace, commas and comments after
/// the form, duplicate map keys and set elements, invalid string escapes, and nesting deeper
/// than [`MAX_DEPTH`].
pub fn parse(source: &str) -> Result<Node, EdnError> {
    check_depth(source)?;
    let mut reader = SourceReader::new(source);
    let node = parse::parse(&mut reader).map_err(reader_error)?;
    let rest = reader.remaining();
    let (end, _) = reader.finish();
    let form = &source[node.span.0.ptr.min(source.len())..node.span.1.ptr.min(source.len())];
    if matches!(node.kind, NodeKind::Nil) && first_content(form, pos(node.span.0)).is_none() {
        return Err(EdnError::at(
            pos(end),
            "expected an EDN form, found end of input",
        ));
    }
    if let Some(p) = first_content(rest, pos(end)) {
        return Err(EdnError::at(
            p,
            "unexpected content after the top-level form",
        ));
    }
    convert(node)
}

fn pos(p: parse::Position) -> Pos {
    Pos {
        line: p.line,
        col: p.column,
        offset: p.ptr,
    }
}

fn span(s: parse::Span) -> Span {
    Span {
        start: pos(s.0),
        end: pos(s.1),
    }
}

fn reader_error(e: ReaderError) -> EdnError {
    let message = match e.code {
        Code::HashMapDuplicateKey => "duplicate key in map".to_string(),
        Code::SetDuplicateKey => "duplicate element in set".to_string(),
        Code::InvalidChar => "invalid character literal".to_string(),
        Code::InvalidEscape => "invalid escape sequence in string".to_string(),
        Code::InvalidKeyword => "invalid keyword".to_string(),
        Code::InvalidNumber => "invalid number".to_string(),
        Code::InvalidRadix(_) => "invalid number radix".to_string(),
        Code::InvalidTag => "invalid tag".to_string(),
        Code::UnexpectedEOF => {
            "unexpected end of input (unclosed string or collection?)".to_string()
        }
        Code::UnmatchedDelimiter(c) => format!("unmatched delimiter `{c}`"),
        other => format!("invalid EDN ({other:?})"),
    };
    EdnError {
        line: e.line.unwrap_or(1),
        col: e.column.unwrap_or(1),
        message,
    }
}

/// Position of the first character after `start` that is not whitespace, a comma or a comment.
fn first_content(rest: &str, start: Pos) -> Option<Pos> {
    let mut p = start;
    let mut in_comment = false;
    for c in rest.chars() {
        if c == '\n' {
            in_comment = false;
        } else if !in_comment && c == ';' {
            in_comment = true;
        } else if !in_comment && !c.is_whitespace() && c != ',' {
            return Some(p);
        }
        advance(&mut p, c);
    }
    None
}

fn advance(p: &mut Pos, c: char) {
    p.offset += c.len_utf8();
    if c == '\n' {
        p.line += 1;
        p.col = 1;
    } else {
        p.col += 1;
    }
}

/// A conservative pre-scan of bracket depth (over-counting can only refuse, never admit).
fn check_depth(source: &str) -> Result<(), EdnError> {
    let mut p = Pos {
        line: 1,
        col: 1,
        offset: 0,
    };
    let mut depth = 0usize;
    let (mut in_str, mut in_comment, mut escape) = (false, false, false);
    for c in source.chars() {
        if in_comment {
            in_comment = c != '\n';
        } else if in_str {
            if escape {
                escape = false;
            } else if c == '\\' {
                escape = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if escape {
            escape = false; // a character literal such as \( is not a bracket
        } else {
            match c {
                '"' => in_str = true,
                ';' => in_comment = true,
                '\\' => escape = true,
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(EdnError::at(
                            p,
                            format!("forms nested deeper than {MAX_DEPTH} levels"),
                        ));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        advance(&mut p, c);
    }
    Ok(())
}

fn convert(node: parse::Node<'_>) -> Result<Node, EdnError> {
    let sp = span(node.span);
    let value = match node.kind {
        NodeKind::Nil => Value::Nil,
        NodeKind::Bool(b) => Value::Bool(b),
        NodeKind::Int(i) => Value::Int(i),
        NodeKind::Double(d) => Value::Float(d.into_inner()),
        NodeKind::Rational((n, d)) => Value::Ratio(n, d),
        NodeKind::Char(c) => Value::Char(c),
        NodeKind::Str(raw) => Value::Str(decode_string(raw, sp.start)?),
        NodeKind::Key(k) => Value::Keyword(k.to_string()),
        NodeKind::Symbol(s) => Value::Symbol(s.to_string()),
        NodeKind::List(items, _) => Value::List(convert_all(items)?),
        NodeKind::Vector(items, _) => Value::Vector(convert_all(items)?),
        NodeKind::Set(items, _) => {
            let items = convert_all(items)?;
            if let Some(dup) = first_duplicate(items.iter()) {
                return Err(EdnError::at(
                    dup.span.start,
                    format!("duplicate element {} in set", dup.value),
                ));
            }
            Value::Set(items)
        }
        NodeKind::Map(entries, _) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                out.push((convert(k)?, convert(v)?));
            }
            if let Some(dup) = first_duplicate(out.iter().map(|(k, _)| k)) {
                return Err(EdnError::at(
                    dup.span.start,
                    format!("duplicate key {} in map", dup.value),
                ));
            }
            Value::Map(out)
        }
        NodeKind::Tagged(tag, _, inner) => {
            Value::Tagged(tag.to_string(), Box::new(convert(*inner)?))
        }
        other => {
            return Err(EdnError::at(
                sp.start,
                format!("unsupported EDN form {other:?}"),
            ));
        }
    };
    Ok(Node { value, span: sp })
}

fn convert_all(items: Vec<parse::Node<'_>>) -> Result<Vec<Node>, EdnError> {
    items.into_iter().map(convert).collect()
}

fn first_duplicate<'a>(nodes: impl Iterator<Item = &'a Node>) -> Option<&'a Node> {
    // Scalars (nearly every key in practice) are compared without allocating; composite forms
    // by their canonical printed form, which ignores spans and set/map order.
    fn scalar(v: &Value) -> Option<(u8, &str)> {
        match v {
            Value::Keyword(s) => Some((0, s)),
            Value::Str(s) => Some((1, s)),
            Value::Symbol(s) => Some((2, s)),
            _ => None,
        }
    }
    let nodes: Vec<&Node> = nodes.collect();
    if nodes.len() <= 12 && nodes.iter().all(|n| scalar(&n.value).is_some()) {
        // small maps of scalar keys: pairwise beats hashing
        return nodes
            .iter()
            .enumerate()
            .find(|(i, n)| {
                nodes[..*i]
                    .iter()
                    .any(|m| scalar(&m.value) == scalar(&n.value))
            })
            .map(|(_, n)| *n);
    }
    let mut scalars = std::collections::HashSet::new();
    let mut others = std::collections::HashSet::new();
    nodes.into_iter().find(|n| match scalar(&n.value) {
        Some(k) => !scalars.insert(k),
        None => !others.insert(n.value.to_string()),
    })
}

/// Decode the escapes the EDN spec allows: `\t \r \n \\ \"`. The reader has already refused
/// any other escape (with its position), so anything else here is a reader change: refuse it too.
fn decode_string(raw: &str, start: Pos) -> Result<String, EdnError> {
    if !raw.contains('\\') {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('t') => '\t',
            Some('r') => '\r',
            Some('n') => '\n',
            Some('\\') => '\\',
            Some('"') => '"',
            _ => return Err(EdnError::at(start, "invalid escape sequence in string")),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> EdnError {
        match parse(src) {
            Err(e) => e,
            Ok(n) => panic!("{src:?} parsed as {}", n.value),
        }
    }

    #[test]
    fn reads_values_with_spans() {
        let n = parse("{ns core\n :a/b [\"x\\ty\" 1 2.5 nil true #{1 2} (f) #env PORT \\c 1/2]}")
            .unwrap();
        let m = n.value.as_map().unwrap();
        assert_eq!(m[0].0.value, Value::Symbol("ns".into()));
        assert_eq!(m[1].0.value, Value::Keyword("a/b".into()));
        assert_eq!((m[1].0.span.start.line, m[1].0.span.start.col), (2, 2));
        let Value::Vector(v) = &m[1].1.value else {
            panic!()
        };
        assert_eq!(v[0].value, Value::Str("x\ty".into()));
        assert_eq!(v[1].value, Value::Int(1));
        assert!(matches!(v[2].value, Value::Float(f) if f == 2.5));
        assert_eq!(v[3].value, Value::Nil);
        assert_eq!(v[4].value, Value::Bool(true));
        assert!(matches!(&v[5].value, Value::Set(s) if s.len() == 2));
        assert!(matches!(&v[6].value, Value::List(_)));
        assert!(
            matches!(&v[7].value, Value::Tagged(t, inner) if t == "env" && inner.value == Value::Symbol("PORT".into()))
        );
        assert_eq!(v[8].value, Value::Char('c'));
        assert_eq!(v[9].value, Value::Ratio(1, 2));
    }

    #[test]
    fn comments_commas_and_discards_are_skipped() {
        let n = parse("; head\n{:a 1, #_ :ignored :b 2} ; tail\n  ,,\n").unwrap();
        assert_eq!(n.value.as_map().unwrap().len(), 2);
    }

    #[test]
    fn rejects_trailing_garbage_with_position() {
        let e = err("{:a 1}\n  :extra");
        assert_eq!((e.line, e.col), (2, 3));
        assert!(e.message.contains("after the top-level form"));
    }

    #[test]
    fn rejects_duplicate_keys_and_set_elements() {
        let e = err("{:a 1\n :b 2\n :a 3}");
        assert_eq!((e.line, e.col), (3, 2));
        assert!(e.message.contains("duplicate key :a"), "{}", e.message);
        let e = err("#{1 2 1}");
        assert_eq!((e.line, e.col), (1, 7));
        // structurally equal keys are duplicates too, whatever their spelling order
        let e = err("{{:x 1 :y 2} 1 {:y 2 :x 1} 2}");
        assert!(e.message.contains("duplicate key"));
    }

    #[test]
    fn rejects_odd_maps() {
        let e = err("{:a 1\n :b}");
        assert_eq!(e.line, 2, "{e:?}");
    }

    #[test]
    fn rejects_bad_escapes_at_the_backslash() {
        let e = err("{:a \"ok\\q\"}");
        assert_eq!((e.line, e.col), (1, 9), "{e:?}");
        let e = err("\"\\u12\"");
        assert!(e.message.contains("escape"), "{e:?}");
        // EDN strings know only \t \r \n \\ \"
        assert!(err("\"\\u00e9\"").message.contains("escape"));
        assert_eq!(
            parse(r#""a\"b\\c\nd""#).unwrap().value,
            Value::Str("a\"b\\c\nd".into())
        );
    }

    #[test]
    fn rejects_unclosed_and_unmatched() {
        assert!(err("{:a [1 2}").message.contains("unmatched"));
        assert!(err("{:a \"open").message.contains("end of input"));
        assert!(err("").message.contains("end of input"));
        assert!(err("  ; only a comment\n").message.contains("end of input"));
        assert!(err(")").message.contains("unmatched"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = err("{\"é\" 1 \"é\" 2}");
        assert_eq!((e.line, e.col), (1, 8));
    }

    #[test]
    fn refuses_deep_nesting_without_overflow() {
        let deep = "[".repeat(100_000);
        assert!(err(&deep).message.contains("nested deeper"));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        // brackets inside strings, comments and character literals do not count
        let s = format!("[\"{}\" \\( ; {}\n]", "[".repeat(500), "(".repeat(500));
        assert!(parse(&s).is_ok());
    }
}
