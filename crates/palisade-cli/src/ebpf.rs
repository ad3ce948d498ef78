//! `palisade ebpf progs|maps`: what Palisade has loaded in the kernel, read from the
//! pins under the bpffs root (so it works without the agent running).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::ProgramInfo;
use serde::Serialize;

/// One pinned program.
#[derive(Debug, Serialize)]
pub struct Prog {
    /// Pin path.
    pub pin: String,
    /// Kernel id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Tag (SHA of the instructions), hex.
    pub tag: String,
    /// Translated size in bytes.
    pub bytes_translated: Option<u32>,
    /// JIT size in bytes.
    pub bytes_jitted: u32,
    /// Instructions the verifier processed.
    pub verified_insns: Option<u32>,
    /// Map ids used.
    pub map_ids: Vec<u32>,
    /// Runs and total run time (needs `sysctl kernel.bpf_stats_enabled=1`).
    pub run_count: u64,
    /// Nanoseconds.
    pub run_time_ns: u128,
}

/// One pinned map.
#[derive(Debug, Serialize)]
pub struct Map {
    /// Pin path.
    pub pin: String,
    /// Kernel id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Type.
    pub kind: String,
    /// Key bytes.
    pub key_size: u32,
    /// Value bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
}

fn pins(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One attachment: a pinned TCX link of a program to an interface.
#[derive(Debug, Serialize)]
pub struct Link {
    /// Pin path (`links/<ifindex>-<program>`).
    pub pin: String,
    /// Interface index (in the agent's network namespace).
    pub ifindex: u32,
    /// Program name.
    pub program: String,
}

/// Programs, maps and links pinned under `root` (layout: `progs/`, `maps/`, `links/`,
/// as `palisade-datapath` pins them).
pub fn inventory(root: &Path) -> anyhow::Result<(Vec<Prog>, Vec<Map>, Vec<Link>)> {
    if !root.exists() {
        anyhow::bail!(
            "nothing is pinned at {}\n\nhint: is the agent or a lab running? see --pin-root",
            root.display()
        );
    }
    let mut progs = Vec::new();
    let mut maps = Vec::new();
    let mut links = Vec::new();
    for pin in pins(&root.join("links")) {
        let file = pin
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if let Some((ifindex, program)) = file.split_once('-') {
            links.push(Link {
                pin: pin.display().to_string(),
                ifindex: ifindex.parse().unwrap_or(0),
                program: program.to_string(),
            });
        }
    }
    for pin in pins(&root.join("progs"))
        .into_iter()
        .chain(pins(&root.join("maps")))
    {
        let shown = pin.display().to_string();
        let is_prog = pin
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "progs");
        if is_prog {
            let Ok(p) = ProgramInfo::from_pin(&pin) else {
                continue;
            };
            progs.push(Prog {
                pin: shown,
                id: p.id(),
                name: p.name_as_str().unwrap_or("").to_string(),
                tag: format!("{:016x}", p.tag()),
                bytes_translated: p.size_translated(),
                bytes_jitted: p.size_jitted(),
                verified_insns: p.verified_instruction_count(),
                map_ids: p.map_ids().ok().flatten().unwrap_or_default(),
                run_count: p.run_count(),
                run_time_ns: p.run_time().as_nanos(),
            });
        } else if let Ok(m) = MapInfo::from_pin(&pin) {
            maps.push(Map {
                pin: shown,
                id: m.id(),
                name: m.name_as_str().unwrap_or("").to_string(),
                kind: m
                    .map_type()
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_else(|_| "unknown".into()),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
            });
        }
    }
    Ok((progs, maps, links))
}

/// Table of attachments.
pub fn render_links(links: &[Link]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n{:<10} {:<10}  PIN", "IFINDEX", "PROGRAM");
    for l in links {
        let _ = writeln!(out, "{:<10} {:<10}  {}", l.ifindex, l.program, l.pin);
    }
    out
}

/// Table of programs.
pub fn render_progs(progs: &[Prog]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<16} {:<18} {:>8} {:>8} {:>10} {:>12}  PIN",
        "ID", "NAME", "TAG", "XLATED", "JITED", "VERIFIED", "RUNS"
    );
    for p in progs {
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<18} {:>8} {:>8} {:>10} {:>12}  {}",
            p.id,
            p.name,
            p.tag,
            p.bytes_translated
                .map(|b| b.to_string())
                .unwrap_or_default(),
            p.bytes_jitted,
            p.verified_insns.map(|b| b.to_string()).unwrap_or_default(),
            p.run_count,
            p.pin
        );
    }
    out
}

/// Table of maps.
pub fn render_maps(maps: &[Map]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<16} {:<16} {:>5} {:>6} {:>10}  PIN",
        "ID", "NAME", "TYPE", "KEY", "VALUE", "MAX"
    );
    for m in maps {
        let _ = writeln!(
            out,
            "{:<6} {:<16} {:<16} {:>5} {:>6} {:>10}  {}",
            m.id, m.name, m.kind, m.key_size, m.value_size, m.max_entries, m.pin
        );
    }
    out
}
