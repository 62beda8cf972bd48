//! Route matching as Aidbox's route-map does it.
//!
//! Routes form a trie of path segments. A request path may match several routes (a literal
//! `"_search"` and a sibling `[:id]` both match `_search`); each candidate scores +10 per literal
//! segment and +2 per parameter, and the highest score wins (on a tie, the first candidate found
//! trying literals before parameters). Matching backtracks: if the literal branch dead-ends, the
//! parameter branch is tried, so `/smart/Patient/pt-1/_history` reaches
//! `[:resource/type] [:id] "_history"` even though `"Patient"` is a literal sibling.
//!
//! The method is chosen after the path: the best path match answers 405 for a method it does not
//! declare, rather than falling through to a worse match.

use std::collections::HashMap;

use fhirgate_config::{Method, Segment};
use percent_encoding::percent_decode_str;

const LITERAL_SCORE: u32 = 10;
const PARAM_SCORE: u32 = 2;
/// Paths with more segments than this are not matched (no route is that deep).
const MAX_SEGMENTS: usize = 32;

#[derive(Default, Debug)]
struct Node {
    literals: HashMap<Box<str>, usize>,
    /// The parameter child: its name and node. Validation guarantees one name per node.
    param: Option<(Box<str>, usize)>,
    ops: [Option<usize>; 5],
}

impl Node {
    fn has_ops(&self) -> bool {
        self.ops.iter().any(Option::is_some)
    }
}

/// The route trie.
#[derive(Debug)]
pub struct Matcher {
    nodes: Vec<Node>,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher {
            nodes: vec![Node::default()],
        }
    }
}

/// The best match of a path: its node and the raw (still percent-encoded) parameter values.
#[derive(Debug)]
pub struct PathMatch<'m, 'p> {
    matcher: &'m Matcher,
    node: usize,
    params: Vec<(&'m str, &'p str)>,
}

impl PathMatch<'_, '_> {
    /// The index of the route declared for `method` at the matched path.
    pub fn op(&self, method: Method) -> Option<usize> {
        self.matcher.nodes[self.node].ops[method.index()]
    }

    /// Parameter values, percent-decoded.
    pub fn decoded_params(&self) -> Result<Vec<(Box<str>, String)>, String> {
        self.params
            .iter()
            .map(|(name, raw)| {
                percent_decode_str(raw)
                    .decode_utf8()
                    .map(|v| (Box::from(*name), v.into_owned()))
                    .map_err(|_| format!("path parameter {name} is not valid UTF-8 once decoded"))
            })
            .collect()
    }

    /// Raw parameter values (as in the request path).
    pub fn raw_params(&self) -> &[(&str, &str)] {
        &self.params
    }
}

impl Matcher {
    /// Declare route `index` for `method` at `segments`. A later insert for the same method and
    /// path replaces the earlier one (validation refuses such duplicates before we get here).
    pub fn insert(&mut self, segments: &[Segment], method: Method, index: usize) {
        let mut at = 0;
        for seg in segments {
            at = match seg {
                Segment::Literal(l) => match self.nodes[at].literals.get(l.as_str()) {
                    Some(&n) => n,
                    None => {
                        let n = self.push();
                        self.nodes[at].literals.insert(l.as_str().into(), n);
                        n
                    }
                },
                Segment::Param(p) => match &self.nodes[at].param {
                    Some((_, n)) => *n,
                    None => {
                        let n = self.push();
                        self.nodes[at].param = Some((p.as_str().into(), n));
                        n
                    }
                },
            };
        }
        self.nodes[at].ops[method.index()] = Some(index);
    }

    fn push(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// The best-scoring route node for `path` (which starts with `/`; one trailing `/` is ignored).
    pub fn find<'m, 'p>(&'m self, path: &'p str) -> Option<PathMatch<'m, 'p>> {
        let trimmed = path.strip_prefix('/')?;
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let mut segs: [&str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
        let mut n = 0;
        if !trimmed.is_empty() {
            for s in trimmed.split('/') {
                if n == MAX_SEGMENTS || s.is_empty() {
                    return None;
                }
                segs[n] = s;
                n += 1;
            }
        }
        let segs = &segs[..n];
        let mut search = Search {
            matcher: self,
            segs,
            trail: Vec::new(),
            best: None,
        };
        search.walk(0, 0, 0);
        let (_, node, trail) = search.best?;
        Some(PathMatch {
            matcher: self,
            node,
            params: trail,
        })
    }
}

/// Parameter captures: (parameter name, raw segment).
type Captures<'m, 'p> = Vec<(&'m str, &'p str)>;

struct Search<'m, 'p, 's> {
    matcher: &'m Matcher,
    segs: &'s [&'p str],
    /// Parameters captured on the current branch.
    trail: Captures<'m, 'p>,
    /// (score, node, captures) of the best complete match so far.
    best: Option<(u32, usize, Captures<'m, 'p>)>,
}

impl<'m, 'p> Search<'m, 'p, '_> {
    fn walk(&mut self, node: usize, depth: usize, score: u32) {
        let n = &self.matcher.nodes[node];
        if depth == self.segs.len() {
            if n.has_ops() && self.best.as_ref().is_none_or(|(s, _, _)| score > *s) {
                self.best = Some((score, node, self.trail.clone()));
            }
            return;
        }
        // An upper bound: even all-literal from here cannot beat the best; prune.
        let remaining = (self.segs.len() - depth) as u32;
        if self
            .best
            .as_ref()
            .is_some_and(|(s, _, _)| score + remaining * LITERAL_SCORE <= *s)
        {
            return;
        }
        let seg = self.segs[depth];
        if let Some(&child) = n.literals.get(seg) {
            self.walk(child, depth + 1, score + LITERAL_SCORE);
        }
        if let Some((name, child)) = &n.param {
            self.trail.push((name, seg));
            self.walk(*child, depth + 1, score + PARAM_SCORE);
            self.trail.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/a/:id` → segments; a `:` parameter name may contain `.` for `/` (`:resource.type`).
    fn segs(p: &str) -> Vec<Segment> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| match s.strip_prefix(':') {
                Some(name) => Segment::Param(name.replace('.', "/")),
                None => Segment::Literal(s.into()),
            })
            .collect()
    }

    fn matcher(routes: &[(&str, Method)]) -> Matcher {
        let mut m = Matcher::default();
        for (i, (p, method)) in routes.iter().enumerate() {
            m.insert(&segs(p), *method, i);
        }
        m
    }

    #[test]
    fn literal_beats_param() {
        let m = matcher(&[
            ("/smart/Patient/:id", Method::Get),
            ("/smart/Patient/_search", Method::Post),
            ("/smart/Patient/_search", Method::Get),
        ]);
        assert_eq!(
            m.find("/smart/Patient/_search").unwrap().op(Method::Post),
            Some(1)
        );
        assert_eq!(
            m.find("/smart/Patient/_search").unwrap().op(Method::Get),
            Some(2)
        );
        let read = m.find("/smart/Patient/pt-1").unwrap();
        assert_eq!(read.op(Method::Get), Some(0));
        assert_eq!(read.raw_params(), &[("id", "pt-1")]);
    }

    #[test]
    fn backtracks_from_a_dead_literal_branch() {
        let m = matcher(&[
            ("/smart/Patient/:id", Method::Get),
            ("/smart/:resource.type/:id/_history", Method::Get),
        ]);
        let h = m.find("/smart/Patient/pt-1/_history").unwrap();
        assert_eq!(h.op(Method::Get), Some(1));
        assert_eq!(
            h.raw_params(),
            &[("resource/type", "Patient"), ("id", "pt-1")]
        );
    }

    #[test]
    fn highest_score_wins_not_first_found() {
        // literal-first DFS finds /a/:x/:y (22) first; /:p/b/c (22) ties and loses; /a/b/:z (24) wins.
        let m = matcher(&[
            ("/a/:x/:y", Method::Get),
            ("/:p/b/c", Method::Get),
            ("/a/b/:z", Method::Get),
        ]);
        assert_eq!(m.find("/a/b/c").unwrap().op(Method::Get), Some(2));
        assert_eq!(m.find("/a/q/c").unwrap().op(Method::Get), Some(0));
        assert_eq!(m.find("/z/b/c").unwrap().op(Method::Get), Some(1));
    }

    #[test]
    fn method_is_chosen_after_the_path() {
        let m = matcher(&[("/p/_search", Method::Post), ("/p/:id", Method::Get)]);
        let found = m.find("/p/_search").unwrap();
        assert_eq!(
            found.op(Method::Get),
            None,
            "GET /p/_search must not fall through to read"
        );
    }

    #[test]
    fn paths_that_do_not_match() {
        let m = matcher(&[("/a/:id", Method::Get), ("/", Method::Get)]);
        assert!(
            m.find("/a").is_none(),
            "intermediate nodes without ops are not routes"
        );
        assert!(m.find("/a/1/2").is_none());
        assert!(m.find("/a//").is_none());
        assert!(m.find("//a/1").is_none());
        assert!(m.find("a/1").is_none());
        assert!(m.find("/a/1/").is_some(), "one trailing slash is ignored");
        assert_eq!(m.find("/").unwrap().op(Method::Get), Some(1));
        let deep = "/x".repeat(100);
        assert!(m.find(&deep).is_none());
    }

    #[test]
    fn params_are_decoded_after_splitting() {
        let m = matcher(&[("/a/:id", Method::Get)]);
        let f = m.find("/a/x%2Fy%20z").unwrap();
        assert_eq!(
            f.decoded_params().unwrap(),
            vec![("id".into(), "x/y z".to_string())]
        );
        assert!(m.find("/a/%FF").unwrap().decoded_params().is_err());
    }
}
