//! Calico's label selector language (`projectcalico.org/v3`), parsed once into an
//! expression tree and then matched many times.
//!
//! The grammar and precedence are those of Calico's reference, "Selectors"
//! (<https://docs.tigera.io/calico/latest/reference/resources/networkpolicy#selectors>):
//!
//! ```text
//! or      := and ( "||" and )*                      lowest precedence
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | "(" or ")" | match
//! match   := "all()" | "global()" | "has(" key ")"
//!          | key ( "==" | "!=" ) string
//!          | key ( "in" | "not in" ) "{" [ string ( "," string )* ] "}"
//!          | key ( "contains" | "starts with" | "ends with" ) string
//! string  := '...' | "..."                          (no escapes, as in Calico)
//! key     := [A-Za-z0-9_./-]+
//! ```
//!
//! Matching semantics, from the same table:
//!
//! - `k != 'v'` and `k not in {...}` match resources *without* the label too;
//! - `all()` matches every in-scope resource, `!all()` none;
//! - `global()` matches only non-namespaced resources (a GlobalNetworkSet): the caller
//!   says whether the resource is namespaced.
//!
//! An empty (or all-blank) selector is `all()`, as the reference gives `all()` as the
//! default of a policy's `selector`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::selector::Labels;

/// A parsed Calico selector expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Expr {
    /// `all()`.
    All,
    /// `global()`: non-namespaced resources only.
    Global,
    /// `has(k)`.
    Has(String),
    /// `k == 'v'`.
    Eq(String, String),
    /// `k != 'v'` (true when the label is absent).
    Ne(String, String),
    /// `k in {...}`.
    In(String, Vec<String>),
    /// `k not in {...}` (true when the label is absent).
    NotIn(String, Vec<String>),
    /// `k contains 's'`.
    Contains(String, String),
    /// `k starts with 's'`.
    StartsWith(String, String),
    /// `k ends with 's'`.
    EndsWith(String, String),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// Whether a resource with `labels` matches; `global` says it is non-namespaced.
    pub fn matches(&self, labels: &Labels, global: bool) -> bool {
        match self {
            Expr::All => true,
            Expr::Global => global,
            Expr::Has(k) => labels.contains_key(k),
            Expr::Eq(k, v) => labels.get(k) == Some(v),
            Expr::Ne(k, v) => labels.get(k) != Some(v),
            Expr::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Expr::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            Expr::Contains(k, s) => labels.get(k).is_some_and(|x| x.contains(s.as_str())),
            Expr::StartsWith(k, s) => labels.get(k).is_some_and(|x| x.starts_with(s.as_str())),
            Expr::EndsWith(k, s) => labels.get(k).is_some_and(|x| x.ends_with(s.as_str())),
            Expr::Not(e) => !e.matches(labels, global),
            Expr::And(a, b) => a.matches(labels, global) && b.matches(labels, global),
            Expr::Or(a, b) => a.matches(labels, global) || b.matches(labels, global),
        }
    }

    /// The same expression with every label key prefixed by `prefix`: how Calico turns
    /// a selector over another object's labels (a ServiceAccount's, under `pcsa.`) into
    /// one over the endpoint's inherited labels.
    pub fn prefixed(&self, prefix: &str) -> Expr {
        let k = |key: &String| format!("{prefix}{key}");
        match self {
            Expr::All => Expr::All,
            Expr::Global => Expr::Global,
            Expr::Has(key) => Expr::Has(k(key)),
            Expr::Eq(key, v) => Expr::Eq(k(key), v.clone()),
            Expr::Ne(key, v) => Expr::Ne(k(key), v.clone()),
            Expr::In(key, vs) => Expr::In(k(key), vs.clone()),
            Expr::NotIn(key, vs) => Expr::NotIn(k(key), vs.clone()),
            Expr::Contains(key, v) => Expr::Contains(k(key), v.clone()),
            Expr::StartsWith(key, v) => Expr::StartsWith(k(key), v.clone()),
            Expr::EndsWith(key, v) => Expr::EndsWith(k(key), v.clone()),
            Expr::Not(e) => Expr::Not(Box::new(e.prefixed(prefix))),
            Expr::And(a, b) => {
                Expr::And(Box::new(a.prefixed(prefix)), Box::new(b.prefixed(prefix)))
            }
            Expr::Or(a, b) => Expr::Or(Box::new(a.prefixed(prefix)), Box::new(b.prefixed(prefix))),
        }
    }

    /// Whether `global()` occurs anywhere (a namespace selector that may reach
    /// non-namespaced resources).
    pub fn mentions_global(&self) -> bool {
        match self {
            Expr::Global => true,
            Expr::Not(e) => e.mentions_global(),
            Expr::And(a, b) | Expr::Or(a, b) => a.mentions_global() || b.mentions_global(),
            _ => false,
        }
    }
}

/// A Calico selector: the text as written and its expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CalicoSelector {
    /// The source text, for explanations.
    pub text: String,
    /// The parsed expression.
    pub expr: Expr,
}

impl CalicoSelector {
    /// `all()`.
    pub fn all() -> Self {
        CalicoSelector {
            text: "all()".into(),
            expr: Expr::All,
        }
    }

    /// Parses `text`; see the module doc for the grammar.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError {
                offset: 0,
                message: format!("longer than {MAX_SELECTOR_LEN} bytes"),
            });
        }
        let mut p = Parser { src: text, pos: 0 };
        p.skip_ws();
        if p.pos == text.len() {
            return Ok(CalicoSelector {
                text: text.to_string(),
                expr: Expr::All,
            });
        }
        let expr = p.or()?;
        p.skip_ws();
        if p.pos != text.len() {
            return Err(p.err("unexpected text after the expression"));
        }
        Ok(CalicoSelector {
            text: text.to_string(),
            expr,
        })
    }

    /// Whether a resource with `labels` matches; `global` says it is non-namespaced.
    pub fn matches(&self, labels: &Labels, global: bool) -> bool {
        self.expr.matches(labels, global)
    }

    /// `self && other`, as Calico joins a rule's selector with its service account
    /// match: `(a) && (b)`.
    pub fn and(&self, other: &CalicoSelector) -> CalicoSelector {
        CalicoSelector {
            text: format!("({}) && ({})", self.text, other.text),
            expr: Expr::And(Box::new(self.expr.clone()), Box::new(other.expr.clone())),
        }
    }
}

impl fmt::Display for CalicoSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A selector that does not parse: where (byte offset, 0-based; the column is
/// `offset + 1` for ASCII text) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector at column {}: {message}", .offset + 1)]
pub struct SelectorError {
    /// Byte offset into the selector text.
    pub offset: usize,
    /// What was expected.
    pub message: String,
}

/// Longest selector accepted, in bytes: bounds parsing work and recursion depth.
const MAX_SELECTOR_LEN: usize = 4096;
/// Deepest nesting of `!` and parentheses accepted (recursion bound).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, message: impl Into<String>) -> SelectorError {
        SelectorError {
            offset: self.pos,
            message: message.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    /// Consumes `tok` (after blanks) if it is next.
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    /// Consumes the word `w` if it is next and not the start of a longer key.
    fn eat_word(&mut self, w: &str) -> bool {
        self.skip_ws();
        let r = self.rest();
        if r.starts_with(w) && !r[w.len()..].starts_with(is_key_char) {
            self.pos += w.len();
            true
        } else {
            false
        }
    }

    fn depth(&self, depth: usize) -> Result<(), SelectorError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nested deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, SelectorError> {
        self.or_at(0)
    }

    fn or_at(&mut self, depth: usize) -> Result<Expr, SelectorError> {
        self.depth(depth)?;
        let mut e = self.and(depth)?;
        while self.eat("||") {
            let r = self.and(depth)?;
            e = Expr::Or(Box::new(e), Box::new(r));
        }
        Ok(e)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, SelectorError> {
        let mut e = self.unary(depth)?;
        while self.eat("&&") {
            let r = self.unary(depth)?;
            e = Expr::And(Box::new(e), Box::new(r));
        }
        Ok(e)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, SelectorError> {
        self.depth(depth)?;
        self.skip_ws();
        if self.rest().starts_with("!=") {
            return Err(self.err("expected an expression, found !="));
        }
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        if self.eat("(") {
            let e = self.or_at(depth + 1)?;
            if !self.eat(")") {
                return Err(self.err("expected )"));
            }
            return Ok(e);
        }
        self.term()
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !is_key_char(c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.err("expected a label key, all(), global(), has(), ! or ("));
        }
        let k = self.rest()[..len].to_string();
        self.pos += len;
        Ok(k)
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err("expected a quoted string ('v' or \"v\")")),
        };
        let start = self.pos;
        let body = &self.rest()[1..];
        match body.find(quote) {
            Some(end) => {
                let s = body[..end].to_string();
                self.pos += end + 2;
                Ok(s)
            }
            None => {
                self.pos = start;
                Err(self.err("unterminated string"))
            }
        }
    }

    fn term(&mut self) -> Result<Expr, SelectorError> {
        self.skip_ws();
        for (word, expr) in [("all", Expr::All), ("global", Expr::Global)] {
            let save = self.pos;
            if self.eat_word(word) {
                if self.eat("(") && self.eat(")") {
                    return Ok(expr);
                }
                self.pos = save;
            }
        }
        let save = self.pos;
        if self.eat_word("has") && self.eat("(") {
            let k = self.key()?;
            if !self.eat(")") {
                return Err(self.err("expected ) after the key of has("));
            }
            return Ok(Expr::Has(k));
        }
        self.pos = save;
        let key = self.key()?;
        if self.eat("==") {
            return Ok(Expr::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Expr::Ne(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Expr::In(key, self.set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.err("expected `in` after `not`"));
            }
            return Ok(Expr::NotIn(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Expr::Contains(key, self.string()?));
        }
        for (first, make) in [
            ("starts", Expr::StartsWith as fn(String, String) -> Expr),
            ("ends", Expr::EndsWith),
        ] {
            if self.eat_word(first) {
                if !self.eat_word("with") {
                    return Err(self.err(format!("expected `with` after `{first}`")));
                }
                return Ok(make(key, self.string()?));
            }
        }
        Err(self.err(format!(
            "expected an operator after {key:?} (==, !=, in, not in, contains, starts with, ends with)"
        )))
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.err("expected {"));
        }
        let mut out = Vec::new();
        if self.eat("}") {
            return Ok(out);
        }
        loop {
            out.push(self.string()?);
            if self.eat("}") {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(self.err("expected , or }"));
            }
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(sel: &str, l: &[(&str, &str)]) -> bool {
        CalicoSelector::parse(sel)
            .unwrap_or_else(|e| panic!("{sel}: {e}"))
            .matches(&labels(l), false)
    }

    #[test]
    fn seed_002_selector_parses_with_parentheses_and_single_quotes() {
        let sel = "(app.kubernetes.io/managed-by == 'manager') && (app.kubernetes.io/part-of == 'super-feature')";
        let both = [
            ("app.kubernetes.io/managed-by", "manager"),
            ("app.kubernetes.io/part-of", "super-feature"),
        ];
        assert!(m(sel, &both));
        assert!(!m(sel, &both[..1]));
    }

    #[test]
    fn not_equal_and_not_in_match_resources_without_the_label() {
        assert!(m("k != 'v'", &[]));
        assert!(!m("k != 'v'", &[("k", "v")]));
        assert!(m("k not in {'a', \"b\"}", &[]));
        assert!(!m("k not in {'a', \"b\"}", &[("k", "b")]));
        assert!(!m("k in {'a'}", &[]));
        assert!(!m("k in {}", &[("k", "")]));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        // The reference's own example: ((!has(my-label)) || ((starts with) && (in))).
        let sel =
            "! has(my-label) || my-label starts with 'prod' && role in {'frontend','business'}";
        assert!(m(sel, &[]));
        assert!(m(sel, &[("my-label", "prod-1"), ("role", "business")]));
        assert!(!m(sel, &[("my-label", "prod-1")]));
        assert!(!m(sel, &[("my-label", "dev"), ("role", "frontend")]));
    }

    #[test]
    fn all_global_and_empty() {
        assert!(m("all()", &[]));
        assert!(!m("!all()", &[("a", "b")]));
        assert!(m("", &[]));
        assert!(m("   ", &[]));
        let g = CalicoSelector::parse("global()").unwrap();
        assert!(g.matches(&Labels::new(), true));
        assert!(!g.matches(&Labels::new(), false));
        assert!(g.expr.mentions_global());
    }

    #[test]
    fn string_operators() {
        assert!(m("k contains 'ell'", &[("k", "hello")]));
        assert!(m("k starts with 'he'", &[("k", "hello")]));
        assert!(m("k ends with \"lo\"", &[("k", "hello")]));
        assert!(!m("k ends with 'he'", &[("k", "hello")]));
    }

    #[test]
    fn a_key_named_like_an_operator_word_is_a_key() {
        assert!(m("has(in)", &[("in", "")]));
        assert!(m("all == 'x'", &[("all", "x")]));
        assert!(m("notes == 'x'", &[("notes", "x")]));
    }

    #[test]
    fn errors_name_the_column() {
        for (sel, col) in [
            ("a == ", 6),
            ("a = 'b'", 3),
            ("a == 'b' &&", 12),
            ("(a == 'b'", 10),
            ("a == 'b", 6),
            ("a in {'x' 'y'}", 11),
            ("a == 'b' c", 10),
            ("has(a", 6),
            ("a not 'b'", 7),
        ] {
            let e = CalicoSelector::parse(sel).expect_err(sel);
            assert_eq!(e.offset + 1, col, "{sel}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let sel = format!("{}all(){}", "(".repeat(200), ")".repeat(200));
        assert!(CalicoSelector::parse(&sel).is_err());
        let sel = format!("{}all()", "!".repeat(200));
        assert!(CalicoSelector::parse(&sel).is_err());
    }
}
