//! `palisade convert`: policies into another API where their meaning is kept
//! (`palisade_policy::convert`), YAML on stdout, one note per refused object on stderr.
//!
//! Exit codes: 0 every object of the source kinds converted; 5 some were refused (the
//! others are still written); 3 invalid input (objects that did not load, which are
//! not converted, or no object of the source kinds at all).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use palisade_policy::convert::{self, Target};
use palisade_policy::manifest;
use serde_json::json;

use crate::args::Manifests;
use crate::inputs::{self, InvalidInput};
use crate::EXIT_INVALID;

/// Exit code when some objects were refused: the output holds only the others.
pub const EXIT_REFUSED: i32 = 5;

/// What to convert into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum To {
    /// Kubernetes NetworkPolicies into Calico projectcalico.org/v3 NetworkPolicies.
    Calico,
    /// Calico NetworkPolicies into Kubernetes NetworkPolicies.
    #[value(name = "networkpolicy")]
    NetworkPolicy,
    /// Calico GlobalNetworkPolicies into ClusterNetworkPolicies.
    #[value(name = "clusternetworkpolicy")]
    ClusterNetworkPolicy,
}

/// Output formats of `convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConvertFormat {
    /// The converted manifests, `---` between them.
    Yaml,
    /// `{"converted": [...], "refused": [...], "errors": [...]}`.
    Json,
}

/// `palisade convert` arguments.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub manifests: Manifests,
    /// Read the subdirectories of -f directories too (as kubectl -R).
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// The API to convert into.
    #[arg(long, value_enum)]
    pub to: To,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = ConvertFormat::Yaml)]
    pub output: ConvertFormat,
}

/// Runs `palisade convert`.
pub fn run(a: ConvertArgs) -> anyhow::Result<i32> {
    let files: Vec<PathBuf> = a.manifests.files;
    let texts = inputs::read_manifests(&files, a.recursive)?;
    let loaded = manifest::load(&texts);
    if loaded.documents == 0 {
        return Err(InvalidInput("no Kubernetes objects in the input".into()).into());
    }
    inputs::print_problems(&loaded);
    let (target, source_kinds) = match a.to {
        To::Calico => (Target::Calico, "NetworkPolicy"),
        To::NetworkPolicy => (Target::NetworkPolicy, "Calico NetworkPolicy"),
        To::ClusterNetworkPolicy => (Target::ClusterNetworkPolicy, "Calico GlobalNetworkPolicy"),
    };
    let conv = convert::convert(&loaded.cluster, target);
    // The loader names a Calico object by the kind it was written as (`NetworkPolicy`).
    let source = |object: &str| {
        loaded
            .sources
            .get(object)
            .or_else(|| {
                loaded
                    .sources
                    .get(&object.replacen(".projectcalico.org", "", 1))
            })
            .cloned()
    };
    let file = |object: &str| {
        source(object)
            .map(|f| format!(" ({f})"))
            .unwrap_or_default()
    };
    for r in &conv.refused {
        let field = if r.field.is_empty() {
            String::new()
        } else {
            format!("{}: ", r.field)
        };
        eprintln!(
            "refused: {}{}: {field}{}",
            r.object,
            file(&r.object),
            r.reason
        );
    }
    let total = conv.converted.len() + conv.refused.len();
    match a.output {
        ConvertFormat::Yaml => print!("{}", conv.yaml()),
        ConvertFormat::Json => {
            let v = json!({
                "converted": conv.converted.iter().map(|c| json!({
                    "from": c.from, "to": c.to, "file": source(&c.from), "object": c.document,
                })).collect::<Vec<_>>(),
                "refused": conv.refused.iter().map(|r| json!({
                    "object": r.object, "file": source(&r.object), "field": r.field, "reason": r.reason,
                })).collect::<Vec<_>>(),
                "errors": inputs::errors_json(&loaded),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    eprintln!(
        "converted {} of {total} object(s){}",
        conv.converted.len(),
        if conv.refused.is_empty() {
            String::new()
        } else {
            format!(
                "; {} refused (docs/semantics.md, \"Conversion\")",
                conv.refused.len()
            )
        }
    );
    if !loaded.errors.is_empty() {
        eprintln!(
            "{} object(s) did not load and were not converted",
            loaded.errors.len()
        );
        return Ok(EXIT_INVALID);
    }
    if total == 0 {
        eprintln!("no {source_kinds} in the input: nothing to convert");
        return Ok(EXIT_INVALID);
    }
    Ok(if conv.refused.is_empty() {
        0
    } else {
        EXIT_REFUSED
    })
}
