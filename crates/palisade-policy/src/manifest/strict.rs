//! Decoding an object exactly as `kubectl apply --validate=strict` accepts it.
//!
//! `k8s-openapi` types (and serde derives) skip fields they do not know, so a typo such
//! as `podSelecter` would vanish and the policy would select every pod. [`decode`]
//! wraps the deserializer twice:
//!
//! 1. `serde_ignored` reports the path of every skipped field; each is an error, with
//!    the known field of the same struct that is closest in spelling, if one is close
//!    (the struct's field list is read by [`known_fields`]).
//! 2. `serde_path_to_error` names the field where a value had the wrong type; the
//!    message is rewritten in plain words (`expected a string, found the number 1.10:
//!    quote it ...`), using the source text the YAML reader kept.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde_json::Value;

use super::error::Problems;
use super::location::{join, Segment, Sites};

/// Most type errors reported for one object: each costs one more decoding attempt.
const MAX_TYPE_ERRORS: usize = 16;

/// Decodes `v` as `T`. Every unknown field and every type error go to `p` with their
/// field paths; `None` when `T` could not be built. After a type error the offending
/// value is taken out (a mapping entry removed, a list item made null) and decoding is
/// tried again, so one pass reports the object's problems together, up to
/// [`MAX_TYPE_ERRORS`]; a value that cannot be taken out ends the search.
pub(crate) fn decode<T: DeserializeOwned>(v: &Value, sites: &Sites, p: &mut Problems) -> Option<T> {
    let mut value = std::borrow::Cow::Borrowed(v);
    let mut removed: Vec<Vec<Segment>> = Vec::new();
    let mut seen_unknown: Vec<Vec<Segment>> = Vec::new();
    for _ in 0..MAX_TYPE_ERRORS {
        let mut unknown = Vec::new();
        let result: Result<T, _> = {
            let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_segments(&path));
            let de = serde_ignored::Deserializer::new(value.as_ref(), &mut record);
            serde_path_to_error::deserialize(de)
        };
        for segs in unknown {
            if seen_unknown.contains(&segs) {
                continue;
            }
            let Some((Segment::Key(name), parent)) = segs.split_last() else {
                continue;
            };
            let message = match suggest(name, known_fields::<T>(parent)) {
                Some(s) => format!("unknown field; did you mean {s}?"),
                None => "unknown field".to_string(),
            };
            p.error(join(&segs), message);
            seen_unknown.push(segs);
        }
        let e = match result {
            Ok(t) => return removed.is_empty().then_some(t),
            Err(e) => e,
        };
        let segs: Vec<Segment> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
                _ => None,
            })
            .collect();
        let path = join(&segs);
        let raw = sites.exact(&path).and_then(|s| s.raw.as_deref());
        let (field, message) = plain_message(&path, &e.into_inner().to_string(), raw);
        // A field we took out, now missing, or the same value again: stop.
        if removed.iter().any(|r| join(r) == field) || removed.contains(&segs) {
            return None;
        }
        p.error(field, message);
        let mut owned = value.into_owned();
        if segs.is_empty() || !take_out(&mut owned, &segs) {
            return None;
        }
        removed.push(segs);
        value = std::borrow::Cow::Owned(owned);
    }
    None
}

/// Removes the value at `path` (a mapping entry) or nulls it (a list item, so later
/// indices keep their meaning). False when there is nothing there.
fn take_out(v: &mut Value, path: &[Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for s in parents {
        let next = match s {
            Segment::Key(k) => cur.get_mut(k.as_str()),
            Segment::Index(i) => cur.get_mut(*i),
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match last {
        Segment::Key(k) => cur
            .as_object_mut()
            .is_some_and(|m| m.remove(k.as_str()).is_some()),
        Segment::Index(i) => match cur.get_mut(*i) {
            Some(item) => {
                *item = Value::Null;
                true
            }
            None => false,
        },
    }
}

fn ignored_segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    match path {
        Path::Root => Vec::new(),
        Path::Seq { parent, index } => {
            let mut v = ignored_segments(parent);
            v.push(Segment::Index(*index));
            v
        }
        Path::Map { parent, key } => {
            let mut v = ignored_segments(parent);
            v.push(Segment::Key(key.clone()));
            v
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_segments(parent),
    }
}

/// The closest known field to a misspelt `name`: same letters in another case, or
/// within a small edit distance (one edit per three characters, at most three).
fn suggest(name: &str, known: &[&str]) -> Option<String> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .filter(|k| !k.is_empty())
        .map(|k| {
            let d = if k.eq_ignore_ascii_case(name) {
                0
            } else {
                strsim::osa_distance(name, k)
            };
            (d, *k)
        })
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k.to_string())
}

/// The field names of the struct that `T` holds at `path`, read from what its
/// `Deserialize` impl passes to `deserialize_struct` (k8s-openapi and serde derives
/// both pass the full list). Empty when `path` leads to a map or a non-struct.
pub(crate) fn known_fields<T: DeserializeOwned>(path: &[Segment]) -> &'static [&'static str] {
    let found = Cell::new(None);
    let _ = T::deserialize(Probe {
        rest: path,
        found: &found,
    });
    found.get().unwrap_or(&[])
}

/// Stops the probe; carries nothing (the result is in the probe's cell).
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe stopped")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

/// A deserializer that presents exactly one path: at each struct it offers only the
/// next key, at each sequence one item, and at the end records the struct's fields.
struct Probe<'a> {
    rest: &'a [Segment],
    found: &'a Cell<Option<&'static [&'static str]>>,
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        match self.rest.split_first() {
            None => {
                self.found.set(Some(fields));
                Err(Stop)
            }
            Some((Segment::Key(k), rest)) => visitor.visit_map(ProbeMap {
                key: Some(k),
                rest,
                found: self.found,
            }),
            Some((Segment::Index(_), _)) => Err(Stop),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.rest.split_first() {
            Some((Segment::Key(k), rest)) => visitor.visit_map(ProbeMap {
                key: Some(k),
                rest,
                found: self.found,
            }),
            _ => Err(Stop),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.rest.split_first() {
            Some((Segment::Index(_), rest)) => visitor.visit_seq(ProbeSeq {
                rest: Some(rest),
                found: self.found,
            }),
            _ => Err(Stop),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct tuple tuple_struct enum identifier ignored_any
    }
}

struct ProbeMap<'a> {
    key: Option<&'a String>,
    rest: &'a [Segment],
    found: &'a Cell<Option<&'static [&'static str]>>,
}

impl<'de> de::MapAccess<'de> for ProbeMap<'_> {
    type Error = Stop;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(k) => seed.deserialize(k.as_str().into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(Probe {
            rest: self.rest,
            found: self.found,
        })
    }
}

struct ProbeSeq<'a> {
    rest: Option<&'a [Segment]>,
    found: &'a Cell<Option<&'static [&'static str]>>,
}

impl<'de> de::SeqAccess<'de> for ProbeSeq<'_> {
    type Error = Stop;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        match self.rest.take() {
            Some(rest) => seed
                .deserialize(Probe {
                    rest,
                    found: self.found,
                })
                .map(Some),
            None => Ok(None),
        }
    }
}

/// Rewrites a serde message about `field` in plain words; returns the field to report
/// (a missing field is reported at its own path) and the message. `raw` is the source
/// text of the offending scalar, when the YAML reader kept it.
fn plain_message(field: &str, message: &str, raw: Option<&str>) -> (String, String) {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let path = if field.is_empty() {
            name.to_string()
        } else {
            format!("{field}.{name}")
        };
        return (path, "Required value".into());
    }
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return (field.to_string(), message.to_string());
    };
    let Some((found, expected)) = rest.rsplit_once(", expected ") else {
        return (field.to_string(), message.to_string());
    };
    let expected = describe_expected(expected);
    let scalar = |s: &str| s.trim_matches('`').to_string();
    let (found, quote) = if let Some(v) = found.strip_prefix("floating point ") {
        let shown = raw.map(str::to_string).unwrap_or_else(|| scalar(v));
        (format!("the number {shown}"), Some(shown))
    } else if let Some(v) = found.strip_prefix("integer ") {
        let shown = raw.map(str::to_string).unwrap_or_else(|| scalar(v));
        (format!("the number {shown}"), Some(shown))
    } else if let Some(v) = found.strip_prefix("boolean ") {
        let shown = raw.map(str::to_string).unwrap_or_else(|| scalar(v));
        (format!("the boolean {shown}"), Some(shown))
    } else if let Some(v) = found.strip_prefix("string ") {
        (format!("the string {v}"), None)
    } else {
        let what = match found {
            "map" => "a map",
            "sequence" => "a list",
            "unit value" | "null" => "null",
            other => other,
        };
        (what.to_string(), None)
    };
    let mut out = format!("expected {expected}, found {found}");
    if expected == "a string" {
        if let Some(q) = quote {
            out.push_str(&format!(": quote it ({q:?}) to keep it a string"));
        } else if found == "null" {
            out.push_str(": write \"\" for an empty string");
        }
    }
    (field.to_string(), out)
}

/// serde's "expected" phrase for people: type names become "a Name (a map)".
fn describe_expected(e: &str) -> String {
    match e {
        "a sequence" => "a list".into(),
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "an integer" => {
            "an integer".into()
        }
        "f32" | "f64" => "a number".into(),
        s if s.starts_with(|c: char| c.is_ascii_uppercase())
            && s.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            let article = if s.starts_with(['A', 'E', 'I', 'O', 'U']) {
                "an"
            } else {
                "a"
            };
            format!("{article} {s} (a map)")
        }
        s => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_are_suggested_and_far_ones_are_not() {
        let known = ["podSelector", "ingress", "egress", "policyTypes"];
        assert_eq!(
            suggest("podSelecter", &known).as_deref(),
            Some("podSelector")
        );
        assert_eq!(suggest("ingres", &known).as_deref(), Some("ingress"));
        assert_eq!(
            suggest("PodSelector", &known).as_deref(),
            Some("podSelector")
        );
        assert_eq!(suggest("colour", &known), None);
    }

    #[test]
    fn known_fields_follow_options_sequences_and_structs() {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let path = [
            Segment::Key("spec".into()),
            Segment::Key("ingress".into()),
            Segment::Index(3),
        ];
        let fields = known_fields::<NetworkPolicy>(&path);
        assert!(
            fields.contains(&"from") && fields.contains(&"ports"),
            "{fields:?}"
        );
        // Labels are a map: any key is allowed, so there is nothing to suggest.
        let labels = [
            Segment::Key("metadata".into()),
            Segment::Key("labels".into()),
        ];
        assert!(known_fields::<NetworkPolicy>(&labels).is_empty());
    }

    #[test]
    fn wrong_types_are_described_in_plain_words() {
        let (f, m) = plain_message(
            "spec.podSelector",
            "invalid type: string \"app=web\", expected LabelSelector",
            None,
        );
        assert_eq!(f, "spec.podSelector");
        assert_eq!(
            m,
            "expected a LabelSelector (a map), found the string \"app=web\""
        );
        let (_, m) = plain_message(
            "metadata.labels.version",
            "invalid type: floating point `1.1`, expected a string",
            Some("1.10"),
        );
        assert_eq!(
            m,
            "expected a string, found the number 1.10: quote it (\"1.10\") to keep it a string"
        );
        let (_, m) = plain_message(
            "metadata.labels.app",
            "invalid type: null, expected a string",
            None,
        );
        assert_eq!(
            m,
            "expected a string, found null: write \"\" for an empty string"
        );
        let (f, m) = plain_message("spec.containers[0]", "missing field `name`", None);
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("spec.containers[0].name", "Required value")
        );
    }
}
