//! Splitting a source text into documents.
//!
//! YAML streams are split on `---` lines *before* parsing, so one malformed document
//! costs only itself: the others in the same file still load. JSON is detected by its
//! first character (`{` or `[`); a JSON text may hold several concatenated objects or one
//! top-level array of objects. `kind: List` (and typed lists like `PodList`, as `kubectl
//! get -o yaml` prints them) are expanded into their `items` by the caller, see
//! [`list_items`].

use serde_json::Value;

/// One parsed document of a source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Document {
    /// 1-based number within its source.
    pub number: usize,
    /// The parsed content, or the parser's message.
    pub content: Result<Value, String>,
}

/// Splits and parses `text`. Empty documents (only comments or whitespace, or `null`)
/// are skipped but still counted, so numbers match what an editor shows between `---`.
pub(crate) fn split(text: &str) -> Vec<Document> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return split_json(trimmed);
    }
    let mut docs = Vec::new();
    for (i, chunk) in yaml_chunks(text).into_iter().enumerate() {
        let content = match serde_saphyr::from_str::<Value>(&chunk) {
            Ok(Value::Null) => continue,
            Ok(v) => Ok(v),
            Err(e) => Err(e.to_string()),
        };
        docs.push(Document {
            number: i + 1,
            content,
        });
    }
    docs
}

/// The text of each YAML document. A line `---` (optionally followed by content) starts
/// a new document, `...` ends one; directives (`%YAML`) are dropped.
fn yaml_chunks(text: &str) -> Vec<String> {
    let mut chunks = vec![String::new()];
    let mut started = false;
    for line in text.lines() {
        let is_start = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.starts_with("---#");
        if is_start {
            if started || !chunks[0].trim().is_empty() {
                chunks.push(String::new());
            }
            started = true;
            let rest = &line[3..];
            if !rest.trim().is_empty() && !rest.trim_start().starts_with('#') {
                chunks
                    .last_mut()
                    .expect("non-empty")
                    .push_str(rest.trim_start());
                chunks.last_mut().expect("non-empty").push('\n');
            }
            continue;
        }
        if line == "..." || line.starts_with("... ") {
            continue;
        }
        if line.starts_with('%') && chunks.last().is_some_and(|c| c.trim().is_empty()) {
            continue;
        }
        let c = chunks.last_mut().expect("non-empty");
        c.push_str(line);
        c.push('\n');
    }
    chunks
}

fn split_json(text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, item) in stream.enumerate() {
        match item {
            Ok(Value::Array(items)) if i == 0 => {
                for (j, v) in items.into_iter().enumerate() {
                    docs.push(Document {
                        number: j + 1,
                        content: Ok(v),
                    });
                }
            }
            Ok(v) => docs.push(Document {
                number: docs.len() + 1,
                content: Ok(v),
            }),
            Err(e) => {
                // A JSON stream cannot resynchronise after a syntax error.
                docs.push(Document {
                    number: docs.len() + 1,
                    content: Err(e.to_string()),
                });
                break;
            }
        }
    }
    docs
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
