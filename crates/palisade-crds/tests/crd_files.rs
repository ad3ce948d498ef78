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

#[test]
fn the_chart_calico_crd_template_equals_what_the_types_generate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/palisade/templates");
    let (name, yaml) = palisade_crds::calico::calico_crd_template();
    let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `cargo run -p palisade-crds --bin palisade-crds-gen`",
            dir.join(&name).display()
        )
    });
    assert_eq!(
        on_disk, yaml,
        "{name} differs from the types; run `cargo run -p palisade-crds --bin palisade-crds-gen`"
    );
}

#[test]
fn calico_crds_serve_projectcalico_org_v3_behind_the_chart_value_and_survive_uninstall() {
    let (_, text) = palisade_crds::calico::calico_crd_template();
    let body = text
        .split_once("{{- if .Values.calico.serveCRDs }}\n")
        .expect("guarded by the chart value")
        .1
        .strip_suffix("{{- end }}\n")
        .expect("the guard closes at the end");
    let mut kinds = Vec::new();
    for doc in body.split("---\n").filter(|d| !d.trim().is_empty()) {
        let v: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        assert_eq!(v["spec"]["group"], "projectcalico.org");
        assert_eq!(v["spec"]["versions"][0]["name"], "v3");
        assert_eq!(
            v["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "deleting the CRD would delete every policy of its kind"
        );
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        // Every field of Calico's reference pages is declared, so strict field
        // validation refuses a misspelt one instead of the API server pruning it.
        assert!(spec["properties"].is_object(), "{doc}");
        assert_ne!(spec["x-kubernetes-preserve-unknown-fields"], true);
        kinds.push((
            v["spec"]["names"]["kind"].as_str().unwrap().to_string(),
            v["spec"]["scope"].as_str().unwrap().to_string(),
        ));
    }
    let want = [
        ("NetworkPolicy", "Namespaced"),
        ("GlobalNetworkPolicy", "Cluster"),
        ("NetworkSet", "Namespaced"),
        ("GlobalNetworkSet", "Cluster"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect();
    assert_eq!(kinds, want);
}
