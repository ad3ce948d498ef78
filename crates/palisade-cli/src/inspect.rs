//! `palisade endpoint list|get|diff`, `palisade flows` and `palisade metrics`: the
//! agent's view, through its unix socket.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use palisade_agent::api::{self, client, Call};
use palisade_agent::reconcile::{KernelAttachment, TableRow};

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
/// error naming the field.
pub fn call<C: Call>(socket: &Path, req: &C) -> anyhow::Result<C::Reply> {
    client::call(socket, req, CLI_TIMEOUT)
        .map_err(|e| anyhow::Error::new(e).context(format!("agent at {}", socket.display())))
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

/// Table rows from the agent's reply. A missing or malformed list is an error, never
/// an empty table: two empty tables would "match".
fn rows(v: &serde_json::Value, what: &str) -> anyhow::Result<Vec<TableRow>> {
    serde_json::from_value(v.clone())
        .map_err(|e| anyhow::anyhow!("the agent's reply has no readable {what} rows: {e}"))
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "other",
    }
}

fn render_rows(out: &mut String, v: &serde_json::Value, rows: &[TableRow]) {
    for r in rows {
        let peer = if r.peer == 0 {
            "any other peer".to_string()
        } else {
            match v["identities"].get(r.peer.to_string()) {
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
        let why = v["rules"]
            .get(r.rule.to_string())
            .and_then(|s| s.as_str())
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
    let _ = writeln!(out, "pod:        {}", v["pod"].as_str().unwrap_or(pod));
    let _ = writeln!(
        out,
        "interface:  {} (ifindex {})",
        v["interface"].as_str().unwrap_or(""),
        v["ifindex"]
    );
    let _ = writeln!(out, "addresses:  {}", v["ips"]);
    let _ = writeln!(
        out,
        "in force:   {}",
        v["generation_in_force"]
            .as_u64()
            .map(|g| format!("generation {g}"))
            .unwrap_or_else(|| "NO".into())
    );
    let _ = writeln!(out, "policies deciding for this pod:");
    if let Some(rules) = v["rules"].as_object() {
        for (id, why) in rules {
            let _ = writeln!(out, "  rule {id}: {}", why.as_str().unwrap_or(""));
        }
    }
    for dir in ["ingress", "egress"] {
        let _ = writeln!(
            out,
            "{dir} (table {}):",
            v["desired"][format!("{dir}_table")]
        );
        render_rows(&mut out, &v, &rows(&v["desired"][dir], "desired")?);
    }
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
fn diff(v: &serde_json::Value) -> anyhow::Result<Diff> {
    if let Some(err) = v["attachment"].get("error") {
        anyhow::bail!(
            "the agent could not query the programs on the interface: {}",
            err.as_str().unwrap_or_default()
        );
    }
    let attachment: KernelAttachment = serde_json::from_value(v["attachment"].clone())
        .map_err(|e| anyhow::anyhow!("the agent's reply has no attachment state: {e}"))?;
    let attachment = attachment.problems(v["interface"].as_str().unwrap_or_default());
    if let Some(err) = v["kernel"].get("error") {
        if !attachment.is_empty() {
            return Ok(Diff {
                attachment,
                rows: Vec::new(),
            });
        }
        anyhow::bail!(
            "the agent could not read the kernel state: {}",
            err.as_str().unwrap_or_default()
        );
    }
    let mut out = Vec::new();
    for dir in ["ingress", "egress"] {
        let want: BTreeSet<TableRow> = rows(&v["desired"][dir], "desired")?.into_iter().collect();
        let have: BTreeSet<TableRow> = rows(&v["kernel"][dir], "kernel")?.into_iter().collect();
        out.extend(
            have.difference(&want)
                .map(|r| (dir.to_string(), '+', r.clone())),
        );
        out.extend(
            want.difference(&have)
                .map(|r| (dir.to_string(), '-', r.clone())),
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
    client::stream(socket, &req, |line| {
        println!("{line}");
        true
    })
    .map_err(|e| anyhow::Error::new(e).context(format!("agent at {}", socket.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(kernel_rows: serde_json::Value, programs: &[u32]) -> serde_json::Value {
        let row = serde_json::json!({"peer":0,"proto":6,"port_lo":0,"port_hi":65535,"action":"deny","rule":1});
        serde_json::json!({
            "interface": "veth1",
            "desired": {"ingress": [row], "egress": []},
            "kernel": {"ingress": kernel_rows, "egress": []},
            "attachment": {"interface": "veth1", "endpoint_entry": true, "hooks": [
                {"hook": "from_pod", "programs": programs, "ours": 5},
                {"hook": "to_pod", "programs": [6], "ours": 6}
            ]},
        })
    }

    #[test]
    fn diff_matches_only_when_our_programs_run_and_the_rows_agree() {
        let row = serde_json::json!([{"peer":0,"proto":6,"port_lo":0,"port_hi":65535,"action":"deny","rule":1}]);
        assert!(diff(&reply(row.clone(), &[5])).unwrap().is_empty());
        let detached = diff(&reply(row.clone(), &[])).unwrap();
        assert_eq!(detached.attachment.len(), 1, "{:?}", detached.attachment);
        assert!(detached.rows.is_empty(), "the maps alone still agree");
        let missing = diff(&reply(serde_json::json!([]), &[5])).unwrap();
        assert_eq!(missing.rows.len(), 1);
        assert_eq!(missing.rows[0].1, '-');
    }

    #[test]
    fn a_reply_without_readable_rows_or_attachment_is_an_error_not_a_match() {
        let row = serde_json::json!([{"peer":0,"proto":6,"port_lo":0,"port_hi":65535,"action":"deny","rule":1}]);
        let mut v = reply(row, &[5]);
        v["kernel"]["ingress"] = serde_json::json!("garbage");
        assert!(diff(&v).is_err());
        v["kernel"]["ingress"] = serde_json::Value::Null;
        assert!(diff(&v).is_err());
        let mut v = reply(serde_json::json!([]), &[5]);
        v.as_object_mut().unwrap().remove("attachment");
        assert!(diff(&v).is_err());
    }
}
