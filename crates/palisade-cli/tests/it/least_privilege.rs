//! Issue 14, "Least privilege": the agent's local API is two sockets, the root-only one
//! (every request) and a read-only one opened to a group. Checked with the real agent
//! of a lab, and the real `palisade` and `palisade-cni` binaries run as other users.
//! <https://github.com/palisade/palisade/issues/14> (tracker issue 14)

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use crate::lab::{pod_yaml, write};
use crate::support::{cni_dir, palisade, privileged, LabGuard};

/// nobody / nogroup: the read-only socket's group in this test.
const READER: u32 = 65534;
/// A user in neither the socket's group nor root's.
const STRANGER: u32 = 65533;

/// `palisade ARGS` as `uid`:`gid` (no supplementary groups: std drops them when it
/// switches user).
fn palisade_as(uid: u32, args: &[&str], socket: &Path) -> Output {
    palisade()
        .args(args)
        .arg("--socket")
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .output()
        .expect("palisade")
}

/// The real `palisade-cni` as `uid`:`gid`, as the runtime would run it for a lab pod's
/// sandbox (its own container id and chain result), against `socket`.
fn cni_add_as(uid: u32, socket: &Path, pod: &str, container: &str, prev: &Value) -> Output {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "lab", "type": "palisade-cni",
        "agentSocket": socket, "timeoutMs": 5000, "prevResult": prev,
    });
    let mut child = Command::new(cni_dir().join("palisade-cni"))
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
        )
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palisade-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// (mode, owner, group) of a file.
fn owner_of(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn issue_14_another_user_reads_through_the_read_only_socket_and_cannot_register() {
    if !privileged() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("palisade-lp-{}", std::process::id()));
    let cluster = write(
        &dir,
        "cluster.yaml",
        &[
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n".to_string(),
            pod_yaml("web", "web", "10.244.36.10", &[(80, "TCP")]),
        ]
        .join("---\n"),
    );
    let lab = LabGuard::up_with_agent_args(&[cluster], &format!("--read-only-group {READER}"));
    let main = lab.socket();
    let ro = main.with_file_name("palisade-ro.sock");

    // The sockets as the agent bound them.
    assert_eq!(owner_of(&main), (0o600, 0, 0), "{}", main.display());
    assert_eq!(owner_of(&ro), (0o660, 0, READER), "{}", ro.display());
    // Their directory must let others reach them (as /run/palisade, which the kubelet
    // creates 0755): else nobody but root could use either, whatever the sockets say,
    // and the refusals below would prove nothing.
    let socket_dir = main.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in socket_dir.ancestors().skip(1) {
        let mode = std::fs::metadata(d).unwrap().mode();
        assert!(
            mode & 0o001 != 0,
            "{} is not searchable by others",
            d.display()
        );
    }

    // uid 65534, in the group: refused on the main socket, the error naming it and why,
    // then answered by the read-only socket beside it (the CLI's fallback) ...
    let out = palisade_as(READER, &["endpoint", "list"], &main);
    let err = text(&out.stderr);
    assert!(out.status.success(), "endpoint list as {READER}: {err}");
    assert!(
        text(&out.stdout).contains("default/web"),
        "{}",
        text(&out.stdout)
    );
    let denied = format!(
        "agent socket {}: permission denied (mode 0600, owner uid 0, group gid 0",
        main.display()
    );
    assert!(err.contains(&denied), "the refusal is explained: {err}");
    assert!(
        err.contains(&format!("using the read-only socket {}", ro.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "said once: {err}");
    // ... and explicitly, without a word on stderr.
    let out = palisade_as(READER, &["endpoint", "list"], &ro);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("default/web"));
    assert_eq!(text(&out.stderr), "");
    let out = palisade_as(READER, &["metrics"], &main);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("palisade_api_connections"));
    let out = palisade_as(READER, &["endpoint", "get", "default/web"], &main);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The real CNI plugin as uid 65534 on the read-only socket: the agent refuses the
    // registration (naming the verb and the socket to use) and the plugin fails closed
    // with its error. The sandbox is the pod's own, so on the main socket the very
    // same ADD is accepted (below): the refusal is the socket's, nothing else.
    let st = lab.state();
    let rec = st["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "default/web")
        .expect("web in the lab")
        .clone();
    let container = rec["attachment"]["container_id"].as_str().unwrap();
    let prev = &rec["cni_result"];
    let out = cni_add_as(READER, &ro, "web", container, prev);
    assert!(!out.status.success(), "ADD on the read-only socket passed");
    let e: Value = serde_json::from_slice(&out.stdout).expect("a CNI error on stdout");
    assert_eq!(e["code"], 100, "the agent's refusal: {e}");
    let details = e["details"].as_str().unwrap_or_default();
    assert!(
        details.starts_with(&format!(
            "register changes the agent's state and is not served on the read-only socket {}",
            ro.display()
        )) && details.contains(&main.display().to_string()),
        "{e}"
    );
    // As uid 65534 on the main socket: not even a connection.
    let out = cni_add_as(READER, &main, "web", container, prev);
    assert!(!out.status.success());
    let e: Value = serde_json::from_slice(&out.stdout).expect("a CNI error on stdout");
    assert!(
        e["details"]
            .as_str()
            .unwrap_or_default()
            .contains("permission denied"),
        "{e}"
    );

    // Root's ADD on the main socket works (the pod's policy is in force).
    let out = cni_add_as(0, &main, "web", container, prev);
    assert!(
        out.status.success(),
        "root's ADD: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        *prev,
        "ADD returns prevResult"
    );

    // uid 65533, in neither group: connects to neither socket.
    for socket in [&main, &ro] {
        let out = palisade_as(STRANGER, &["endpoint", "list"], socket);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{STRANGER} read {}",
            socket.display()
        );
        assert!(
            err.contains(&format!(
                "agent socket {}: permission denied (mode 0660, owner uid 0, group gid {READER}",
                ro.display()
            )),
            "{err}"
        );
        if socket == &main {
            assert!(err.contains(&denied), "both refusals are named: {err}");
        }
    }
    let out = cni_add_as(STRANGER, &ro, "web", container, prev);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}
