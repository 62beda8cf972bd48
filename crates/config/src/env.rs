//! `#env` tagged literals: configuration values taken from the environment at load time.

use fhirgate_edn::{Node, Value};

/// Replace every supported tagged literal in `node` by its value. Supported tags:
/// `#env VAR` (a string), `#env-integer VAR`, `#env-boolean VAR`. A `[VAR default]` vector gives
/// a default used when VAR is unset. Errors are `(position, message)`.
pub fn resolve(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(fhirgate_edn::Pos, String)>,
) {
    match &mut node.value {
        Value::Tagged(tag, inner) => {
            let pos = node.span.start;
            match resolve_tag(tag, inner, lookup) {
                Ok(v) => node.value = v,
                Err(msg) => {
                    errors.push((pos, msg));
                    node.value = Value::Nil;
                }
            }
        }
        Value::List(items) | Value::Vector(items) | Value::Set(items) => {
            items.iter_mut().for_each(|n| resolve(n, lookup, errors))
        }
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            resolve(k, lookup, errors);
            resolve(v, lookup, errors);
        }),
        _ => {}
    }
}

fn resolve_tag(
    tag: &str,
    inner: &Node,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, String> {
    if !matches!(tag, "env" | "env-integer" | "env-boolean") {
        return Err(format!(
            "unknown tag #{tag} (supported: #env, #env-integer, #env-boolean)"
        ));
    }
    let (var, default) = match &inner.value {
        Value::Symbol(s) | Value::Keyword(s) => (s.clone(), None),
        Value::Vector(v) if v.len() == 2 => match &v[0].value {
            Value::Symbol(s) | Value::Keyword(s) => (s.clone(), Some(v[1].value.clone())),
            _ => {
                return Err(format!(
                    "#{tag} expects a variable name, found {}",
                    v[0].value.kind()
                ));
            }
        },
        other => {
            return Err(format!(
                "#{tag} expects a variable name or [NAME default], found {}",
                other.kind()
            ));
        }
    };
    let Some(raw) = lookup(&var) else {
        return default
            .ok_or_else(|| format!("environment variable {var} is not set (#{tag} {var})"));
    };
    match tag {
        "env-integer" => raw
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| format!("environment variable {var}={raw:?} is not an integer")),
        "env-boolean" => match raw.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!(
                "environment variable {var}={raw:?} is not true or false"
            )),
        },
        _ => Ok(Value::Str(raw)),
    }
}
