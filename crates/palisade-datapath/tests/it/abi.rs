//! The Rust mirrors in `abi.rs` against the compiled object's BTF.

use std::collections::BTreeMap;
use std::process::Command;

use palisade_datapath::abi::LAYOUTS;

/// struct name -> (size, field -> bit offset), from `bpftool btf dump ... format raw`.
fn btf_structs() -> BTreeMap<String, (usize, BTreeMap<String, usize>)> {
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
    let text = String::from_utf8(out.stdout).unwrap();
    let mut structs = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('[') {
            current = None;
            // [12] STRUCT 'policy_key' size=16 vlen=6
            let mut it = line.split_whitespace();
            let _id = it.next();
            if it.next() == Some("STRUCT") {
                let name = it.next().unwrap().trim_matches('\'').to_string();
                let size: usize = it
                    .next()
                    .unwrap()
                    .trim_start_matches("size=")
                    .parse()
                    .unwrap();
                structs.insert(name.clone(), (size, BTreeMap::new()));
                current = Some(name);
            }
        } else if let Some(name) = &current {
            // 'prefixlen' type_id=3 bits_offset=0
            let mut it = line.split_whitespace();
            let field = it.next().unwrap().trim_matches('\'').to_string();
            let bits: usize = it
                .find(|s| s.starts_with("bits_offset="))
                .unwrap()
                .trim_start_matches("bits_offset=")
                .parse()
                .unwrap();
            structs.get_mut(name).unwrap().1.insert(field, bits);
        }
    }
    structs
}

#[test]
fn abi_layouts_match_btf() {
    let btf = btf_structs();
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
