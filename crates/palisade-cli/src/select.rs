//! kubectl habits for naming pods offline: `-l` label selectors, bare names in `-n`,
//! and the JSON/YAML printer shared by the offline commands.

use std::net::IpAddr;

use palisade_policy::model::Cluster;
use serde_json::Value;

use crate::args::Format;

/// One requirement of a `-l` selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// A parsed `-l` selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter(Vec<Requirement>);

impl LabelFilter {
    /// Parses `k=v,k==v,k!=v,k,!k`. Set-based forms (`in`, `notin`) are refused with a
    /// message rather than misread.
    pub fn parse(s: &str) -> anyhow::Result<LabelFilter> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                anyhow::bail!("-l {s:?}: an empty requirement (two commas, or a trailing one)");
            }
            if part.contains('(') || part.contains(" in ") || part.contains(" notin ") {
                anyhow::bail!(
                    "-l {s:?}: set-based requirements (in, notin) are not supported offline; use k=v, k!=v, k or !k"
                );
            }
            let r = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            out.push(r);
        }
        Ok(LabelFilter(out))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &palisade_policy::selector::Labels) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

/// The pods of `cluster` in `namespace` (all when `None`) whose labels match `filter`,
/// or `None` when neither narrows anything.
pub fn scoped_pods(
    cluster: &Cluster,
    namespace: Option<&str>,
    filter: Option<&LabelFilter>,
) -> Option<Vec<String>> {
    if namespace.is_none() && filter.is_none() {
        return None;
    }
    Some(
        cluster
            .pods
            .iter()
            .filter(|(_, p)| namespace.is_none_or(|ns| p.namespace == ns))
            .filter(|(_, p)| filter.is_none_or(|f| f.matches(&p.labels)))
            .map(|(k, _)| k.clone())
            .collect(),
    )
}

/// `--from`/`--to` as the model names it: `ns/name` and addresses as given, a bare
/// name in `namespace` (kubectl's default namespace, `default`, without `-n`).
pub fn qualify(name: &str, namespace: Option<&str>) -> String {
    if name.contains('/') || name.parse::<IpAddr>().is_ok() {
        return name.to_string();
    }
    format!("{}/{name}", namespace.unwrap_or("default"))
}

/// Prints `v` as JSON or YAML (`format` is one of those two).
pub fn print_document(v: &Value, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Yaml => print!("{}", serde_saphyr::to_string(v)?),
        _ => println!("{}", serde_json::to_string_pretty(v)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> palisade_policy::selector::Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_equality_form_of_a_selector_is_read_as_kubectl_reads_it() {
        let f = LabelFilter::parse("app=web, tier==front,env!=prod,team,!legacy").unwrap();
        assert!(f.matches(&labels(&[("app", "web"), ("tier", "front"), ("team", "a")])));
        assert!(
            !f.matches(&labels(&[("app", "web"), ("tier", "front")])),
            "team missing"
        );
        assert!(!f.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("team", "a"),
            ("env", "prod")
        ])));
        assert!(!f.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("team", "a"),
            ("legacy", "")
        ])));
    }

    #[test]
    fn set_based_and_empty_requirements_are_refused_not_misread() {
        assert!(LabelFilter::parse("app in (a,b)").is_err());
        assert!(LabelFilter::parse("app=web,").is_err());
    }

    #[test]
    fn a_bare_name_takes_the_namespace_and_addresses_stay_addresses() {
        assert_eq!(qualify("web", Some("shop")), "shop/web");
        assert_eq!(qualify("web", None), "default/web");
        assert_eq!(qualify("a/web", Some("shop")), "a/web");
        assert_eq!(qualify("10.0.0.1", Some("shop")), "10.0.0.1");
        assert_eq!(qualify("fd00::1", None), "fd00::1");
    }
}
