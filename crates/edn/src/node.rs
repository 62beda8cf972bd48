use std::fmt::{self, Write as _};

/// A position in the source: 1-based line and column (in characters), and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
    pub offset: usize,
}

/// The source range of a form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

/// An EDN form and where it was read.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// An EDN value. Collections hold [`Node`]s so that every element keeps its span.
///
/// Equality ignores spans: two forms are equal when they print the same.
#[derive(Debug, Clone)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A ratio such as `1/2`, kept as numerator and denominator.
    Ratio(i64, i64),
    Char(char),
    Str(String),
    /// A keyword without its leading colon: `:smart.fhir/read` is `Keyword("smart.fhir/read")`.
    Keyword(String),
    Symbol(String),
    List(Vec<Node>),
    Vector(Vec<Node>),
    /// Elements in source order (duplicates are rejected by the reader).
    Set(Vec<Node>),
    /// Entries in source order (duplicate keys are rejected by the reader).
    Map(Vec<(Node, Node)>),
    /// A tagged literal such as `#env PORT`: the tag without `#`, and the form it tags.
    Tagged(String, Box<Node>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Value {
    /// A short name of the kind of value, for diagnostics ("a map", "a keyword", …).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Ratio(..) => "a ratio",
            Value::Char(_) => "a character",
            Value::Str(_) => "a string",
            Value::Keyword(_) => "a keyword",
            Value::Symbol(_) => "a symbol",
            Value::List(_) => "a list",
            Value::Vector(_) => "a vector",
            Value::Set(_) => "a set",
            Value::Map(_) => "a map",
            Value::Tagged(..) => "a tagged literal",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_keyword(&self) -> Option<&str> {
        match self {
            Value::Keyword(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_symbol(&self) -> Option<&str> {
        match self {
            Value::Symbol(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The entry whose key is the keyword `key` (without colon).
    pub fn get_keyword(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.value.as_keyword() == Some(key))
            .map(|(_, v)| v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn seq(f: &mut fmt::Formatter<'_>, open: &str, items: &[Node], close: &str) -> fmt::Result {
            f.write_str(open)?;
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    f.write_char(' ')?;
                }
                write!(f, "{}", n.value)?;
            }
            f.write_str(close)
        }
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Ratio(n, d) => write!(f, "{n}/{d}"),
            Value::Char(c) => write!(f, "\\{c}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Keyword(k) => write!(f, ":{k}"),
            Value::Symbol(s) => f.write_str(s),
            Value::List(items) => seq(f, "(", items, ")"),
            Value::Vector(items) => seq(f, "[", items, "]"),
            Value::Set(items) => {
                // Sets and maps print sorted so that equality does not depend on source order.
                let mut parts: Vec<String> = items.iter().map(|n| n.value.to_string()).collect();
                parts.sort();
                write!(f, "#{{{}}}", parts.join(" "))
            }
            Value::Map(entries) => {
                let mut parts: Vec<String> = entries
                    .iter()
                    .map(|(k, v)| format!("{} {}", k.value, v.value))
                    .collect();
                parts.sort();
                write!(f, "{{{}}}", parts.join(", "))
            }
            Value::Tagged(tag, inner) => write!(f, "#{tag} {}", inner.value),
        }
    }
}
