//! Name syntax rules of `k8s.io/apimachinery/pkg/util/validation`, each returning the
//! API server's messages (empty when valid).

/// Longest label value and qualified-name part, in characters.
const MAX_NAME_LEN: usize = 63;
/// Longest DNS-1123 subdomain (label-key prefix, object names), in characters.
const MAX_SUBDOMAIN_LEN: usize = 253;
/// Longest IANA service name (named ports), in characters.
const MAX_PORT_NAME_LEN: usize = 15;

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: the name part of a label key, and a
/// non-empty label value.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > MAX_NAME_LEN {
        errs.push(format!("must be no more than {MAX_NAME_LEN} characters"));
    }
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if !ok {
        errs.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    errs
}

/// A DNS-1035 label (Service names): `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63
/// characters; unlike a DNS-1123 label it must start with a letter.
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = dns1123_label(s);
    if errs.is_empty() && !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        errs.push("a DNS-1035 label must start with an alphabetic character".into());
    }
    errs
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, at most 253 characters.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > MAX_SUBDOMAIN_LEN {
        errs.push(format!(
            "must be no more than {MAX_SUBDOMAIN_LEN} characters"
        ));
    }
    let ok = !s.is_empty()
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        });
    if !ok {
        errs.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    errs
}

/// A label key or other qualified name: `[prefix/]name`, the prefix a DNS-1123
/// subdomain, the name at most 63 characters of alphanumerics, `-`, `_` and `.`
/// starting and ending with an alphanumeric.
pub fn qualified_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            errs.extend(
                dns1123_subdomain(p)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else {
        if name.len() > MAX_NAME_LEN {
            errs.push(format!(
                "name part must be no more than {MAX_NAME_LEN} characters"
            ));
        }
        if !is_qualified_name_part(name) {
            errs.push(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                    .into(),
            );
        }
    }
    errs
}

/// A label value: empty, or at most 63 characters of alphanumerics, `-`, `_` and `.`
/// starting and ending with an alphanumeric.
pub fn label_value(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.is_empty() {
        return errs;
    }
    if s.len() > MAX_NAME_LEN {
        errs.push(format!("must be no more than {MAX_NAME_LEN} characters"));
    }
    if !is_qualified_name_part(s) {
        errs.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                .into(),
        );
    }
    errs
}

/// An IANA_SVC_NAME (RFC 6335), the syntax of named ports: at most 15 characters,
/// lowercase alphanumerics and `-`, at least one letter, no `-` at either end and no
/// `--`.
pub fn port_name(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > MAX_PORT_NAME_LEN {
        errs.push(format!(
            "must be no more than {MAX_PORT_NAME_LEN} characters"
        ));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        errs.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if s.contains("--") {
        errs.push("must not contain consecutive hyphens".into());
    }
    if !s.bytes().any(|c| c.is_ascii_alphabetic()) {
        errs.push("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        errs.push("must not begin or end with a hyphen".into());
    }
    errs
}

/// A port number: 1..=65535.
pub fn port_number(n: i64) -> Vec<String> {
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_name_rules_follow_iana_svc_name() {
        let cases: &[(&str, &str, bool)] = &[
            ("http", "a plain lowercase word is valid", true),
            ("http-alt", "an inner hyphen is valid", true),
            ("h2", "digits with a letter are valid", true),
            ("abcdefghijklmno", "exactly 15 characters is valid", true),
            ("abcdefghijklmnop", "16 characters is too long", false),
            ("HTTP", "uppercase is invalid", false),
            ("8080", "digits only need a letter", false),
            ("-http", "a leading hyphen is invalid", false),
            ("http-", "a trailing hyphen is invalid", false),
            ("ht--tp", "a double hyphen is invalid", false),
            ("ht_tp", "an underscore is invalid", false),
        ];
        for (name, rule, valid) in cases {
            assert_eq!(port_name(name).is_empty(), *valid, "{rule}: {name:?}");
        }
    }

    #[test]
    fn qualified_names_allow_a_subdomain_prefix_and_a_63_character_name() {
        let long = "a".repeat(64);
        let cases: Vec<(String, &str, bool)> = vec![
            ("app".into(), "a bare name is valid", true),
            (
                "app.kubernetes.io/name".into(),
                "a subdomain prefix is valid",
                true,
            ),
            (
                "kubernetes.io/metadata.name".into(),
                "dots in the name part are valid",
                true,
            ),
            (
                "Role_x".into(),
                "uppercase and underscore in the name are valid",
                true,
            ),
            ("/app".into(), "an empty prefix is invalid", false),
            (
                "Example.com/app".into(),
                "an uppercase prefix is invalid",
                false,
            ),
            ("app/".into(), "an empty name is invalid", false),
            ("-app".into(), "a leading hyphen is invalid", false),
            (long, "a 64 character name is invalid", false),
            ("a/b/c".into(), "two slashes are invalid", false),
        ];
        for (name, rule, valid) in cases {
            assert_eq!(qualified_name(&name).is_empty(), valid, "{rule}: {name:?}");
        }
    }

    #[test]
    fn label_values_may_be_empty_but_not_malformed() {
        assert!(label_value("").is_empty());
        assert!(label_value("demo-app").is_empty());
        assert!(label_value("v1.2_3").is_empty());
        assert!(!label_value("demo app").is_empty());
        assert!(!label_value("-x").is_empty());
        assert!(!label_value(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        assert!(dns1123_label("another-ns").is_empty());
        assert!(!dns1123_label("Another").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(dns1123_subdomain("a.b").is_empty());
        assert!(dns1035_label("kube-dns").is_empty());
        assert!(
            !dns1035_label("1st").is_empty(),
            "service names start with a letter"
        );
        assert!(!dns1123_subdomain("a..b").is_empty());
    }
}
