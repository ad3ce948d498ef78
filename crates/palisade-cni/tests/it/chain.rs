//! Chaining into the node's CNI configuration: `palisade_cni::chain` and the
//! `palisade-cni install|uninstall` commands, on configuration files like real nodes'.

use std::fs;
use std::path::Path;
use std::process::Command;

use palisade_cni::chain::{self, ChainError, Outcome};
use serde_json::{json, Value};

/// The VPC CNI's conflist as aws-node writes it (aws-cni, egress-cni, portmap), with a
/// string holding brackets, braces and an escaped quote, and a key after `plugins`, so
/// that a text edit which miscounted would show.
const AWS_CONFLIST: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "aws-cni",
  "plugins": [
    {
      "name": "aws-cni",
      "type": "aws-cni",
      "vethPrefix": "eni",
      "mtu": "9001",
      "podSGEnforcingMode": "strict",
      "pluginLogFile": "/var/log/aws-routed-eni/plugin]},\"[{.log",
      "pluginLogLevel": "DEBUG",
      "capabilities": {"io.kubernetes.cri.pod-annotations": true}
    },
    {
      "name": "egress-cni",
      "type": "egress-cni",
      "mtu": "9001",
      "enabled": "false",
      "randomizeSNAT": "prng",
      "nodeIP": "",
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "fd00::ac:00/118"}]],
        "routes": [{"dst": "::/0"}],
        "dataDir": "/run/cni/v4pd/egress-v6-ipam"
      },
      "pluginLogFile": "/var/log/aws-routed-eni/egress-v6-plugin.log",
      "pluginLogLevel": "DEBUG"
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true},
      "snat": true
    }
  ],
  "disableCheck": true
}
"#;

fn entry(fail_policy: &str) -> Value {
    json!({"type": "palisade-cni", "agentSocket": "/run/palisade/agent.sock",
           "failPolicy": fail_policy, "timeoutMs": 10000})
}

fn types(path: &Path) -> Vec<String> {
    let v: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_owned())
        .collect()
}

/// Names of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn install_appends_after_the_vpc_cni_chain_and_uninstall_restores_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("10-aws.conflist");
    fs::write(&file, AWS_CONFLIST).unwrap();

    let out = chain::install(dir.path(), &entry("closed")).unwrap();
    assert_eq!(out, Outcome::Changed(vec![file.clone()]));
    assert_eq!(
        types(&file),
        ["aws-cni", "egress-cni", "portmap", "palisade-cni"]
    );
    let installed = fs::read_to_string(&file).unwrap();
    let v: Value = serde_json::from_str(&installed).unwrap();
    assert_eq!(v["plugins"][3], entry("closed"));
    assert_eq!(v["disableCheck"], true, "keys after plugins are kept");
    assert_eq!(
        v["plugins"][0]["pluginLogFile"],
        "/var/log/aws-routed-eni/plugin]},\"[{.log"
    );

    // Idempotent: a second install writes nothing.
    assert_eq!(
        chain::install(dir.path(), &entry("closed")).unwrap(),
        Outcome::Unchanged
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), installed);

    assert_eq!(
        chain::uninstall(dir.path()).unwrap(),
        Outcome::Changed(vec![file.clone()])
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), AWS_CONFLIST);
    assert_eq!(chain::uninstall(dir.path()).unwrap(), Outcome::Unchanged);
    assert_eq!(
        listing(dir.path()),
        ["10-aws.conflist"],
        "no temporary file left"
    );
}

#[test]
fn install_with_other_options_replaces_only_its_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("10-aws.conflist");
    fs::write(&file, AWS_CONFLIST).unwrap();
    chain::install(dir.path(), &entry("closed")).unwrap();
    chain::install(dir.path(), &entry("open")).unwrap();
    let v: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        types(&file),
        ["aws-cni", "egress-cni", "portmap", "palisade-cni"]
    );
    assert_eq!(v["plugins"][3], entry("open"));
    chain::uninstall(dir.path()).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), AWS_CONFLIST);
}

#[test]
fn only_the_first_file_in_lexical_order_is_chained_as_the_runtime_uses_only_that_one() {
    let dir = tempfile::tempdir().unwrap();
    let other = "{\"cniVersion\":\"1.0.0\",\"name\":\"x\",\"plugins\":[{\"type\":\"ptp\"}]}";
    fs::write(dir.path().join("20-other.conflist"), other).unwrap();
    fs::write(dir.path().join("10-aws.conflist"), AWS_CONFLIST).unwrap();
    fs::write(dir.path().join("00-notes.txt"), "not a CNI file").unwrap();
    chain::install(dir.path(), &entry("closed")).unwrap();
    assert_eq!(types(&dir.path().join("10-aws.conflist")).len(), 4);
    assert_eq!(
        fs::read_to_string(dir.path().join("20-other.conflist")).unwrap(),
        other
    );
}

#[test]
fn an_entry_placed_first_by_hand_is_removed_with_its_separator() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("10-x.conflist");
    let original = "{\"cniVersion\":\"1.0.0\",\"name\":\"x\",\"plugins\":[ {\"type\":\"ptp\"} ]}";
    let with_ours = "{\"cniVersion\":\"1.0.0\",\"name\":\"x\",\"plugins\":[ {\"type\":\"palisade-cni\"}, {\"type\":\"ptp\"} ]}";
    fs::write(&file, with_ours).unwrap();
    chain::uninstall(dir.path()).unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), original);
}

#[test]
fn a_single_plugin_conf_becomes_a_conflist_and_comes_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("10-bridge.conf");
    let original = "{\n\t\"cniVersion\": \"1.0.0\",\n\t\"name\": \"k8s-pod-network\",\n\t\"type\": \"bridge\",\n\t\"bridge\": \"cni0\",\n\t\"ipam\": {\"type\": \"host-local\", \"subnet\": \"10.244.1.0/24\"}\n}\n";
    fs::write(&conf, original).unwrap();

    chain::install(dir.path(), &entry("closed")).unwrap();
    let list = dir.path().join("10-bridge.conflist");
    assert_eq!(
        listing(dir.path()),
        ["10-bridge.conf.palisade-bak", "10-bridge.conflist"]
    );
    assert_eq!(
        chain::config_files(dir.path()).unwrap().first(),
        Some(&list),
        "the runtime now reads the list"
    );
    let v: Value = serde_json::from_str(&fs::read_to_string(&list).unwrap()).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["name"], "k8s-pod-network");
    assert_eq!(types(&list), ["bridge", "palisade-cni"]);
    assert_eq!(v["plugins"][0]["ipam"]["subnet"], "10.244.1.0/24");
    assert_eq!(
        chain::install(dir.path(), &entry("closed")).unwrap(),
        Outcome::Unchanged
    );

    chain::uninstall(dir.path()).unwrap();
    assert_eq!(listing(dir.path()), ["10-bridge.conf"]);
    assert_eq!(fs::read_to_string(&conf).unwrap(), original);
}

#[test]
fn bad_configuration_is_an_error_naming_the_file_and_field_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let err = chain::install(dir.path(), &entry("closed")).unwrap_err();
    assert!(matches!(err, ChainError::NoConfig(_)), "{err}");

    let cases = [
        ("{\"cniVersion\":\"1.0.0\",\"name\":\"x\"}", "plugins"),
        (
            "{\"cniVersion\":\"1.0.0\",\"plugins\":[{\"name\":\"a\"}]}",
            "plugins[0].type",
        ),
        (
            "{\"cniVersion\":\"1.0.0\",\"plugins\":[]}",
            "plugins is empty",
        ),
        ("{\"cniVersion\": \"1.0.0\", \"plugins\": [", "EOF"),
    ];
    for (text, field) in cases {
        let file = dir.path().join("10-x.conflist");
        fs::write(&file, text).unwrap();
        let err = chain::install(dir.path(), &entry("closed"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10-x.conflist") && err.contains(field),
            "{text}: {err}"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), text, "unchanged");
    }
    fs::remove_file(dir.path().join("10-x.conflist")).unwrap();
    fs::write(
        dir.path().join("10-x.conf"),
        "{\"cniVersion\":\"1.0.0\",\"type\":\"palisade-cni\"}",
    )
    .unwrap();
    let err = chain::install(dir.path(), &entry("closed"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("10-x.conf: type"), "{err}");
    assert_eq!(listing(dir.path()), ["10-x.conf"]);
}

#[test]
fn the_binary_installs_itself_and_the_chain_then_uninstalls_both() {
    let conf = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    let pin_root = pins.path().join("palisade");
    fs::create_dir_all(pin_root.join("links")).unwrap();
    fs::write(pin_root.join("links/x"), "").unwrap();
    let file = conf.path().join("10-aws.conflist");
    fs::write(&file, AWS_CONFLIST).unwrap();
    let exe = env!("CARGO_BIN_EXE_palisade-cni");

    let run = |args: &[&str]| {
        let out = Command::new(exe).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    };
    let conf_dir = conf.path().to_str().unwrap();
    let bin_dir = bin.path().to_str().unwrap();
    run(&[
        "install",
        "--conf-dir",
        conf_dir,
        "--bin-dir",
        bin_dir,
        "--fail-policy",
        "open",
    ]);
    let copied = bin.path().join("palisade-cni");
    assert_eq!(fs::read(&copied).unwrap(), fs::read(exe).unwrap());
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let v: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(v["plugins"][3]["failPolicy"], "open");
    let again = run(&[
        "install",
        "--conf-dir",
        conf_dir,
        "--bin-dir",
        bin_dir,
        "--fail-policy",
        "open",
    ]);
    assert!(
        again.contains("binary: unchanged") && again.contains("chain: unchanged"),
        "{again}"
    );

    let pin_arg = pin_root.to_str().unwrap();
    run(&[
        "uninstall",
        "--conf-dir",
        conf_dir,
        "--bin-dir",
        bin_dir,
        "--pin-root",
        pin_arg,
    ]);
    assert_eq!(fs::read_to_string(&file).unwrap(), AWS_CONFLIST);
    assert!(!copied.exists() && !pin_root.exists());

    let bad = Command::new(exe)
        .args(["install", "--conf-dir", conf_dir, "--fail-policy", "maybe"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a usage error");
}

#[test]
fn a_symlinked_first_file_is_refused_not_skipped_for_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("aws.conflist");
    fs::write(&target, AWS_CONFLIST).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("10-aws.conflist")).unwrap();
    let other = "{\"cniVersion\":\"1.0.0\",\"name\":\"x\",\"plugins\":[{\"type\":\"ptp\"}]}";
    fs::write(dir.path().join("20-other.conflist"), other).unwrap();
    let err = chain::install(dir.path(), &entry("closed"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("10-aws.conflist") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), AWS_CONFLIST);
    assert_eq!(
        fs::read_to_string(dir.path().join("20-other.conflist")).unwrap(),
        other
    );
}
