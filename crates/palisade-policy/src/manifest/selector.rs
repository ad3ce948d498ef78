//! Label selectors and label sets from manifests, validated like
//! `ValidateLabelSelector` and `ValidateLabels` in apimachinery.

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;

use super::error::Problems;
use super::names;
use crate::selector::{LabelSelector, Labels, Requirement};

/// Validates `labels` (metadata.labels, matchLabels) at `field`, recording every bad
/// key and value.
pub(crate) fn check_labels(labels: &Labels, field: &str, p: &mut Problems) {
    for (k, v) in labels {
        for m in names::qualified_name(k) {
            p.error(
                format!("{field}[{k:?}]"),
                format!("invalid label key {k:?}: {m}"),
            );
        }
        for m in names::label_value(v) {
            p.error(
                format!("{field}[{k:?}]"),
                format!("invalid label value {v:?}: {m}"),
            );
        }
    }
}

/// Converts and validates a selector at `field`. Returns the selector even when it has
/// problems (the caller rejects the object if `p` has errors).
pub(crate) fn selector(sel: &meta::LabelSelector, field: &str, p: &mut Problems) -> LabelSelector {
    let match_labels: Labels = sel.match_labels.clone().unwrap_or_default();
    check_labels(&match_labels, &format!("{field}.matchLabels"), p);
    let mut match_expressions = Vec::new();
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        for m in names::qualified_name(&e.key) {
            p.error(
                format!("{f}.key"),
                format!("invalid label key {:?}: {m}", e.key),
            );
        }
        let values = e.values.clone().unwrap_or_default();
        let req = match e.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    p.error(
                        format!("{f}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
                for (j, v) in values.iter().enumerate() {
                    for m in names::label_value(v) {
                        p.error(
                            format!("{f}.values[{j}]"),
                            format!("invalid label value {v:?}: {m}"),
                        );
                    }
                }
                if e.operator == "In" {
                    Requirement::In(e.key.clone(), values)
                } else {
                    Requirement::NotIn(e.key.clone(), values)
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    p.error(
                        format!("{f}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
                if e.operator == "Exists" {
                    Requirement::Exists(e.key.clone())
                } else {
                    Requirement::DoesNotExist(e.key.clone())
                }
            }
            other => {
                p.error(
                    format!("{f}.operator"),
                    format!(
                        "unsupported value {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                    ),
                );
                continue;
            }
        };
        match_expressions.push(req);
    }
    LabelSelector {
        match_labels,
        match_expressions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (LabelSelector, Problems) {
        let sel: meta::LabelSelector = serde_saphyr::from_str(yaml).unwrap();
        let mut p = Problems::default();
        let s = selector(&sel, "spec.podSelector", &mut p);
        (s, p)
    }

    #[test]
    fn match_expression_operators_are_validated_like_the_api_server() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "In with values is valid",
                "matchExpressions: [{key: app, operator: In, values: [a]}]",
                None,
            ),
            (
                "In needs values",
                "matchExpressions: [{key: app, operator: In}]",
                Some("spec.podSelector.matchExpressions[0].values"),
            ),
            (
                "NotIn needs non-empty values",
                "matchExpressions: [{key: app, operator: NotIn, values: []}]",
                Some("spec.podSelector.matchExpressions[0].values"),
            ),
            (
                "Exists must have no values",
                "matchExpressions: [{key: app, operator: Exists, values: [a]}]",
                Some("spec.podSelector.matchExpressions[0].values"),
            ),
            (
                "DoesNotExist without values is valid",
                "matchExpressions: [{key: app, operator: DoesNotExist}]",
                None,
            ),
            (
                "an unknown operator is rejected",
                "matchExpressions: [{key: app, operator: Equals, values: [a]}]",
                Some("spec.podSelector.matchExpressions[0].operator"),
            ),
            (
                "operators are case-sensitive",
                "matchExpressions: [{key: app, operator: in, values: [a]}]",
                Some("spec.podSelector.matchExpressions[0].operator"),
            ),
            (
                "an invalid expression key is rejected",
                "matchExpressions: [{key: 'bad key', operator: Exists}]",
                Some("spec.podSelector.matchExpressions[0].key"),
            ),
            (
                "an invalid matchLabels value is rejected",
                "matchLabels: {app: 'not valid'}",
                Some("spec.podSelector.matchLabels[\"app\"]"),
            ),
            (
                "an invalid matchLabels key is rejected",
                "matchLabels: {'-app': x}",
                Some("spec.podSelector.matchLabels[\"-app\"]"),
            ),
        ];
        for (rule, yaml, field) in cases {
            let (_, p) = parse(yaml);
            match field {
                None => assert!(p.errors.is_empty(), "{rule}: {:?}", p.errors),
                Some(f) => assert!(
                    p.errors.iter().any(|(ef, _)| ef == f),
                    "{rule}: expected error at {f}, got {:?}",
                    p.errors
                ),
            }
        }
    }

    #[test]
    fn every_problem_in_a_selector_is_reported() {
        let (_, p) = parse(
            "matchLabels: {'-a': 'b c'}\nmatchExpressions: [{key: x, operator: In}, {key: y, operator: Nope}]",
        );
        assert_eq!(p.errors.len(), 4, "{:?}", p.errors);
    }

    #[test]
    fn a_valid_selector_converts_labels_and_expressions() {
        let (s, p) = parse(
            "matchLabels: {app: web}\nmatchExpressions: [{key: env, operator: NotIn, values: [prod]}, {key: tier, operator: Exists}]",
        );
        assert!(p.errors.is_empty());
        assert_eq!(s.match_labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            s.match_expressions,
            vec![
                Requirement::NotIn("env".into(), vec!["prod".into()]),
                Requirement::Exists("tier".into())
            ]
        );
    }
}
