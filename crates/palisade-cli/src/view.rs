//! `palisade view`: one self-contained HTML page of the policy (graph, truth matrix,
//! explain text), built from the same JSON documents as `simulate -o json`.
//!
//! The page is the bundle in `view/bundle.js` (built from `view/src` by esbuild, see
//! docs/view.md) plus a `<script type="application/json">` holding [`Page`]: nothing is
//! fetched when it is opened, so it works air-gapped. Explain text is computed here, by
//! the same renderer as `palisade explain`, for every pair while the input has at most
//! `explain_limit` pairs (over all ports); above that only the matrix is embedded and
//! the page asks `palisade view --serve` for one pair's text when it is clicked.

use palisade_policy::model::workload::Simulation;
use palisade_policy::model::{Cluster, Protocol};
use palisade_policy::verdict::selecting;
use serde::Serialize;
use serde_json::Value;

use crate::simulate::Matrix;

/// The front end, bundled (checked in; the test `view_bundle_is_built_from_its_sources`
/// rebuilds it and compares).
pub const BUNDLE: &str = include_str!("../view/bundle.js");
/// The page's style sheet.
pub const STYLE: &str = include_str!("../view/src/style.css");

/// Data documents longer than this are embedded gzip-compressed in base64: a 500-pod
/// page's 40 MB of JSON becomes about 1 MB, which the browser reads several times
/// faster than the plain text (the page decompresses it with `DecompressionStream`).
pub const COMPRESS_ABOVE: usize = 1 << 20;

/// Default bound on the pairs (over all ports) whose explain text is embedded.
pub const DEFAULT_EXPLAIN_LIMIT: usize = 20_000;

/// Everything the page shows; the page reads nothing else.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// Version of this document's shape.
    pub palisade_view: u32,
    /// The `-f` inputs, as given.
    pub inputs: Vec<String>,
    /// One `simulate -o json` document per port (with `errors`, `workloads` and
    /// `simulatedAddresses` exactly as `simulate` prints them).
    pub matrices: Vec<Value>,
    /// Every pod of the matrices, in matrix order.
    pub pods: Vec<PodInfo>,
    /// Explain text per matrix, parallel to its `results` (`None`: not embedded).
    pub explain: Option<Vec<Vec<String>>>,
    /// Where explain text comes from: `embedded`, `serve` (ask `/explain`) or `none`
    /// (too many pairs for a file; the page shows the reason and the command to run).
    pub explain_mode: &'static str,
    /// The hook for `palisade diff`: `{"changes": [{from, to, port, protocol, before,
    /// after}]}`, verdicts `allow`/`deny`; the page marks those cells and edges. Not
    /// filled by `view` itself (docs/view.md, "Before and after").
    pub diff: Option<Value>,
}

/// A pod as the page groups and searches it.
#[derive(Debug, Serialize)]
pub struct PodInfo {
    /// `namespace/name`.
    pub name: String,
    /// Namespace (the group of the graph and matrix).
    pub namespace: String,
    /// Labels.
    pub labels: palisade_policy::selector::Labels,
    /// The workload running it (`namespace/name`), if any: the graph's node.
    pub workload: Option<String>,
    /// `Kind namespace/name` of the workload, with its replicas, for the node's label.
    pub workload_label: Option<String>,
    /// Policies whose subject it is (`NetworkPolicy ns/name`, `Kind/name`).
    pub policies: Vec<String>,
}

/// The pods of `cluster` with their workload and the policies that select them.
pub fn pods(cluster: &Cluster, sim: &Simulation) -> Vec<PodInfo> {
    cluster
        .pods
        .iter()
        .map(|(key, pod)| {
            let w = sim.workloads.iter().find(|w| w.pods.contains(key));
            let s = selecting(cluster, pod);
            PodInfo {
                name: key.clone(),
                namespace: pod.namespace.clone(),
                labels: pod.labels.clone(),
                workload: w.map(|w| w.name.clone()),
                workload_label: w.map(|w| format!("{} {} x{}", w.kind, w.name, w.replicas)),
                policies: s
                    .network_policies
                    .iter()
                    .map(|p| format!("NetworkPolicy {p}"))
                    .chain(s.cluster_policies.iter().cloned())
                    .collect(),
            }
        })
        .collect()
}

/// The `explain` text of every pair of `m`, in its order.
pub fn explain_all(
    cluster: &Cluster,
    m: &Matrix,
    protocol: Protocol,
) -> anyhow::Result<Vec<String>> {
    m.results
        .iter()
        .map(|r| explain_text(cluster, &r.from, &r.to, protocol, m.port))
        .collect()
}

/// One pair's text, exactly as `palisade explain` prints it.
pub fn explain_text(
    cluster: &Cluster,
    from: &str,
    to: &str,
    protocol: Protocol,
    port: u16,
) -> anyhow::Result<String> {
    let (flow, d) =
        crate::explain::explain(cluster, "the input", from, to, protocol.number(), port)?;
    Ok(crate::explain::render(&flow, protocol.as_str(), &d))
}

/// The data as a JSON text that is safe inside `<script>`: `</` becomes `<\/` (the
/// same string to a JSON parser), so no input text can close the element.
pub fn data_json(page: &Page) -> anyhow::Result<String> {
    Ok(serde_json::to_string(page)?.replace("</", "<\\/"))
}

/// `json` as gzip in base64.
pub fn gzip_base64(json: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(json.as_bytes())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(gz.finish()?))
}

/// The `<script>` element holding the data: JSON, or gzip in base64 above
/// [`COMPRESS_ABOVE`] bytes.
pub fn data_element(page: &Page) -> anyhow::Result<String> {
    let json = data_json(page)?;
    Ok(if json.len() > COMPRESS_ABOVE {
        format!(
            "<script id=\"palisade-data\" type=\"application/gzip+base64\">{}</script>",
            gzip_base64(&json)?
        )
    } else {
        format!("<script id=\"palisade-data\" type=\"application/json\">{json}</script>")
    })
}

/// The whole page.
pub fn html(page: &Page) -> anyhow::Result<String> {
    let title = format!("palisade view: {}", page.inputs.join(" "))
        .replace('&', "&amp;")
        .replace('<', "&lt;");
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head>\n<body>{}\n\
         <script>{BUNDLE}</script>\n</body></html>\n",
        data_element(page)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn page(n: usize) -> Page {
        Page {
            palisade_view: 1,
            inputs: vec!["x</script>".into()],
            matrices: vec![serde_json::json!({"results": vec!["</script><b>"; n]})],
            pods: Vec::new(),
            explain: None,
            explain_mode: "none",
            diff: None,
        }
    }

    #[test]
    fn no_input_text_closes_the_data_element() {
        let html = html(&page(3)).unwrap();
        assert_eq!(
            html.matches("</script>").count(),
            2,
            "the data and the bundle"
        );
        let start = html.find("application/json\">").unwrap() + "application/json\">".len();
        let end = start + html[start..].find("</script>").unwrap();
        let back: Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(back["matrices"][0]["results"][2], "</script><b>");
        assert_eq!(back["inputs"][0], "x</script>");
    }

    #[test]
    fn big_data_is_the_same_json_gzipped() {
        let p = page(200_000);
        let json = data_json(&p).unwrap();
        assert!(json.len() > COMPRESS_ABOVE);
        let el = data_element(&p).unwrap();
        let b64 = el
            .strip_prefix("<script id=\"palisade-data\" type=\"application/gzip+base64\">")
            .and_then(|s| s.strip_suffix("</script>"))
            .expect("a gzip element");
        use base64::Engine as _;
        let gz = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert!(
            gz.len() * 10 < json.len(),
            "compressed: {} of {}",
            gz.len(),
            json.len()
        );
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, json);
    }

    #[test]
    fn the_bundle_cannot_close_its_element() {
        assert!(!BUNDLE.contains("</script"), "bundle.js holds </script");
        assert!(!STYLE.contains("</style"), "style.css holds </style");
    }
}
