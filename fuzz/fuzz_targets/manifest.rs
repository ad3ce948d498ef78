//! The manifest decoder and validator (`palisade_policy::manifest::load`) on arbitrary
//! text, YAML or JSON. Beyond "no panic, no hang":
//! - every error names the input file, a decode or validation error names its object,
//!   and a validation error names a field; every position lies inside the text;
//! - every loaded object's source is the input file;
//! - loading is deterministic;
//! - the objects re-encoded as JSON load into the same cluster (the YAML and JSON
//!   readers agree).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::manifest::{self, ManifestError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = "fuzz.yaml".to_string();
    let loaded = manifest::load(&[(file.clone(), text.to_string())]);
    let lines = text.lines().count() + 1;
    for e in &loaded.errors {
        assert_eq!(e.file(), file, "{e}");
        match e {
            ManifestError::Decode { object, .. } => assert!(!object.is_empty(), "{e}"),
            ManifestError::Invalid { object, field, .. } => {
                assert!(!object.is_empty(), "{e}");
                assert!(!field.is_empty(), "{e}");
            }
            ManifestError::Syntax { .. } | ManifestError::Document { .. } => {}
        }
        assert!(!e.message().is_empty(), "{e}");
        if let Some(p) = e.position() {
            assert!(
                p.line >= 1 && p.line <= lines,
                "{e}: line {} of {lines}",
                p.line
            );
        }
    }
    for (object, source) in &loaded.sources {
        assert_eq!(source, &file, "{object}");
    }
    let again = manifest::load(&[(file.clone(), text.to_string())]);
    assert_eq!(loaded.errors, again.errors);
    assert_eq!(loaded.warnings, again.warnings);
    assert_eq!(loaded.cluster, again.cluster);

    // The same objects as JSON documents: only when every document parsed, so both
    // loads see the same objects in the same order.
    let Ok(objects) = manifest::split_objects(text)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let json = objects
        .iter()
        .map(|v| serde_json::to_string(v).expect("a JSON value serializes"))
        .collect::<Vec<_>>()
        // Concatenated values: the JSON reader's stream form (a `---` between JSON
        // values is a syntax error, as in kubectl's JSON reader).
        .join("\n");
    let from_json = manifest::load(&[("fuzz.json".to_string(), json.clone())]);
    assert_eq!(
        loaded.cluster, from_json.cluster,
        "YAML and its JSON re-encoding load differently:\n{json}"
    );
    assert_eq!(loaded.errors.len(), from_json.errors.len(), "{json}");
});
