//! The OCI image: `scripts/image.sh` (here from the debug binaries, to keep CI short;
//! the release image is the same script without `--bin-dir`) writes an archive whose
//! index, manifest, config and layer all check out by digest and size, that skopeo
//! reads and copies (verifying every blob itself), and whose binaries run from the
//! unpacked root filesystem with nothing but what the image holds.

use std::fs;
use std::path::Path;
use std::process::Command;

use palisade_deploy::{repo_root, run};
use palisade_testkit::Need;
use serde_json::Value;

use crate::debug_bin_dir;

/// coreutils' chroot (in sbin, which a test's PATH may lack).
const CHROOT: &str = "/usr/sbin/chroot";

fn sha256_file(path: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(path)).expect("sha256sum");
    out.split_whitespace().next().unwrap().to_owned()
}

/// Checks a descriptor against its blob: digest (sha256 of the bytes) and size.
/// Returns the blob's path.
fn blob(layout: &Path, desc: &Value) -> std::path::PathBuf {
    let digest = desc["digest"].as_str().expect("descriptor digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    assert_eq!(sha256_file(&path), hex, "blob {digest} has other bytes");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        desc["size"].as_u64().expect("descriptor size"),
        "blob {digest}: size"
    );
    path
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn the_image_archive_is_a_valid_oci_image_whose_binaries_run_from_its_own_root() {
    if !palisade_testkit::require(&[
        Need::Root,
        Need::Program {
            name: "umoci",
            package: "umoci",
        },
        Need::Program {
            name: "skopeo",
            package: "skopeo",
        },
    ]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("palisade.oci.tar");
    let out = run(Command::new("bash")
        .arg(repo_root().join("scripts/image.sh"))
        .arg("--bin-dir")
        .arg(debug_bin_dir())
        .arg("--tag")
        .arg("test")
        .arg("--out")
        .arg(&archive))
    .expect("scripts/image.sh");
    assert_eq!(out.trim(), archive.to_str().unwrap());

    // The archive is an OCI image layout: oci-layout, index.json, blobs.
    let layout = dir.path().join("layout");
    fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout))
    .unwrap();
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "one image");
    let mdesc = &manifests[0];
    assert_eq!(
        mdesc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        mdesc["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    let manifest = json(&blob(&layout, mdesc));
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let config = json(&blob(&layout, &manifest["config"]));
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/palisade"])
    );
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(layers.len(), diff_ids.len());
    assert!(!layers.is_empty());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let path = blob(&layout, layer);
        // The config names each layer by the digest of its uncompressed tar.
        let out = run(Command::new("sh")
            .arg("-c")
            .arg("gzip -dc \"$1\" | sha256sum")
            .arg("sh")
            .arg(&path))
        .unwrap();
        assert_eq!(
            format!("sha256:{}", out.split_whitespace().next().unwrap()),
            diff_id.as_str().unwrap(),
            "layer {}: diff_id",
            layer["digest"]
        );
    }

    // An independent reader: skopeo sees the same manifest digest and copies the image
    // (checking every blob's digest as it goes).
    let src = format!("oci-archive:{}", archive.display());
    let inspect: Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &src])).unwrap())
            .unwrap();
    assert_eq!(inspect["Digest"], mdesc["digest"]);
    let copy = dir.path().join("copy");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &src,
        &format!("oci:{}:test", copy.display()),
    ]))
    .unwrap();

    // Unpacked, the root filesystem holds the binaries and their libraries, no shell,
    // and the binaries run in it alone.
    let bundle = dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", copy.display()))
        .arg(&bundle))
    .unwrap();
    let rootfs = bundle.join("rootfs");
    for f in [
        "usr/local/bin/palisade",
        "usr/local/bin/palisade-cni",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(rootfs.join(f).is_file(), "{f} is in the image");
    }
    assert!(!rootfs.join("bin/sh").exists(), "no shell in the image");
    let listed = fs::read_to_string(rootfs.join("etc/palisade-image-files")).unwrap();
    assert!(
        listed.lines().any(|l| l.ends_with("/libc.so.6")),
        "{listed}"
    );

    let version = run(Command::new(CHROOT)
        .arg(&rootfs)
        .args(["/usr/local/bin/palisade", "--version"]))
    .unwrap();
    assert!(version.starts_with("palisade "), "{version}");
    let cni = run(Command::new(CHROOT)
        .arg(&rootfs)
        .arg("/usr/local/bin/palisade-cni")
        .env_clear()
        .env("CNI_COMMAND", "VERSION"))
    .unwrap();
    let cni: Value = serde_json::from_str(&cni).unwrap();
    assert!(
        cni["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "1.0.0"),
        "{cni}"
    );
    // The installer works inside the image too: it chains into a directory we give it.
    let net_d = rootfs.join("tmp/net.d");
    fs::create_dir(&net_d).unwrap();
    fs::write(
        net_d.join("10-ptp.conflist"),
        r#"{"cniVersion":"1.0.0","name":"k","plugins":[{"type":"ptp"}]}"#,
    )
    .unwrap();
    run(Command::new(CHROOT).arg(&rootfs).args([
        "/usr/local/bin/palisade-cni",
        "install",
        "--conf-dir",
        "/tmp/net.d",
    ]))
    .unwrap();
    let chained = json(&net_d.join("10-ptp.conflist"));
    assert_eq!(chained["plugins"][1]["type"], "palisade-cni");
}
