//! The Rust mirrors in `abi.rs` against the compiled object's BTF: struct
//! layouts, and every constant against the enum member of the same name.

use std::collections::BTreeMap;
use std::process::Command;

use palisade_datapath::abi::{self, CONSTANTS, LAYOUTS};

/// `bpftool btf dump file <production object> format raw`, run once per process
/// (the tests of this module run in parallel and would share the file).
fn btf_raw() -> &'static str {
    static RAW: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RAW.get_or_init(dump_btf)
}

fn dump_btf() -> String {
    let dir = std::env::temp_dir().join(format!("palisade-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("palisade.bpf.o");
    std::fs::write(&obj, palisade_datapath::object_bytes()).unwrap();
    let out = Command::new("bpftool")
        .args(["btf", "dump", "file"])
        .arg(&obj)
        .args(["format", "raw"])
        .output()
        .expect("bpftool (scripts/setup.sh installs it)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One BTF type of the raw dump: `[12] STRUCT 'policy_key' size=16 vlen=6` and
/// its member lines.
struct BtfType {
    kind: String,
    name: String,
    /// `key=value` words of the header line (`size`, `type_id`, `nr_elems`...).
    attrs: BTreeMap<String, String>,
    members: Vec<String>,
}

/// Every type of the dump by id.
fn btf_types() -> BTreeMap<u32, BtfType> {
    let mut types = BTreeMap::new();
    let mut current = None;
    for line in btf_raw().lines() {
        if let Some(rest) = line.strip_prefix('[') {
            let (id, rest) = rest.split_once("] ").expect("[id] KIND");
            let id: u32 = id.parse().unwrap();
            let mut words = rest.split_whitespace();
            let kind = words.next().unwrap().to_string();
            let name = words.next().unwrap_or("").trim_matches('\'').to_string();
            let attrs = words
                .filter_map(|w| w.trim_end_matches(',').split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            types.insert(
                id,
                BtfType {
                    kind,
                    name,
                    attrs,
                    members: Vec::new(),
                },
            );
            current = Some(id);
        } else if let Some(id) = current {
            types
                .get_mut(&id)
                .unwrap()
                .members
                .push(line.trim().to_string());
        }
    }
    types
}

/// struct name -> (size, field -> bit offset).
fn btf_structs(
    types: &BTreeMap<u32, BtfType>,
) -> BTreeMap<String, (usize, BTreeMap<String, usize>)> {
    let mut structs = BTreeMap::new();
    for t in types
        .values()
        .filter(|t| t.kind == "STRUCT" && t.name != "(anon)")
    {
        let size: usize = t.attrs["size"].parse().unwrap();
        let mut fields = BTreeMap::new();
        for m in &t.members {
            // 'prefixlen' type_id=3 bits_offset=0
            let mut it = m.split_whitespace();
            let field = it.next().unwrap().trim_matches('\'').to_string();
            let bits: usize = it
                .find_map(|s| s.strip_prefix("bits_offset="))
                .unwrap()
                .parse()
                .unwrap();
            fields.insert(field, bits);
        }
        structs.insert(t.name.clone(), (size, fields));
    }
    structs
}

/// Enum member name -> value, as an unsigned number of the enum's width (so the
/// kernel's `TC_ACT_UNSPEC = -1` in a 4-byte enum reads `u32::MAX`, as in Rust);
/// and the names of the enum types.
fn btf_enums(types: &BTreeMap<u32, BtfType>) -> (BTreeMap<String, u64>, Vec<String>) {
    let mut members = BTreeMap::new();
    let mut names = Vec::new();
    for t in types
        .values()
        .filter(|t| t.kind == "ENUM" || t.kind == "ENUM64")
    {
        let size: u32 = t.attrs["size"].parse().unwrap();
        let mask = if size >= 8 {
            u64::MAX
        } else {
            (1u64 << (size * 8)) - 1
        };
        for m in &t.members {
            // 'PALISADE_DIR_EGRESS' val=0
            let (name, val) = m.split_once(" val=").expect("enum member");
            let val: i128 = val.parse().unwrap();
            let prev = members.insert(name.trim_matches('\'').to_string(), val as u64 & mask);
            assert!(prev.is_none(), "enum member {name} defined twice");
        }
        names.push(t.name.clone());
    }
    (members, names)
}

/// `max_entries` of each map in `.maps`, as BTF encodes it (`int (*max_entries)[N]`).
fn btf_max_entries(types: &BTreeMap<u32, BtfType>) -> BTreeMap<String, u64> {
    let type_of = |t: &BtfType| -> u32 { t.attrs["type_id"].parse().unwrap() };
    let mut out = BTreeMap::new();
    for t in types.values().filter(|t| t.kind == "VAR") {
        let def = &types[&type_of(t)];
        let Some(field) = def.members.iter().find(|m| m.starts_with("'max_entries'")) else {
            continue;
        };
        let ptr: u32 = field
            .split_whitespace()
            .find_map(|w| w.strip_prefix("type_id="))
            .unwrap()
            .parse()
            .unwrap();
        let array = &types[&type_of(&types[&ptr])];
        assert_eq!(array.kind, "ARRAY", "{}: max_entries encoding", t.name);
        out.insert(t.name.clone(), array.attrs["nr_elems"].parse().unwrap());
    }
    out
}

/// Names of the integer `pub const`s declared in `source` (a Rust file).
fn pub_int_consts(source: &str) -> Vec<String> {
    const INTS: &[&str] = &[
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64",
    ];
    source
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub const "))
        .filter_map(|l| l.split_once(':'))
        .filter(|(_, ty)| {
            let ty = ty.trim_start();
            INTS.iter()
                .any(|i| ty.starts_with(&format!("{i} ")) || ty.starts_with(&format!("{i}=")))
        })
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

#[test]
fn abi_layouts_match_btf() {
    let btf = btf_structs(&btf_types());
    let mut checked = 0;
    for (name, size, fields) in LAYOUTS {
        let (bsize, bfields) = btf
            .get(*name)
            .unwrap_or_else(|| panic!("struct {name} missing from the object's BTF"));
        assert_eq!(size, bsize, "size of struct {name}");
        assert_eq!(fields.len(), bfields.len(), "field count of struct {name}");
        for (field, off) in fields.iter() {
            let bits = bfields
                .get(*field)
                .unwrap_or_else(|| panic!("{name}.{field} missing from BTF"));
            assert_eq!(off * 8, *bits, "offset of {name}.{field}");
            checked += 1;
        }
    }
    println!("checked {} structs, {checked} fields", LAYOUTS.len());
}

#[test]
fn abi_constants_match_btf() {
    let types = btf_types();
    let (members, _) = btf_enums(&types);
    let mut wrong = Vec::new();
    for (name, value) in CONSTANTS {
        let c = format!("PALISADE_{name}");
        match members.get(&c) {
            None => wrong.push(format!("{name}: no enum member {c} in the object's BTF")),
            Some(v) if v != value => wrong.push(format!("{name}: Rust {value}, object {c} = {v}")),
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "abi.rs constants differ from the object:\n{}",
        wrong.join("\n")
    );
    println!("checked {} constants", CONSTANTS.len());
}

#[test]
fn every_abi_rs_constant_is_in_the_checked_table() {
    let declared = pub_int_consts(include_str!("../../src/abi.rs"));
    // The parser itself must see the constants (a broken parser would pass vacuously).
    assert!(declared.len() >= CONSTANTS.len(), "parsed {declared:?}");
    let missing: Vec<_> = declared
        .iter()
        .filter(|d| !CONSTANTS.iter().any(|(n, _)| n == d))
        .collect();
    assert!(
        missing.is_empty(),
        "pub consts of src/abi.rs not in abi::CONSTANTS (so not checked against BTF): {missing:?}"
    );
}

#[test]
fn the_constant_scanner_sees_integer_consts_only() {
    let src = "pub const A: u32 = 1;\n    pub const B: usize = 2;\npub const T: &[Layout] = &[];\nconst P: u8 = 3;\npub const C: u64= 4;\n";
    assert_eq!(pub_int_consts(src), ["A", "B", "C"]);
}

#[test]
fn every_header_enum_reaches_btf() {
    let (_, in_btf) = btf_enums(&btf_types());
    let header = include_str!("../../bpf/include/palisade_abi.h");
    let declared: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("enum "))
        .filter_map(|l| l.strip_suffix(" {"))
        .collect();
    assert!(declared.len() > 10, "parsed enums {declared:?}");
    let missing: Vec<_> = declared
        .iter()
        .filter(|d| !in_btf.iter().any(|b| b == *d))
        .collect();
    assert!(
        missing.is_empty(),
        "enums of palisade_abi.h missing from the object's BTF (add them to struct palisade_abi_enums): {missing:?}"
    );
}

#[test]
fn fixed_map_sizes_match_the_abi() {
    let sizes = btf_max_entries(&btf_types());
    // Maps the loader does not resize: their size is part of the ABI.
    for (map, want) in [
        ("palisade_stats", abi::STAT_NR as u64),
        ("palisade_config", 1),
        ("palisade_ratelimit", 1),
    ] {
        assert_eq!(sizes.get(map), Some(&want), "max_entries of {map}");
    }
    // The loader resizes the counters to slots x COUNTERS_PER_SLOT; the object's
    // default must be of that shape too.
    let counters = sizes["palisade_counters"];
    assert_eq!(
        counters % abi::COUNTERS_PER_SLOT as u64,
        0,
        "palisade_counters rows"
    );
}

#[test]
fn verifier_cost_stays_within_budget() {
    let mut t = crate::common::TestDp::new();
    for (name, insns, xlated, jited) in t.program_stats().unwrap() {
        println!(
            "verifier: {name}: {insns} instructions verified, {xlated} B xlated, {jited} B jited"
        );
        // The kernel's limit is 1M; a tenth of it leaves room to grow.
        assert!(insns < 100_000, "{name} verified {insns} instructions");
    }
}

#[test]
fn reason_names_follow_the_object_enum() {
    let (members, _) = btf_enums(&btf_types());
    let mut checked = 0;
    for (c, v) in &members {
        let Some(reason) = c.strip_prefix("PALISADE_REASON_") else {
            continue;
        };
        // Markers, not reasons: FIRST_DROP aliases POLICY_DENY, NR counts them.
        if reason == "FIRST_DROP" || reason == "NR" {
            continue;
        }
        let want = reason.to_lowercase().replace('_', "-");
        assert_eq!(palisade_datapath::reason_name(*v as u32), want, "{c} = {v}");
        checked += 1;
    }
    assert_eq!(checked, abi::REASON_NR, "one name per reason");
}
