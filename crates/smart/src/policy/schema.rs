//! The `json-schema` engine: the subset of JSON Schema that access policies use, compiled once.
//!
//! Supported keywords: `type` (a name or a list), `required`, `properties`,
//! `additionalProperties` (boolean or schema), `enum`, `const`, `pattern` (unanchored search,
//! as JSON Schema says), `minLength`, `maxLength`, `items` (one schema for every element),
//! `minItems`, `maxItems`, `minimum`, `maximum`, `not`, `allOf`, `anyOf`, `oneOf`, and the
//! boolean schemas `true`/`false`. Annotations (`$schema`, `$id`, `$comment`, `title`,
//! `description`, `default`, `examples`) are ignored. Any other keyword is a load error: a
//! constraint silently ignored would widen access.

use regex::Regex;
use serde_json::{Map, Value};

use super::data::{Data, data_eq};
use super::matcho::{Matched, at, miss};

const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
];

#[derive(Debug, Default)]
pub(crate) struct Schema {
    /// `Some(b)` for the boolean schemas.
    always: Option<bool>,
    types: Vec<JsonType>,
    required: Vec<Box<str>>,
    properties: Vec<(Box<str>, Schema)>,
    additional: Option<Box<Schema>>,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    pattern: Option<Regex>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    items: Option<Box<Schema>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    not: Option<Box<Schema>>,
    all_of: Vec<Schema>,
    any_of: Vec<Schema>,
    one_of: Vec<Schema>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum JsonType {
    Null,
    Boolean,
    Object,
    Array,
    Number,
    Integer,
    String,
}

impl JsonType {
    fn parse(s: &str) -> Option<JsonType> {
        Some(match s {
            "null" => JsonType::Null,
            "boolean" => JsonType::Boolean,
            "object" => JsonType::Object,
            "array" => JsonType::Array,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "string" => JsonType::String,
            _ => return None,
        })
    }

    fn fits(self, data: Data<'_>) -> bool {
        match (self, data) {
            (_, Data::Missing) => false,
            (JsonType::Object, d) => d.is_object(),
            (JsonType::String, d) => d.as_str().is_some(),
            (JsonType::Null, Data::Value(Value::Null)) => true,
            (JsonType::Boolean, Data::Value(Value::Bool(_))) => true,
            (JsonType::Array, Data::Value(Value::Array(_))) => true,
            (JsonType::Number, Data::Value(Value::Number(_))) => true,
            (JsonType::Integer, Data::Value(Value::Number(n))) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

fn count(value: &Value, key: &str, loc: &str) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| format!("{loc}: {key} must be a non-negative integer"))
}

fn number(value: &Value, key: &str, loc: &str) -> Result<f64, String> {
    value
        .as_f64()
        .ok_or_else(|| format!("{loc}: {key} must be a number"))
}

fn schemas(value: &Value, key: &str, loc: &str) -> Result<Vec<Schema>, String> {
    match value {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, item)| Schema::compile(item, &format!("{loc}.{key}[{i}]")))
            .collect(),
        _ => Err(format!("{loc}: {key} takes a non-empty array of schemas")),
    }
}

impl Schema {
    pub fn compile(value: &Value, loc: &str) -> Result<Schema, String> {
        let map: &Map<String, Value> = match value {
            Value::Bool(b) => {
                return Ok(Schema {
                    always: Some(*b),
                    ..Schema::default()
                });
            }
            Value::Object(map) => map,
            _ => return Err(format!("{loc}: a schema must be an object or a boolean")),
        };
        let mut schema = Schema::default();
        for (key, v) in map {
            let sub = |name: &str| Schema::compile(v, &format!("{loc}.{name}")).map(Box::new);
            match key.as_str() {
                "type" => {
                    let names: Vec<&Value> = match v {
                        Value::Array(items) => items.iter().collect(),
                        other => vec![other],
                    };
                    for name in names {
                        schema.types.push(
                            name.as_str()
                                .and_then(JsonType::parse)
                                .ok_or_else(|| format!("{loc}: unknown type {name}"))?,
                        );
                    }
                }
                "required" => {
                    let Value::Array(items) = v else {
                        return Err(format!("{loc}: required takes an array of strings"));
                    };
                    for item in items {
                        schema.required.push(
                            item.as_str()
                                .ok_or_else(|| format!("{loc}: required takes strings"))?
                                .into(),
                        );
                    }
                }
                "properties" => {
                    let Value::Object(props) = v else {
                        return Err(format!("{loc}: properties takes an object"));
                    };
                    for (name, s) in props {
                        let compiled = Schema::compile(s, &format!("{loc}.properties.{name}"))?;
                        schema.properties.push((name.as_str().into(), compiled));
                    }
                }
                "additionalProperties" => schema.additional = Some(sub(key)?),
                "enum" => match v {
                    Value::Array(items) => schema.enumeration = Some(items.clone()),
                    _ => return Err(format!("{loc}: enum takes an array")),
                },
                "const" => schema.constant = Some(v.clone()),
                "pattern" => {
                    let source = v
                        .as_str()
                        .ok_or_else(|| format!("{loc}: pattern takes a string"))?;
                    schema.pattern = Some(
                        Regex::new(source)
                            .map_err(|e| format!("{loc}: bad pattern {source}: {e}"))?,
                    );
                }
                "minLength" => schema.min_length = Some(count(v, key, loc)?),
                "maxLength" => schema.max_length = Some(count(v, key, loc)?),
                "items" => schema.items = Some(sub(key)?),
                "minItems" => schema.min_items = Some(count(v, key, loc)?),
                "maxItems" => schema.max_items = Some(count(v, key, loc)?),
                "minimum" => schema.minimum = Some(number(v, key, loc)?),
                "maximum" => schema.maximum = Some(number(v, key, loc)?),
                "not" => schema.not = Some(sub(key)?),
                "allOf" => schema.all_of = schemas(v, key, loc)?,
                "anyOf" => schema.any_of = schemas(v, key, loc)?,
                "oneOf" => schema.one_of = schemas(v, key, loc)?,
                k if ANNOTATIONS.contains(&k) => {}
                other => return Err(format!("{loc}: unsupported JSON Schema keyword {other}")),
            }
        }
        Ok(schema)
    }

    /// Validate `data`. A missing value only reaches here at the root or through `items`.
    pub fn validate(&self, data: Data<'_>, explain: bool) -> Matched {
        if let Some(always) = self.always {
            return if always {
                Ok(())
            } else {
                miss(explain, || "the schema is false".to_owned())
            };
        }
        if !self.types.is_empty() && !self.types.iter().any(|t| t.fits(data)) {
            return miss(explain, || {
                format!("{} is not of type {:?}", data.describe(), self.types)
            });
        }
        if let Some(values) = &self.enumeration
            && !values.iter().any(|v| data_eq(data, Data::Value(v)))
        {
            return miss(explain, || format!("{} is not in enum", data.describe()));
        }
        if let Some(value) = &self.constant
            && !data_eq(data, Data::Value(value))
        {
            return miss(explain, || {
                format!("{} is not const {value}", data.describe())
            });
        }
        if let Some(s) = data.as_str() {
            let len = s.chars().count() as u64;
            if self.min_length.is_some_and(|min| len < min)
                || self.max_length.is_some_and(|max| len > max)
            {
                return miss(explain, || {
                    format!("{} has the wrong length", data.describe())
                });
            }
            if let Some(pattern) = &self.pattern
                && !pattern.is_match(s)
            {
                return miss(explain, || {
                    format!(
                        "{} does not match pattern {}",
                        data.describe(),
                        pattern.as_str()
                    )
                });
            }
        }
        if let Data::Value(Value::Number(n)) = data
            && let Some(f) = n.as_f64()
            && (self.minimum.is_some_and(|min| f < min) || self.maximum.is_some_and(|max| f > max))
        {
            return miss(explain, || format!("{n} is out of range"));
        }
        if data.is_object() {
            for name in &self.required {
                if matches!(data.get(name), Data::Missing) {
                    return miss(explain, || format!("required property {name} is missing"));
                }
            }
            for (name, schema) in &self.properties {
                let value = data.get(name);
                if !matches!(value, Data::Missing) {
                    at(schema.validate(value, explain), || name.to_string())?;
                }
            }
            if let Some(additional) = &self.additional {
                let mut failure = None;
                data.all_entries(|key, value| {
                    if self.properties.iter().any(|(name, _)| &**name == key) {
                        return true;
                    }
                    match at(additional.validate(value, explain), || key.to_owned()) {
                        Ok(()) => true,
                        Err(fail) => {
                            failure = Some(fail);
                            false
                        }
                    }
                });
                if let Some(fail) = failure {
                    return Err(fail);
                }
            }
        }
        if let Some(items) = data.as_array() {
            let len = items.len() as u64;
            if self.min_items.is_some_and(|min| len < min)
                || self.max_items.is_some_and(|max| len > max)
            {
                return miss(explain, || {
                    format!("{} has the wrong size", data.describe())
                });
            }
            if let Some(schema) = &self.items {
                for (i, item) in items.iter().enumerate() {
                    at(schema.validate(Data::Value(item), explain), || {
                        i.to_string()
                    })?;
                }
            }
        }
        if let Some(not) = &self.not
            && not.validate(data, false).is_ok()
        {
            return miss(explain, || {
                format!("{} matches the not schema", data.describe())
            });
        }
        for schema in &self.all_of {
            schema.validate(data, explain)?;
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| s.validate(data, false).is_ok()) {
            return miss(explain, || {
                format!("{} matches no anyOf schema", data.describe())
            });
        }
        if !self.one_of.is_empty()
            && self
                .one_of
                .iter()
                .filter(|s| s.validate(data, false).is_ok())
                .count()
                != 1
        {
            return miss(explain, || {
                format!(
                    "{} does not match exactly one oneOf schema",
                    data.describe()
                )
            });
        }
        Ok(())
    }
}
