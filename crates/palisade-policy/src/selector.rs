//! Kubernetes label selectors (`matchLabels` + `matchExpressions`), validated once and
//! then matched many times.
//!
//! Semantics follow `k8s.io/apimachinery/pkg/labels`: every `matchLabels` pair and every
//! expression must hold (AND); an empty selector matches everything. A selector that is
//! absent in a policy is *not* represented here: the caller decides what absence means
//! (for NetworkPolicy peers it means "no constraint on this axis").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Labels of an object, sorted so that equal label sets compare and hash equal.
pub type Labels = BTreeMap<String, String>;

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Requirement {
    /// `key In (values)`: the label exists and its value is one of `values`.
    In(String, Vec<String>),
    /// `key NotIn (values)`: the label is absent, or present with a value not in `values`.
    NotIn(String, Vec<String>),
    /// `key Exists`.
    Exists(String),
    /// `key DoesNotExist`.
    DoesNotExist(String),
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.iter().any(|x| x == v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A validated label selector. Construct it with [`LabelSelector::from_labels`] or through the
/// manifest parser, which checks keys, values and operators like the API server does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LabelSelector {
    /// `matchLabels`: each key must be present with exactly this value.
    pub match_labels: Labels,
    /// `matchExpressions`, ANDed with each other and with `match_labels`.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector from `matchLabels` only.
    pub fn from_labels<I, K, V>(labels: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            match_labels: labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether this selector matches every label set.
    pub fn is_everything(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy every term of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

impl std::fmt::Display for LabelSelector {
    /// Renders in `kubectl` selector syntax, `{}` for the empty selector.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_everything() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r {
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            });
        }
        f.write_str(&parts.join(","))
    }
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

    #[test]
    fn empty_selector_matches_everything_including_no_labels() {
        assert!(LabelSelector::everything().matches(&Labels::new()));
        assert!(LabelSelector::everything().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = LabelSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![Requirement::NotIn("env".into(), vec!["prod".into()])],
        };
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(s.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
    }

    #[test]
    fn not_in_matches_absent_key_but_in_does_not() {
        let l = labels(&[]);
        assert!(Requirement::NotIn("k".into(), vec!["v".into()]).matches(&l));
        assert!(!Requirement::In("k".into(), vec!["v".into()]).matches(&l));
        assert!(Requirement::DoesNotExist("k".into()).matches(&l));
        assert!(!Requirement::Exists("k".into()).matches(&l));
    }
}
