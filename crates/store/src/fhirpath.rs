//! The small part of FHIRPath that R4 search parameter expressions use.
//!
//! Supported: dotted paths over arrays (polymorphic `value[x]` elements included), `|` unions,
//! parentheses, `as Type`, `.as(Type)`, `.ofType(Type)`, `.where(resolve() is Type)` and
//! `.where(field='literal')`. Anything else fails to parse, and the caller records the search
//! parameter as unsupported instead of indexing it wrongly.

use serde_json::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// The leading type name (`Observation`, `Resource`, `DomainResource`): the resource itself.
    Root(String),
    /// `.name`, flattening arrays; a missing `name` falls back to the choice elements `nameXxx`.
    Child(Box<Expr>, String),
    /// `as Type`, `.as(Type)`, `.ofType(Type)`: keep values known to be of that type.
    As(Box<Expr>, String),
    /// `.where(resolve() is Type)`: keep references whose target is of that type.
    WhereResolveIs(Box<Expr>, String),
    /// `.where(field = 'literal')`.
    WhereEq(Box<Expr>, String, String),
    Union(Vec<Expr>),
}

/// One value an expression selected, with the type that a choice element's name revealed
/// (`effectiveDateTime` → `DateTime`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    pub value: &'a Value,
    pub choice_type: Option<&'a str>,
}

/// Parse `src`; `Err` names what is not supported.
pub(crate) fn parse(src: &str) -> Result<Expr, String> {
    let tokens = lex(src)?;
    let mut p = Parser { tokens, pos: 0 };
    let e = p.union()?;
    if p.pos != p.tokens.len() {
        return Err(format!("unexpected {:?}", p.tokens[p.pos]));
    }
    Ok(e)
}

/// Evaluate `expr` on `resource`.
pub(crate) fn eval<'a>(expr: &Expr, resource: &'a Value) -> Vec<Node<'a>> {
    match expr {
        Expr::Root(name) => {
            let rt = resource.get("resourceType").and_then(Value::as_str);
            if name == "Resource" || name == "DomainResource" || rt == Some(name.as_str()) {
                vec![Node {
                    value: resource,
                    choice_type: None,
                }]
            } else {
                Vec::new()
            }
        }
        Expr::Child(inner, name) => {
            let mut out = Vec::new();
            for n in eval(inner, resource) {
                child(n.value, name, &mut out);
            }
            out
        }
        Expr::As(inner, ty) => eval(inner, resource)
            .into_iter()
            .filter(|n| match n.choice_type {
                Some(t) => t.eq_ignore_ascii_case(ty),
                None => true,
            })
            .collect(),
        Expr::WhereResolveIs(inner, ty) => eval(inner, resource)
            .into_iter()
            .filter(|n| reference_type(n.value).as_deref() == Some(ty.as_str()))
            .collect(),
        Expr::WhereEq(inner, field, lit) => eval(inner, resource)
            .into_iter()
            .filter(|n| n.value.get(field).and_then(Value::as_str) == Some(lit.as_str()))
            .collect(),
        Expr::Union(parts) => parts.iter().flat_map(|p| eval(p, resource)).collect(),
    }
}

fn child<'a>(v: &'a Value, name: &str, out: &mut Vec<Node<'a>>) {
    let Value::Object(map) = v else { return };
    let push = |val: &'a Value, t: Option<&'a str>, out: &mut Vec<Node<'a>>| match val {
        Value::Array(items) => out.extend(items.iter().map(|value| Node {
            value,
            choice_type: t,
        })),
        Value::Null => {}
        other => out.push(Node {
            value: other,
            choice_type: t,
        }),
    };
    if let Some(val) = map.get(name) {
        push(val, None, out);
        return;
    }
    // A polymorphic element: `effective` is stored as `effectiveDateTime`, `effectivePeriod`, …
    for (k, val) in map {
        if let Some(rest) = k.strip_prefix(name)
            && rest.starts_with(|c: char| c.is_ascii_uppercase())
        {
            push(val, Some(rest), out);
        }
    }
}

/// The target type of a Reference: from `reference` (`Type/id`, `…/Type/id`), else `type`,
/// else the Aidbox form's `resourceType`.
pub(crate) fn reference_type(v: &Value) -> Option<String> {
    if let Some(r) = v.get("reference").and_then(Value::as_str)
        && let Some((t, _)) = split_reference(r)
    {
        return Some(t);
    }
    v.get("type")
        .and_then(Value::as_str)
        .or_else(|| v.get("resourceType").and_then(Value::as_str))
        .map(str::to_string)
}

/// `Type/id`, `http://…/Type/id` and `…/Type/id/_history/n` → `(Type, id)`.
pub(crate) fn split_reference(r: &str) -> Option<(String, String)> {
    if r.starts_with('#') || r.starts_with("urn:") {
        return None;
    }
    let path = r.split(['?', '#']).next().unwrap_or(r);
    let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() >= 4 && segs[segs.len() - 2] == "_history" {
        segs.truncate(segs.len() - 2);
    }
    if segs.len() < 2 {
        return None;
    }
    let (t, id) = (segs[segs.len() - 2], segs[segs.len() - 1]);
    let type_ok = t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars().all(|c| c.is_ascii_alphanumeric());
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    (type_ok && id_ok).then(|| (t.to_string(), id.to_string()))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Dot,
    Pipe,
    LParen,
    RParen,
    Eq,
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '.' => {
                chars.next();
                out.push(Tok::Dot);
            }
            '|' => {
                chars.next();
                out.push(Tok::Pipe);
            }
            '(' => {
                chars.next();
                out.push(Tok::LParen);
            }
            ')' => {
                chars.next();
                out.push(Tok::RParen);
            }
            '=' => {
                chars.next();
                out.push(Tok::Eq);
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some('\\') => s.extend(chars.next()),
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_alphanumeric() || c == '_' {
                        s.push(c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Ident(s));
            }
            other => return Err(format!("unsupported character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, t: &Tok) -> Result<(), String> {
        match self.next() {
            Some(ref got) if got == t => Ok(()),
            got => Err(format!("expected {t:?}, got {got:?}")),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            got => Err(format!("expected a name, got {got:?}")),
        }
    }

    fn union(&mut self) -> Result<Expr, String> {
        let mut parts = vec![self.type_expr()?];
        while self.peek() == Some(&Tok::Pipe) {
            self.pos += 1;
            parts.push(self.type_expr()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Union(parts)
        })
    }

    /// `term ('as' Type)?`
    fn type_expr(&mut self) -> Result<Expr, String> {
        let mut e = self.term()?;
        while let Some(Tok::Ident(kw)) = self.peek() {
            match kw.as_str() {
                "as" => {
                    self.pos += 1;
                    e = Expr::As(Box::new(e), self.ident()?);
                }
                other => return Err(format!("unsupported operator {other}")),
            }
        }
        Ok(e)
    }

    /// `primary ('.' name | '.' function(args))*`
    fn term(&mut self) -> Result<Expr, String> {
        let mut e = match self.next() {
            Some(Tok::LParen) => {
                let inner = self.union()?;
                self.expect(&Tok::RParen)?;
                inner
            }
            Some(Tok::Ident(name)) => Expr::Root(name),
            got => return Err(format!("unexpected {got:?}")),
        };
        while self.peek() == Some(&Tok::Dot) {
            self.pos += 1;
            let name = self.ident()?;
            if self.peek() != Some(&Tok::LParen) {
                e = Expr::Child(Box::new(e), name);
                continue;
            }
            self.pos += 1;
            e = match name.as_str() {
                "as" | "ofType" => {
                    let t = self.ident()?;
                    Expr::As(Box::new(e), t)
                }
                "where" => self.where_args(e)?,
                other => return Err(format!("unsupported function {other}()")),
            };
            self.expect(&Tok::RParen)?;
        }
        Ok(e)
    }

    /// The inside of `where(…)`: `resolve() is Type` or `field = 'literal'`.
    fn where_args(&mut self, base: Expr) -> Result<Expr, String> {
        let name = self.ident()?;
        if name == "resolve" {
            self.expect(&Tok::LParen)?;
            self.expect(&Tok::RParen)?;
            match self.ident()?.as_str() {
                "is" => {}
                other => return Err(format!("unsupported where(resolve() {other} …)")),
            }
            return Ok(Expr::WhereResolveIs(Box::new(base), self.ident()?));
        }
        self.expect(&Tok::Eq)?;
        match self.next() {
            Some(Tok::Str(lit)) => Ok(Expr::WhereEq(Box::new(base), name, lit)),
            got => Err(format!("unsupported where() comparison with {got:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expr: &str, v: &Value) -> Vec<Value> {
        let e = parse(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
        eval(&e, v).into_iter().map(|n| n.value.clone()).collect()
    }

    #[test]
    fn paths_flatten_arrays() {
        let p =
            json!({"resourceType": "Patient", "name": [{"given": ["A", "B"]}, {"given": ["C"]}]});
        assert_eq!(
            values("Patient.name.given", &p),
            vec![json!("A"), json!("B"), json!("C")]
        );
        assert!(
            values("Observation.name", &p).is_empty(),
            "root must match the resource type"
        );
        assert_eq!(values("Resource.name.given", &p).len(), 3);
    }

    #[test]
    fn choice_types_and_as() {
        let o = json!({"resourceType": "Observation", "effectiveDateTime": "2020", "valueQuantity": {"value": 1}});
        assert_eq!(values("Observation.effective", &o), vec![json!("2020")]);
        assert_eq!(
            values("(Observation.effective as dateTime)", &o),
            vec![json!("2020")]
        );
        assert!(values("(Observation.effective as Period)", &o).is_empty());
        assert!(
            values(
                "(Observation.value as CodeableConcept) | (Observation.value as string)",
                &o
            )
            .is_empty()
        );
        assert_eq!(values("Observation.value.as(Quantity)", &o).len(), 1);
        let c = json!({"resourceType": "Observation", "valueCodeableConcept": {"text": "x"}});
        assert_eq!(
            values("(Observation.value as CodeableConcept).text", &c),
            vec![json!("x")]
        );
    }

    #[test]
    fn where_filters() {
        let o = json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}});
        assert!(values("Observation.subject.where(resolve() is Patient)", &o).is_empty());
        let o = json!({"resourceType": "Observation", "subject": {"reference": "http://x/fhir/Patient/p/_history/2"}});
        assert_eq!(
            values("Observation.subject.where(resolve() is Patient)", &o).len(),
            1
        );
        let a = json!({"resourceType": "Observation", "subject": {"id": "p", "resourceType": "Patient"}});
        assert_eq!(
            values("Observation.subject.where(resolve() is Patient)", &a).len(),
            1
        );
        let p = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "e"}]});
        assert_eq!(
            values("Patient.telecom.where(system='email')", &p),
            vec![json!({"system": "email", "value": "e"})]
        );
    }

    #[test]
    fn unsupported_is_an_error_not_a_guess() {
        assert!(parse("Patient.deceased.exists() and Patient.deceased != false").is_err());
        assert!(parse("Bundle.entry[0].resource").is_err());
        assert!(parse("Observation.component.where(code = %x)").is_err());
    }

    #[test]
    fn references_split() {
        assert_eq!(
            split_reference("Patient/1"),
            Some(("Patient".into(), "1".into()))
        );
        assert_eq!(
            split_reference("https://h/fhir/Patient/1/_history/3"),
            Some(("Patient".into(), "1".into()))
        );
        assert_eq!(split_reference("urn:uuid:abc"), None);
        assert_eq!(split_reference("#contained"), None);
        assert_eq!(split_reference("1"), None);
    }
}
