//! The `matcho` engine: a pattern compiled once, matched against the request.

use regex::Regex;
use serde_json::Value;

use super::data::{Data, Env, data_eq};

/// Why a pattern did not match: the data path of the first failure and a reason.
#[derive(Debug)]
pub(crate) struct Fail {
    /// Built innermost first; reversed for display.
    pub path: Vec<String>,
    pub reason: String,
}

impl Fail {
    pub fn render(mut self) -> String {
        self.path.reverse();
        if self.path.is_empty() {
            self.reason
        } else {
            format!("{}: {}", self.path.join("."), self.reason)
        }
    }
}

/// `Err(None)` when not explaining; `Err(Some(why))` when explaining.
pub(crate) type Matched = Result<(), Option<Box<Fail>>>;

pub(crate) fn miss(explain: bool, reason: impl FnOnce() -> String) -> Matched {
    Err(explain.then(|| {
        Box::new(Fail {
            path: Vec::new(),
            reason: reason(),
        })
    }))
}

pub(crate) fn at(result: Matched, segment: impl FnOnce() -> String) -> Matched {
    result.map_err(|fail| {
        fail.map(|mut f| {
            f.path.push(segment());
            f
        })
    })
}

/// A compiled matcho pattern.
#[derive(Debug)]
pub(crate) enum Pattern {
    Map(Vec<(Box<str>, Pattern)>),
    Seq(Vec<Pattern>),
    Regex(Regex),
    Path(Box<[Box<str>]>, Box<str>),
    Present,
    Nil,
    NotBlank,
    Str(Box<str>),
    Literal(Value),
    Enum(Vec<Value>),
    OneOf(Vec<Pattern>),
    Not(Box<Pattern>),
    Contains(Box<Pattern>),
    Every(Box<Pattern>),
    Reference(Box<Pattern>),
}

impl Pattern {
    /// Compile a pattern; `loc` names where it sits, for error messages.
    pub fn compile(value: &Value, loc: &str) -> Result<Pattern, String> {
        Ok(match value {
            Value::Null => Pattern::Nil,
            Value::Bool(_) | Value::Number(_) => Pattern::Literal(value.clone()),
            Value::String(s) => compile_string(s, loc)?,
            Value::Array(items) => Pattern::Seq(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Pattern::compile(item, &format!("{loc}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let operators = map.keys().filter(|k| k.starts_with('$')).count();
                if operators > 0 {
                    let mut entries = map.iter();
                    return match (entries.next(), entries.next()) {
                        (Some((op, arg)), None) => compile_operator(op, arg, loc),
                        _ => Err(format!(
                            "{loc}: an operator (`$…` key) must be the only key of its object"
                        )),
                    };
                }
                Pattern::Map(
                    map.iter()
                        .map(|(k, v)| {
                            Ok((
                                k.as_str().into(),
                                Pattern::compile(v, &format!("{loc}.{k}"))?,
                            ))
                        })
                        .collect::<Result<_, String>>()?,
                )
            }
        })
    }

    /// Match `data`; `.path`s resolve in `env`.
    pub fn matches(&self, data: Data<'_>, env: &Env<'_>, explain: bool) -> Matched {
        match self {
            Pattern::Map(entries) => {
                if !data.is_object() {
                    return miss(explain, || {
                        format!("expected an object, got {}", data.describe())
                    });
                }
                for (key, pattern) in entries {
                    at(pattern.matches(data.get(key), env, explain), || {
                        key.to_string()
                    })?;
                }
                Ok(())
            }
            Pattern::Seq(patterns) => {
                let Some(items) = data.as_array() else {
                    return miss(explain, || {
                        format!("expected an array, got {}", data.describe())
                    });
                };
                if items.len() < patterns.len() {
                    return miss(explain, || {
                        format!(
                            "expected at least {} elements, got {}",
                            patterns.len(),
                            items.len()
                        )
                    });
                }
                for (i, (pattern, item)) in patterns.iter().zip(items).enumerate() {
                    at(pattern.matches(Data::Value(item), env, explain), || {
                        i.to_string()
                    })?;
                }
                Ok(())
            }
            Pattern::Regex(regex) => match data.as_str() {
                Some(s) if regex.is_match(s) => Ok(()),
                _ => miss(explain, || {
                    format!(
                        "{} does not match regex #{}",
                        data.describe(),
                        regex.as_str()
                    )
                }),
            },
            Pattern::Path(segments, text) => {
                let expected = env.resolve(segments);
                if expected.is_missing() {
                    return miss(explain, || format!("{text} has no value in the request"));
                }
                if data_eq(data, expected) {
                    Ok(())
                } else {
                    miss(explain, || {
                        format!(
                            "{} is not {text} ({})",
                            data.describe(),
                            expected.describe()
                        )
                    })
                }
            }
            Pattern::Present => {
                if data.is_missing() {
                    miss(explain, || "missing (present? required)".to_owned())
                } else {
                    Ok(())
                }
            }
            Pattern::Nil => {
                if data.is_missing() {
                    Ok(())
                } else {
                    miss(explain, || {
                        format!("{} is present (nil? required)", data.describe())
                    })
                }
            }
            Pattern::NotBlank => {
                let blank = match data {
                    _ if data.is_missing() => true,
                    Data::Str(s) => s.trim().is_empty(),
                    Data::Value(Value::String(s)) => s.trim().is_empty(),
                    Data::Value(Value::Array(a)) => a.is_empty(),
                    Data::Value(Value::Object(m)) => m.is_empty(),
                    _ => false,
                };
                if blank {
                    miss(explain, || {
                        format!("{} is blank (not-blank? required)", data.describe())
                    })
                } else {
                    Ok(())
                }
            }
            Pattern::Str(s) => {
                if data.as_str() == Some(s) {
                    Ok(())
                } else {
                    miss(explain, || format!("{} is not {:?}", data.describe(), s))
                }
            }
            Pattern::Literal(v) => {
                if data_eq(data, Data::Value(v)) {
                    Ok(())
                } else {
                    miss(explain, || format!("{} is not {v}", data.describe()))
                }
            }
            Pattern::Enum(values) => {
                if values.iter().any(|v| data_eq(data, Data::Value(v))) {
                    Ok(())
                } else {
                    miss(explain, || format!("{} is not in $enum", data.describe()))
                }
            }
            Pattern::OneOf(patterns) => {
                if patterns.iter().any(|p| p.matches(data, env, false).is_ok()) {
                    return Ok(());
                }
                miss(explain, || {
                    let reasons: Vec<String> = patterns
                        .iter()
                        .enumerate()
                        .filter_map(|(i, p)| {
                            let fail = p.matches(data, env, true).err().flatten()?;
                            Some(format!("[{i}] {}", fail.render()))
                        })
                        .collect();
                    format!("no $one-of alternative matched: {}", reasons.join("; "))
                })
            }
            Pattern::Not(pattern) => match pattern.matches(data, env, false) {
                Ok(()) => miss(explain, || {
                    format!("{} matches the $not pattern", data.describe())
                }),
                Err(_) => Ok(()),
            },
            Pattern::Contains(pattern) => {
                let found = data.as_array().is_some_and(|items| {
                    items
                        .iter()
                        .any(|item| pattern.matches(Data::Value(item), env, false).is_ok())
                });
                if found {
                    Ok(())
                } else {
                    miss(explain, || {
                        format!("no element of {} matches $contains", data.describe())
                    })
                }
            }
            Pattern::Every(pattern) => {
                let Some(items) = data.as_array().filter(|items| !items.is_empty()) else {
                    return miss(explain, || {
                        format!("$every needs a non-empty array, got {}", data.describe())
                    });
                };
                for (i, item) in items.iter().enumerate() {
                    at(pattern.matches(Data::Value(item), env, explain), || {
                        i.to_string()
                    })?;
                }
                Ok(())
            }
            Pattern::Reference(pattern) => match data.as_reference() {
                Some(reference) => at(pattern.matches(reference, env, explain), || {
                    "$reference".to_owned()
                }),
                None => miss(explain, || {
                    format!("{} is not a single reference", data.describe())
                }),
            },
        }
    }
}

fn compile_string(s: &str, loc: &str) -> Result<Pattern, String> {
    Ok(match s {
        "present?" => Pattern::Present,
        "nil?" => Pattern::Nil,
        "not-blank?" => Pattern::NotBlank,
        _ => {
            if let Some(regex) = s.strip_prefix('#') {
                Pattern::Regex(
                    Regex::new(regex).map_err(|e| format!("{loc}: bad regex #{regex}: {e}"))?,
                )
            } else if let Some(path) = s.strip_prefix('.')
                && !path.is_empty()
                && path.split('.').all(|segment| !segment.is_empty())
            {
                Pattern::Path(path.split('.').map(Box::from).collect(), s.into())
            } else {
                Pattern::Str(s.into())
            }
        }
    })
}

fn compile_operator(op: &str, arg: &Value, loc: &str) -> Result<Pattern, String> {
    let inner = |name: &str| Pattern::compile(arg, &format!("{loc}.{name}")).map(Box::new);
    let list = |name: &str| match arg {
        Value::Array(items) => Ok(items),
        _ => Err(format!("{loc}: {name} takes an array")),
    };
    Ok(match op {
        "$enum" => Pattern::Enum(list("$enum")?.clone()),
        "$one-of" => Pattern::OneOf(
            list("$one-of")?
                .iter()
                .enumerate()
                .map(|(i, item)| Pattern::compile(item, &format!("{loc}.$one-of[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        "$not" => Pattern::Not(inner("$not")?),
        "$contains" => Pattern::Contains(inner("$contains")?),
        "$every" => Pattern::Every(inner("$every")?),
        "$reference" => Pattern::Reference(inner("$reference")?),
        other => return Err(format!("{loc}: unknown matcho operator {other}")),
    })
}
