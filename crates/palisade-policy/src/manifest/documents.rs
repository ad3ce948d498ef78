//! Splitting a source text into documents.
//!
//! YAML streams are split on `---` lines *before* parsing, so one malformed document
//! costs only itself: the others in the same file still load. JSON is detected by its
//! first character (`{` or `[`); a JSON text may hold several concatenated objects or one
//! top-level array of objects. `kind: List` (and typed lists like `PodList`, as `kubectl
//! get -o yaml` prints them) are expanded into their `items` by the caller, see
//! [`list_items`].

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

use super::location::{join, Position, Segment, Site, Sites};

/// One parsed document of a source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Document {
    /// 1-based number within its source.
    pub number: usize,
    /// The parsed content, or why it could not be read.
    pub content: Result<Value, ParseError>,
    /// Where each field of the content was written (empty for JSON).
    pub sites: Sites,
}

/// Why a document could not be read, in plain words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParseError {
    /// What is wrong, lowercase, no final period.
    pub message: String,
    /// Where, when known.
    pub at: Option<Position>,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some(at) => write!(
                f,
                "line {}, column {}: {}",
                at.line, at.column, self.message
            ),
            None => f.write_str(&self.message),
        }
    }
}

/// Splits and parses `text`. Empty documents (only comments or whitespace, or `null`)
/// are skipped but still counted, so numbers match what an editor shows between `---`.
pub(crate) fn split(text: &str) -> Vec<Document> {
    let text = text.trim_start_matches('\u{feff}');
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return split_json(text);
    }
    let mut docs = Vec::new();
    for (i, (first_line, chunk)) in yaml_chunks(text).into_iter().enumerate() {
        let mut sites = Sites::default();
        let content = match parse_yaml(&chunk, first_line, &mut sites) {
            Ok(Value::Null) => continue,
            other => other,
        };
        docs.push(Document {
            number: i + 1,
            content,
            sites,
        });
    }
    docs
}

/// Deepest nesting of mappings and lists read, in levels. Kubernetes objects nest about
/// ten levels (a Pod's node affinity is among the deepest); each level costs stack in
/// the reader, and a 2 MiB thread (tokio's default) must survive the deepest document.
const MAX_DEPTH: usize = 32;

/// Values any document may hold whatever its size (the bound below adds its bytes).
const MIN_NODES: usize = 1024;

/// YAML 1.2 reading options: only `true`/`false` are booleans (`y`, `no`, `on` are
/// strings, as Kubernetes reads them). Repeated keys are passed through so that
/// [`Converter`] can refuse them knowing the key and whether it is at the top level.
///
/// Values per document are bounded by the document's own size: text without aliases
/// cannot hold more values than bytes, so only alias expansion ("billion laughs": a
/// 200-byte document of nested aliases expands to 262,144 strings, found by the fuzzer)
/// can exceed it, and it is refused before the expansion is built.
fn yaml_options(document_bytes: usize) -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = document_bytes + MIN_NODES;
    o.budget = Some(budget);
    o.strict_booleans = true;
    o.with_snippet = false;
    o.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    o
}

/// Parses one YAML document (whose first line is line `first_line` of its file) into
/// JSON, recording every field's position in `sites`.
fn parse_yaml(chunk: &str, first_line: usize, sites: &mut Sites) -> Result<Value, ParseError> {
    let node: Spanned<Node> = serde_saphyr::from_str_with_options(chunk, yaml_options(chunk.len()))
        .map_err(|e| yaml_error(&e, first_line))?;
    let mut c = Converter {
        text: chunk,
        first_line,
        sites,
        path: Vec::new(),
    };
    c.value(node, None)
}

/// A saphyr error in plain words: no option names, and a hint for the usual mistakes.
fn yaml_error(e: &serde_saphyr::Error, first_line: usize) -> ParseError {
    let at = e.location().filter(|l| l.line() > 0).map(|l| Position {
        line: l.line() as usize + first_line - 1,
        column: l.column() as usize,
    });
    let full = e.without_snippet().to_string();
    // saphyr appends " at line L column C"; the position is reported on its own.
    let message = match full.find(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    let message = match original(e) {
        serde_saphyr::Error::DuplicateMappingKey { key, .. } => {
            duplicate_key(key.as_deref().unwrap_or_default(), None)
        }
        // The node budget breached while an alias is replayed: the document's aliases
        // expand it past the bound `yaml_options` sets from its size.
        serde_saphyr::Error::Budget {
            breach: serde_saphyr::budget::BudgetBreach::Nodes { .. },
            ..
        } if is_alias(e) => {
            "document not read: it holds more values than its text (nested YAML aliases expand it)"
                .to_string()
        }
        serde_saphyr::Error::Budget { breach, .. } => too_large(breach),
        _ => message,
    };
    ParseError { message, at }
}

/// The error under saphyr's wrappers (source snippet, alias use site), whose variant
/// says what went wrong.
fn original(mut e: &serde_saphyr::Error) -> &serde_saphyr::Error {
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = e
    {
        e = error;
    }
    e
}

/// Whether the error happened inside an alias replay.
fn is_alias(mut e: &serde_saphyr::Error) -> bool {
    loop {
        match e {
            serde_saphyr::Error::AliasError { .. } => return true,
            serde_saphyr::Error::WithSnippet { error, .. } => e = error,
            _ => return false,
        }
    }
}

/// A breached reader limit in plain words. The limits ([`MAX_DEPTH`] levels of nesting;
/// the reader's defaults of 250,000 values and 1,000,000 parser events per document and
/// bounded alias expansion) keep one hostile document from exhausting stack or memory.
fn too_large(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let what = match breach {
        B::Depth { .. } => "it nests mappings and lists more than 32 levels deep",
        B::Nodes { .. } | B::Events { .. } => "it holds too many values for one object",
        B::Aliases { .. } | B::Anchors { .. } => "it uses too many anchors or aliases",
        B::ScalarBytes { .. } => "its text values are too large",
        _ => "it is larger than a Kubernetes object can be",
    };
    format!("document not read: {what}")
}

/// The message for a key written twice in one mapping. At the top level of a document,
/// `apiVersion` or `kind` twice almost always means two objects without `---`.
fn duplicate_key(key: &str, top_level: Option<bool>) -> String {
    let starts_object = matches!(key, "apiVersion" | "kind") && top_level != Some(false);
    if starts_object {
        format!(
            "the key {key:?} appears twice in one document: two objects must be separated by a line `---`"
        )
    } else if key.is_empty() {
        "a key appears twice in the same mapping; each key may appear once".into()
    } else {
        format!("the key {key:?} appears twice in the same mapping; each key may appear once")
    }
}

/// A YAML node as written: the shape of the document, each part with its position.
enum Node {
    Scalar(Value),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(v)
            .map(|n| Node::Scalar(Value::Number(n)))
            .ok_or_else(|| E::custom(format!("{v} is not a number JSON can hold; quote it")))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.into())))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

/// Turns a [`Node`] tree into JSON, filling [`Sites`] on the way.
struct Converter<'a> {
    text: &'a str,
    first_line: usize,
    sites: &'a mut Sites,
    path: Vec<Segment>,
}

impl Converter<'_> {
    fn position(&self, l: &serde_saphyr::Location) -> Option<Position> {
        (l.line() > 0).then(|| Position {
            line: l.line() as usize + self.first_line - 1,
            column: l.column() as usize,
        })
    }

    /// The source text of a scalar, when the reader gave its byte span.
    fn raw(&self, l: &serde_saphyr::Location) -> Option<String> {
        let span = l.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        self.text
            .get(start..start + len)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn value(&mut self, node: Spanned<Node>, key: Option<Position>) -> Result<Value, ParseError> {
        let at = self.position(&node.referenced);
        let raw = match &node.value {
            Node::Scalar(Value::Number(_) | Value::Bool(_)) => self.raw(&node.referenced),
            _ => None,
        };
        self.sites.0.insert(
            join(&self.path),
            Site {
                key,
                value: at,
                raw,
            },
        );
        match node.value {
            Node::Scalar(v) => Ok(v),
            Node::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    self.path.push(Segment::Index(i));
                    let v = self.value(item, None);
                    self.path.pop();
                    out.push(v?);
                }
                Ok(Value::Array(out))
            }
            Node::Map(entries) => {
                let mut out = serde_json::Map::new();
                for (k, v) in entries {
                    let key_at = self.position(&k.referenced);
                    let name = match k.value {
                        Node::Scalar(Value::String(s)) => s,
                        Node::Scalar(Value::Null) => "null".into(),
                        Node::Scalar(other) => {
                            self.raw(&k.referenced).unwrap_or_else(|| other.to_string())
                        }
                        Node::Seq(_) | Node::Map(_) => {
                            return Err(ParseError {
                                message:
                                    "a mapping key must be a plain value, not a list or mapping"
                                        .into(),
                                at: key_at,
                            })
                        }
                    };
                    if out.contains_key(&name) {
                        return Err(ParseError {
                            message: duplicate_key(&name, Some(self.path.is_empty())),
                            at: key_at,
                        });
                    }
                    self.path.push(Segment::Key(name.clone()));
                    let value = self.value(v, key_at);
                    self.path.pop();
                    out.insert(name, value?);
                }
                Ok(Value::Object(out))
            }
        }
    }
}

/// The text of each YAML document with the file line it starts on. A line `---`
/// (optionally followed by content) starts a new document, `...` ends one; directives
/// (`%YAML`) are dropped. Dropped lines are kept as empty lines so that line numbers
/// within a chunk map to the file by a fixed offset.
fn yaml_chunks(text: &str) -> Vec<(usize, String)> {
    let mut chunks = vec![(1, String::new())];
    let mut started = false;
    for (n, line) in text.lines().enumerate() {
        let is_start = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("---#");
        if is_start {
            if started || !chunks[0].1.trim().is_empty() {
                chunks.push((n + 1, String::new()));
            } else {
                chunks[0] = (n + 1, String::new());
            }
            started = true;
            let rest = line[3..].trim_start();
            let c = &mut chunks.last_mut().expect("non-empty").1;
            if !rest.is_empty() && !rest.starts_with('#') {
                c.push_str(rest);
            }
            c.push('\n');
            continue;
        }
        let c = &mut chunks.last_mut().expect("non-empty").1;
        if line == "..."
            || line.starts_with("... ")
            || (line.starts_with('%') && c.trim().is_empty())
        {
            c.push('\n');
            continue;
        }
        c.push_str(line);
        c.push('\n');
    }
    chunks
}

/// JSON documents: concatenated values, or one top-level array of objects. serde_json
/// reads the values (refusing duplicate keys); each value's text is read again as YAML
/// (JSON is YAML 1.2 flow syntax) only to learn where its fields are. If that second
/// reading fails, the document simply has no positions.
fn split_json(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<JsonValue>();
    let mut start = 0;
    let mut first = true;
    while let Some(item) = stream.next() {
        let end = stream.byte_offset();
        let sites = json_sites(text, start, end);
        start = end;
        match item {
            Ok(JsonValue(Value::Array(items))) if first => {
                for (j, v) in items.into_iter().enumerate() {
                    docs.push(Document {
                        number: j + 1,
                        content: shallow(v),
                        sites: sites.under(&format!("[{j}]")),
                    });
                }
            }
            Ok(JsonValue(v)) => docs.push(Document {
                number: docs.len() + 1,
                content: shallow(v),
                sites,
            }),
            Err(e) => {
                // A JSON stream cannot resynchronise after a syntax error.
                let full = e.to_string();
                let message = match full.find(" at line ") {
                    Some(i) => full[..i].to_string(),
                    None => full,
                };
                docs.push(Document {
                    number: docs.len() + 1,
                    content: Err(ParseError {
                        message,
                        at: (e.line() > 0).then(|| Position {
                            line: e.line(),
                            column: e.column(),
                        }),
                    }),
                    sites: Sites::default(),
                });
                break;
            }
        }
        first = false;
    }
    docs
}

/// `v`, unless it nests deeper than YAML documents may ([`MAX_DEPTH`]).
fn shallow(v: Value) -> Result<Value, ParseError> {
    if depth(&v) > MAX_DEPTH {
        return Err(ParseError {
            message: format!(
                "document not read: it nests objects and arrays more than {MAX_DEPTH} levels deep"
            ),
            at: None,
        });
    }
    Ok(v)
}

/// How many levels of objects and arrays `v` nests (serde_json stops at 128).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The positions of the fields of the JSON value in `text[start..end]`, reported as
/// positions in `text`.
fn json_sites(text: &str, start: usize, end: usize) -> Sites {
    let Some(slice) = text.get(start..end) else {
        return Sites::default();
    };
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    // Pad the first line so that columns match the file.
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
    let padded = format!("{}{}", " ".repeat(column), slice);
    let mut sites = Sites::default();
    match parse_yaml(&padded, line, &mut sites) {
        Ok(_) => sites,
        Err(_) => Sites::default(),
    }
}

/// A JSON value read with duplicate keys refused (`serde_json::Value` keeps the last).
struct JsonValue(Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor).map(JsonValue)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        JsonValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(JsonValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let JsonValue(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} appears twice in the same object; each key may appear once"
                )));
            }
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// If `v` is a list object (`kind: List` or `kind: <Kind>List` with an `items` array),
/// its items.
pub(crate) fn list_items(v: &Value) -> Option<&Vec<Value>> {
    let kind = v.get("kind")?.as_str()?;
    if !kind.ends_with("List") {
        return None;
    }
    v.get("items")?.as_array()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_documents_are_split_on_separator_lines() {
        let docs = split("a: 1\n---\nb: 2\n--- \n# only a comment\n---\nc: 3\n");
        let numbers: Vec<usize> = docs.iter().map(|d| d.number).collect();
        assert_eq!(
            numbers,
            vec![1, 2, 4],
            "the comment-only document is counted, not kept"
        );
        assert_eq!(docs[2].content.as_ref().unwrap()["c"], 3);
    }

    #[test]
    fn a_leading_separator_does_not_create_an_empty_first_document() {
        let docs = split("---\na: 1\n---\nb: 2\n");
        assert_eq!(
            docs.iter().map(|d| d.number).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn one_malformed_yaml_document_does_not_hide_the_others() {
        let docs = split("a: 1\n---\nb: [unclosed\n---\nc: 3\n");
        assert_eq!(docs.len(), 3);
        assert!(docs[0].content.is_ok());
        assert!(docs[1].content.is_err());
        assert!(docs[2].content.is_ok());
    }

    #[test]
    fn json_objects_and_arrays_are_documents() {
        let docs = split("{\"a\": 1}\n{\"b\": 2}");
        assert_eq!(docs.len(), 2);
        let docs = split("[{\"a\": 1}, {\"b\": 2}, {\"c\": 3}]");
        assert_eq!(docs.len(), 3);
    }

    #[test]
    fn lists_expose_their_items() {
        let v: Value = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [{"x": 1}]});
        assert_eq!(list_items(&v).map(Vec::len), Some(1));
        let v: Value = serde_json::json!({"apiVersion": "v1", "kind": "PodList", "items": []});
        assert_eq!(list_items(&v).map(Vec::len), Some(0));
        let v: Value = serde_json::json!({"apiVersion": "v1", "kind": "Pod"});
        assert!(list_items(&v).is_none());
    }
}
