//! EDN with source spans.
//!
//! A thin, owned layer over `clojure-reader`'s span-carrying parser: every [`Node`] knows where it
//! came from, so that later stages (project loading, validation) can point at the offending form
//! with `file:line:col`. On top of the reader we enforce what a configuration file needs and the
//! reader leaves open: exactly one top-level form, no duplicate map keys or set elements, and
//! strictly decoded string escapes.
//!
//! ```
//! use fhirgate_edn::{parse, Value};
//! let node = parse("{:a [1 \"two\"]}").unwrap();
//! let Value::Map(entries) = &node.value else { panic!() };
//! assert_eq!(entries[0].0.value, Value::Keyword("a".into()));
//! assert_eq!(entries[0].1.span.start.col, 5);
//!
//! let err = parse("{:a 1 :a 2}").unwrap_err();
//! assert_eq!((err.line, err.col), (1, 7));
//! assert!(err.message.contains("duplicate key :a"));
//! ```

mod diagnostic;
mod node;
mod read;

pub use diagnostic::{Diagnostic, Severity};
pub use node::{Node, Pos, Span, Value};
pub use read::{EdnError, parse};
