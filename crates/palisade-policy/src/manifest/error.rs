//! Errors and warnings of manifest loading.
//!
//! Every problem names the file, the object (`Kind namespace/name`, or `Kind name` for
//! cluster-scoped kinds) and, for validation problems, the field path in the API's own
//! spelling (`spec.ingress[0].ports[1].endPort`), so an operator can find it without a
//! source span.

use std::fmt;

use super::location::Position;

/// `:line:column` after a file name, or nothing when the position is unknown.
struct At<'a>(&'a Option<Position>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// A reason an object (or a whole document) was not loaded.
///
/// None of these are retryable: the input itself must change. Each error rejects only
/// the object (or document) it names; every other object of the same input still loads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// A document is not valid YAML or JSON.
    #[error("{file}{}: document {document}: {message}", At(.at))]
    Syntax {
        /// Source name given to [`crate::manifest::load`].
        file: String,
        /// Where in the file, when known.
        at: Option<Position>,
        /// 1-based document number in the file (`---` separated).
        document: usize,
        /// What the parser said.
        message: String,
    },
    /// A document is well-formed but is not a Kubernetes object we can identify
    /// (no `apiVersion`, `kind` or `metadata.name`).
    #[error("{file}{}: document {document}: {message}", At(.at))]
    Document {
        /// Source name.
        file: String,
        /// Where in the file, when known.
        at: Option<Position>,
        /// 1-based document number in the file.
        document: usize,
        /// What is missing.
        message: String,
    },
    /// An identified object has a field of the wrong type or shape, so it could not be
    /// decoded at all (the API server would reject it the same way).
    #[error("{file}{}: {object}: {message}", At(.at))]
    Decode {
        /// Source name.
        file: String,
        /// Where in the file, when known.
        at: Option<Position>,
        /// `Kind namespace/name` or `Kind name`.
        object: String,
        /// The decoder's message.
        message: String,
    },
    /// An object decoded but failed validation. One error per problem; an object with
    /// any of these is rejected as a whole.
    #[error("{file}{}: {object}: {field}: {message}", At(.at))]
    Invalid {
        /// Source name.
        file: String,
        /// Where in the file, when known (the field's value, or its key for an unknown
        /// field, or its nearest written ancestor for a missing one).
        at: Option<Position>,
        /// `Kind namespace/name` or `Kind name`.
        object: String,
        /// Field path, e.g. `spec.ingress[0].ports[1].endPort`.
        field: String,
        /// What is wrong, lowercase, no final period.
        message: String,
    },
}

impl ManifestError {
    /// The source name the problem was found in.
    pub fn file(&self) -> &str {
        match self {
            ManifestError::Syntax { file, .. }
            | ManifestError::Document { file, .. }
            | ManifestError::Decode { file, .. }
            | ManifestError::Invalid { file, .. } => file,
        }
    }

    /// The object, when it could be identified.
    pub fn object(&self) -> Option<&str> {
        match self {
            ManifestError::Decode { object, .. } | ManifestError::Invalid { object, .. } => {
                Some(object)
            }
            _ => None,
        }
    }

    /// Where in the file, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            ManifestError::Syntax { at, .. }
            | ManifestError::Document { at, .. }
            | ManifestError::Decode { at, .. }
            | ManifestError::Invalid { at, .. } => *at,
        }
    }

    /// The problem alone, without file, object or field.
    pub fn message(&self) -> &str {
        match self {
            ManifestError::Syntax { message, .. }
            | ManifestError::Document { message, .. }
            | ManifestError::Decode { message, .. }
            | ManifestError::Invalid { message, .. } => message,
        }
    }

    /// The field path, for validation errors.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Something that loaded but probably does not do what its author meant, or was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Warning {
    /// Source name, when known ([`crate::manifest::lint`] on a bare
    /// [`crate::model::Cluster`] has none; [`crate::manifest::Loaded::lint`] fills it).
    pub file: Option<String>,
    /// Where in the file, when known.
    pub at: Option<Position>,
    /// `Kind namespace/name`, `Kind name`, `document N` for unidentified documents, or
    /// `""` when the warning is about the whole file.
    pub object: String,
    /// Field path, or `""` when the warning is about the whole object.
    pub field: String,
    /// What to look at, lowercase, no final period.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}{}: ", At(&self.at))?;
        }
        let mut parts = [self.object.as_str(), self.field.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty());
        if let Some(first) = parts.next() {
            f.write_str(first)?;
            for p in parts {
                write!(f, ": {p}")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Problems found while checking one object, before they are attributed to a file and
/// object. Collects every problem rather than stopping at the first.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    /// `(field, message)` pairs that reject the object.
    pub errors: Vec<(String, String)>,
    /// `(field, message)` pairs that do not.
    pub warnings: Vec<(String, String)>,
}

impl Problems {
    /// Records a rejecting problem.
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push((field.into(), message.into()));
    }

    /// Records a non-rejecting problem.
    pub fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.warnings.push((field.into(), message.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_error_displays_file_object_field_and_message() {
        let e = ManifestError::Invalid {
            file: "web.yaml".into(),
            at: None,
            object: "NetworkPolicy default/web".into(),
            field: "spec.ingress[0].ports[1].endPort".into(),
            message: "must not be less than port (8080)".into(),
        };
        assert_eq!(
            e.to_string(),
            "web.yaml: NetworkPolicy default/web: spec.ingress[0].ports[1].endPort: must not be less than port (8080)"
        );
    }

    #[test]
    fn a_known_position_follows_the_file_name() {
        let e = ManifestError::Invalid {
            file: "t.yaml".into(),
            at: Some(Position {
                line: 12,
                column: 7,
            }),
            object: "Pod default/x".into(),
            field: "spec.podSelector".into(),
            message: "expected a LabelSelector (a map), found the string \"app=web\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "t.yaml:12:7: Pod default/x: spec.podSelector: expected a LabelSelector (a map), found the string \"app=web\""
        );
    }

    #[test]
    fn lint_warning_without_file_or_field_displays_object_and_message() {
        let w = Warning {
            file: None,
            at: None,
            object: "NetworkPolicy default/web".into(),
            field: String::new(),
            message: "selects no pod".into(),
        };
        assert_eq!(w.to_string(), "NetworkPolicy default/web: selects no pod");
    }
}
