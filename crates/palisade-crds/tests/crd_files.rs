//! The chart's CRD files are exactly what the Rust types generate, so the API the agent
//! and controller speak and the API the cluster serves cannot drift apart.

use std::path::Path;

#[test]
fn chart_crd_files_equal_what_the_types_generate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/palisade/crds");
    let generated = palisade_crds::crd_files();
    assert_eq!(generated.len(), 2, "one file per CRD");
    for (name, yaml) in &generated {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p palisade-crds --bin palisade-crds-gen`",
                dir.join(name).display()
            )
        });
        assert_eq!(&on_disk, yaml, "{name} differs from the types; run `cargo run -p palisade-crds --bin palisade-crds-gen`");
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut names: Vec<String> = generated.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        files, names,
        "the crds/ directory holds exactly the generated files"
    );
}

#[test]
fn crds_are_palisade_io_v1alpha1_with_printer_columns() {
    for (name, yaml) in palisade_crds::crd_files() {
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(v["spec"]["group"], "palisade.io", "{name}");
        let version = &v["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1", "{name}");
        let columns = version["additionalPrinterColumns"].as_array().unwrap();
        assert!(
            columns.len() >= 4,
            "{name}: columns answer where, since when, why not"
        );
    }
}
