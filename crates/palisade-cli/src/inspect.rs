//! `palisade endpoint list|get|diff`, `palisade flows` and `palisade metrics`: the
//! agent's view, through its unix socket.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use palisade_agent::api::{self, client, Call};
use palisade_agent::api::{EndpointView, KernelRead, TableRow};

/// The default agent socket on a node.
pub const NODE_SOCKET: &str = "/run/palisade/agent.sock";

/// Picks the socket: explicit, else the node agent's, else the default lab's.
pub fn resolve_socket(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(s) = explicit {
        return s;
    }
    let node = PathBuf::from(NODE_SOCKET);
    if node.exists() {
        return node;
    }
    let lab = crate::lab::default_state_dir().join("agent.sock");
    if lab.exists() {
        return lab;
    }
    node
}

/// How long a CLI request may take: generous, since `sync` waits for a pass over the
/// whole manifest set; a hung agent still ends the command.
pub const CLI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Sends one request and returns its typed reply; a reply that does not decode is an
/// error naming the field. A request that only reads, refused on `socket` for lack of
/// permission (the main socket is root only), is sent to the read-only socket beside it
/// (see [`with_read_only_fallback`]).
pub fn call<C: Call>(socket: &Path, req: &C) -> anyhow::Result<C::Reply> {
    with_read_only_fallback(socket, &req.request(), |s| {
        client::call(s, req, CLI_TIMEOUT)
    })
}

/// Runs `f` on `socket`; if connecting is denied and `req` does not change the agent's
/// state, runs it again on the read-only socket beside `socket` (the agent's default
/// `--read-only-socket`), saying so on stderr once per process. If both fail, the error
/// names both sockets and why.
pub fn with_read_only_fallback<T>(
    socket: &Path,
    req: &api::Request,
    mut f: impl FnMut(&Path) -> Result<T, client::ClientError>,
) -> anyhow::Result<T> {
    let at = |s: &Path| format!("agent at {}", s.display());
    match f(socket) {
        Err(denied @ client::ClientError::PermissionDenied { .. }) if !req.mutates() => {
            let ro = api::read_only_socket_beside(socket);
            if ro == socket {
                return Err(anyhow::Error::new(denied).context(at(socket)));
            }
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!(
                    "palisade: {denied}; using the read-only socket {}",
                    ro.display()
                )
            });
            f(&ro).map_err(|e| {
                anyhow::Error::new(e).context(format!("{} (tried because {denied})", at(&ro)))
            })
        }
        r => r.map_err(|e| anyhow::Error::new(e).context(at(socket))),
    }
}

/// `palisade endpoint list`.
pub fn endpoint_list(socket: &Path) -> anyhow::Result<String> {
    let status = call(socket, &api::Status)?.data;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<16} {:>8} {:<32} {:>10}",
        "POD", "INTERFACE", "IFINDEX", "ADDRESSES", "IN FORCE"
    );
    for (pod, e) in &status.endpoints {
        let ips: Vec<String> = e.ips.iter().map(|i| i.to_string()).collect();
        let _ = writeln!(
            out,
            "{:<40} {:<16} {:>8} {:<32} {:>10}",
            pod,
            e.interface,
            e.ifindex,
            ips.join(","),
            match (e.generation_in_force, e.enforced) {
                // Written, but the kernel does not run our programs there now.
                (Some(_), Some(false)) => "DETACHED".to_string(),
                (Some(g), _) => format!("gen {g}"),
                (None, _) => "NO".into(),
            }
        );
    }
    for e in &status.errors {
        let _ = writeln!(out, "rejected: {e}");
    }
    if let Some(e) = &status.last_error {
        let _ = writeln!(out, "last reconcile failed: {e}");
    }
    Ok(out)
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "other",
    }
}

fn render_rows(out: &mut String, v: &EndpointView, rows: &[TableRow]) {
    for r in rows {
        let peer = if r.peer == 0 {
            "any other peer".to_string()
        } else {
            match v.identities.get(&r.peer.to_string()) {
                Some(i) => format!("identity {} {}", r.peer, i),
                None => format!("identity {}", r.peer),
            }
        };
        let ports = if r.proto == 0 {
            String::new()
        } else if r.port_lo == 0 && r.port_hi == 65535 {
            "/all ports".into()
        } else if r.port_lo == r.port_hi {
            format!("/{}", r.port_lo)
        } else {
            format!("/{}-{}", r.port_lo, r.port_hi)
        };
        let why = v
            .rules
            .get(&r.rule.to_string())
            .map(String::as_str)
            .unwrap_or("");
        let _ = writeln!(
            out,
            "    {:<5} {}{}  from/to {}  [rule {}: {}]",
            r.action,
            proto_name(r.proto),
            ports,
            peer,
            r.rule,
            why
        );
    }
}

/// `palisade endpoint get NS/POD`.
pub fn endpoint_get(socket: &Path, pod: &str, json: bool) -> anyhow::Result<String> {
    let v = call(
        socket,
        &api::Endpoint {
            pod: pod.to_string(),
        },
    )?
    .data;
    if json {
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let mut out = String::new();
    let _ = writeln!(out, "pod:        {}", v.pod);
    let _ = writeln!(out, "interface:  {} (ifindex {})", v.interface, v.ifindex);
    let ips: Vec<String> = v.ips.iter().map(|i| i.to_string()).collect();
    let _ = writeln!(out, "addresses:  {}", ips.join(", "));
    let _ = writeln!(
        out,
        "in force:   {}",
        v.generation_in_force
            .map(|g| format!("generation {g}"))
            .unwrap_or_else(|| "NO".into())
    );
    let _ = writeln!(out, "policies deciding for this pod:");
    for (id, why) in &v.rules {
        let _ = writeln!(out, "  rule {id}: {why}");
    }
    let table = |t: Option<u32>| t.map_or_else(|| "none".to_string(), |t| t.to_string());
    let _ = writeln!(out, "ingress (table {}):", table(v.desired.ingress_table));
    render_rows(&mut out, &v, &v.desired.ingress);
    let _ = writeln!(out, "egress (table {}):", table(v.desired.egress_table));
    render_rows(&mut out, &v, &v.desired.egress);
    let kernel = match diff(&v) {
        Ok(d) if d.is_empty() => "matches the desired state".to_string(),
        Ok(d) => format!(
            "{} difference(s); see `palisade endpoint diff {pod}`",
            d.len()
        ),
        Err(e) => format!("{e:#}"),
    };
    if let Ok(d) = diff(&v) {
        for p in &d.attachment {
            let _ = writeln!(out, "NOT ENFORCED: {p}");
        }
    }
    let _ = writeln!(out, "kernel state: {kernel}");
    Ok(out)
}

/// What `endpoint diff` found.
#[derive(Debug)]
struct Diff {
    /// Ways the interface is not enforced by our programs (detached, a program ahead
    /// of ours, no endpoint entry, interface gone): the tables below enforce nothing
    /// then, so these come first.
    attachment: Vec<String>,
    /// `(direction, '+'|'-', row)`; `+` is in the kernel but not desired, `-` desired
    /// but missing from the kernel.
    rows: Vec<(String, char, TableRow)>,
}

impl Diff {
    fn is_empty(&self) -> bool {
        self.attachment.is_empty() && self.rows.is_empty()
    }

    fn len(&self) -> usize {
        self.attachment.len() + self.rows.len()
    }
}

/// Compares the desired state with the kernel's: first whether our programs run on the
/// interface at all, then the table rows. Fails when the agent could not read the
/// kernel state (and that is not explained by a missing endpoint entry).
fn diff(v: &EndpointView) -> anyhow::Result<Diff> {
    let attachment = match &v.attachment {
        KernelRead::Read(a) => a.problems(&v.interface),
        KernelRead::Failed { error } => {
            anyhow::bail!("the agent could not query the programs on the interface: {error}")
        }
    };
    let kernel = match &v.kernel {
        KernelRead::Read(k) => k,
        KernelRead::Failed { .. } if !attachment.is_empty() => {
            return Ok(Diff {
                attachment,
                rows: Vec::new(),
            })
        }
        KernelRead::Failed { error } => {
            anyhow::bail!("the agent could not read the kernel state: {error}")
        }
    };
    let mut out = Vec::new();
    for (dir, want, have) in [
        ("ingress", &v.desired.ingress, &kernel.ingress),
        ("egress", &v.desired.egress, &kernel.egress),
    ] {
        let want: BTreeSet<&TableRow> = want.iter().collect();
        let have: BTreeSet<&TableRow> = have.iter().collect();
        out.extend(
            have.difference(&want)
                .map(|r| (dir.to_string(), '+', (*r).clone())),
        );
        out.extend(
            want.difference(&have)
                .map(|r| (dir.to_string(), '-', (*r).clone())),
        );
    }
    Ok(Diff {
        attachment,
        rows: out,
    })
}

/// `palisade endpoint diff NS/POD`: returns the text and whether they match.
pub fn endpoint_diff(socket: &Path, pod: &str) -> anyhow::Result<(String, bool)> {
    let v = call(
        socket,
        &api::Endpoint {
            pod: pod.to_string(),
        },
    )?
    .data;
    let d = diff(&v)?;
    let mut out = String::new();
    if d.is_empty() {
        let _ = writeln!(out, "{pod}: kernel state matches the desired state");
        return Ok((out, true));
    }
    for p in &d.attachment {
        let _ = writeln!(out, "! {pod}: not enforced: {p}");
    }
    if d.rows.is_empty() {
        return Ok((out, false));
    }
    let _ = writeln!(
        out,
        "{pod}: '-' desired but not in the kernel, '+' in the kernel but not desired"
    );
    for (dir, sign, r) in &d.rows {
        let _ = writeln!(
            out,
            "{sign} {dir} peer={} proto={} ports={}-{} {} rule={}",
            r.peer, r.proto, r.port_lo, r.port_hi, r.action, r.rule
        );
    }
    Ok((out, false))
}

/// `palisade flows`: prints records as JSON lines.
pub fn flows(
    socket: &Path,
    follow: bool,
    pod: Option<String>,
    verdict: Option<String>,
) -> anyhow::Result<()> {
    let verdict = verdict
        .map(|v| {
            serde_json::from_value::<api::Verdict>(serde_json::Value::String(v.clone()))
                .map_err(|_| anyhow::anyhow!("--verdict {v:?}: must be allow or deny"))
        })
        .transpose()?;
    let req = api::Request::Flows {
        follow,
        pod,
        verdict,
    };
    // Each line must be a record (or the agent's lag note): anything else is an error,
    // not a silently printed or skipped line.
    let mut bad = None;
    with_read_only_fallback(socket, &req, |s| {
        client::stream(s, &req, |line| {
            match serde_json::from_str::<api::FlowItem>(line) {
                Ok(_) => {
                    println!("{line}");
                    true
                }
                Err(e) => {
                    bad = Some(format!("{e}: {line:.200}"));
                    false
                }
            }
        })
    })?;
    match bad {
        Some(why) => anyhow::bail!("the agent sent a flows line that is not a record: {why}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kernel_rows: serde_json::Value, programs: &[u32]) -> serde_json::Value {
        let row = serde_json::json!({"peer":0,"proto":6,"port_lo":0,"port_hi":65535,"action":"deny","rule":1});
        serde_json::json!({"ok": true, "data": {
            "pod": "x/a", "interface": "veth1", "ifindex": 7, "ips": ["10.0.0.1"],
            "generation_in_force": 3,
            "desired": {"ingress_table": 1, "egress_table": 2, "ingress": [row], "egress": []},
            "kernel": {"ingress_table": 1, "egress_table": 2, "ips": ["10.0.0.1"],
                       "ingress": kernel_rows, "egress": []},
            "attachment": {"interface": "veth1", "endpoint_entry": true, "hooks": [
                {"hook": "from_pod", "programs": programs, "ours": 5},
                {"hook": "to_pod", "programs": [6], "ours": 6}
            ]},
            "rules": {"1": "default deny"}, "identities": {},
        }})
    }

    fn view(v: &serde_json::Value) -> Result<EndpointView, client::ClientError> {
        client::decode::<api::Endpoint>(&v.to_string()).map(|r| r.data)
    }

    #[test]
    fn diff_matches_only_when_our_programs_run_and_the_rows_agree() {
        let row = serde_json::json!([{"peer":0,"proto":6,"port_lo":0,"port_hi":65535,"action":"deny","rule":1}]);
        assert!(diff(&view(&reply(row.clone(), &[5])).unwrap())
            .unwrap()
            .is_empty());
        let detached = diff(&view(&reply(row.clone(), &[])).unwrap()).unwrap();
        assert_eq!(detached.attachment.len(), 1, "{:?}", detached.attachment);
        assert!(detached.rows.is_empty(), "the maps alone still agree");
        let missing = diff(&view(&reply(serde_json::json!([]), &[5])).unwrap()).unwrap();
        assert_eq!(missing.rows.len(), 1);
        assert_eq!(missing.rows[0].1, '-');
    }

    #[test]
    fn a_reply_without_readable_rows_or_attachment_is_an_error_not_a_match() {
        let row = serde_json::json!([{"peer":0,"proto":6,"port_lo":0,"port_hi":65535,"action":"deny","rule":1}]);
        let mut v = reply(row.clone(), &[5]);
        v["data"]["kernel"]["ingress"] = serde_json::json!("garbage");
        assert!(view(&v).is_err());
        v["data"]["kernel"]["ingress"] = serde_json::Value::Null;
        assert!(view(&v).is_err());
        let mut v = reply(row.clone(), &[5]);
        v["data"]["desired"]["ingress"][0]["action"] = serde_json::json!("allowed");
        assert!(
            view(&v).is_err(),
            "an action that is neither allow nor deny"
        );
        let mut v = reply(serde_json::json!([]), &[5]);
        v["data"].as_object_mut().unwrap().remove("attachment");
        match view(&v) {
            Err(client::ClientError::Malformed { message, .. }) => {
                assert!(message.contains("attachment"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_kernel_read_error_is_said_not_taken_for_empty_tables() {
        let row = serde_json::json!([{"peer":0,"proto":6,"port_lo":0,"port_hi":65535,"action":"deny","rule":1}]);
        let mut v = reply(row, &[5]);
        v["data"]["kernel"] = serde_json::json!({"error": "EPERM"});
        let e = diff(&view(&v).unwrap()).unwrap_err().to_string();
        assert!(e.contains("EPERM"), "{e}");
    }
}
