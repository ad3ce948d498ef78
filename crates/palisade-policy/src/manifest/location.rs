//! Where a field is in its source file, so an error can say `file.yaml:12:7`.
//!
//! The YAML reader records, for every node of a document, the line and column of its
//! key and of its value under the node's field path. Decoders and validators only know
//! field paths (`spec.ingress[0].from[1]`), so errors are located by looking their path
//! up here; a path with no entry of its own (a field the author did not write, such as a
//! missing `spec.tier`) takes the position of its nearest written ancestor.

use std::collections::BTreeMap;
use std::fmt;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Where one written field is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Site {
    /// The key of a mapping entry (absent for sequence items and the document root).
    pub key: Option<Position>,
    /// The value.
    pub value: Option<Position>,
    /// The source text of a plain scalar that YAML read as a number or boolean, so
    /// an error can show what was written (`1.10`, not the `1.1` it became).
    pub raw: Option<String>,
}

/// The sites of one document, by canonical field path (see [`canonical`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sites(pub BTreeMap<String, Site>);

impl Sites {
    /// The site of `path` itself, if it was written.
    pub fn exact(&self, path: &str) -> Option<&Site> {
        self.0.get(&canonical(path))
    }

    /// The sites below `prefix` (a `List` item's path), with paths relative to it.
    pub fn under(&self, prefix: &str) -> Sites {
        if prefix.is_empty() {
            return self.clone();
        }
        let prefix = segments(prefix);
        let mut out = Sites::default();
        for (path, site) in &self.0 {
            let segs = segments(path);
            if segs.starts_with(&prefix) {
                out.0.insert(join(&segs[prefix.len()..]), site.clone());
            }
        }
        out
    }

    /// The position to report for a problem at `path`: its key (`key_first`, for
    /// unknown fields) or value, else the nearest written ancestor's.
    pub fn locate(&self, path: &str, key_first: bool) -> Option<Position> {
        let mut segs = segments(path);
        loop {
            if let Some(site) = self.0.get(&join(&segs)) {
                let found = if key_first {
                    site.key.or(site.value)
                } else {
                    site.value.or(site.key)
                };
                if found.is_some() {
                    return found;
                }
            }
            segs.pop()?;
        }
    }
}

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// Whether a key can be written after a `.` in a path without ambiguity.
fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Formats segments the way every field path in this module is written:
/// `spec.ingress[0].from`, with keys that contain other characters quoted
/// (`metadata.labels["app.kubernetes.io/name"]`).
pub(crate) fn join(segs: &[Segment]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Segment::Key(k) if plain_key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Key(k) => out.push_str(&format!("[{k:?}]")),
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses a field path written by [`join`] or by hand (`a.b[0]["c.d"]`).
pub(crate) fn segments(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    let mut key = String::new();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if !key.is_empty() {
                    out.push(Segment::Key(std::mem::take(&mut key)));
                }
            }
            '[' => {
                if !key.is_empty() {
                    out.push(Segment::Key(std::mem::take(&mut key)));
                }
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut k = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => k.extend(chars.next()),
                            '"' => break,
                            c => k.push(c),
                        }
                    }
                    // The closing `]`.
                    chars.next();
                    out.push(Segment::Key(k));
                } else {
                    let mut n = String::new();
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                        n.push(c);
                    }
                    match n.parse() {
                        Ok(i) => out.push(Segment::Index(i)),
                        Err(_) => out.push(Segment::Key(n)),
                    }
                }
            }
            c => key.push(c),
        }
    }
    if !key.is_empty() {
        out.push(Segment::Key(key));
    }
    out
}

/// The one spelling of `path` used as a key in [`Sites`].
pub(crate) fn canonical(path: &str) -> String {
    join(&segments(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_quote_keys_with_dots_or_slashes() {
        let segs = vec![
            Segment::Key("metadata".into()),
            Segment::Key("labels".into()),
            Segment::Key("app.kubernetes.io/name".into()),
        ];
        let s = join(&segs);
        assert_eq!(s, "metadata.labels[\"app.kubernetes.io/name\"]");
        assert_eq!(segments(&s), segs);
        assert_eq!(
            canonical("spec.ingress[0].from[1][\"podSelector\"]"),
            "spec.ingress[0].from[1].podSelector"
        );
    }

    #[test]
    fn an_unwritten_field_is_located_at_its_nearest_written_ancestor() {
        let mut sites = Sites::default();
        let at = |line| Position { line, column: 3 };
        sites.0.insert(
            "spec".into(),
            Site {
                key: Some(at(4)),
                value: Some(at(5)),
                raw: None,
            },
        );
        assert_eq!(sites.locate("spec.tier", false), Some(at(5)));
        assert_eq!(sites.locate("spec", true), Some(at(4)));
        assert_eq!(sites.locate("status", false), None);
    }
}
