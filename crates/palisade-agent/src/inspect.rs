//! `palisade endpoint get/diff`: one endpoint's desired and kernel state side by side,
//! in the same terms, with every rule id explained.

use std::collections::BTreeSet;

use palisade_policy::compiled::{Compiled, RuleTable, TableAction, TableId};

use crate::reconcile::{Reconciler, TableRow};

/// Rows of a compiled table, in the same shape the enforcer decodes from the kernel.
pub fn rows(compiled: &Compiled, table: TableId) -> Vec<TableRow> {
    compiled
        .tables
        .get(&table)
        .map(table_rows)
        .unwrap_or_default()
}

/// Rows of one table, sorted, in the terms `palisade endpoint diff` compares.
pub fn table_rows(t: &RuleTable) -> Vec<TableRow> {
    let mut rows: Vec<TableRow> = t
        .entries
        .iter()
        .map(|e| TableRow {
            peer: e.peer,
            proto: e.proto,
            port_lo: e.port_lo,
            port_hi: e.port_hi,
            action: match e.verdict.action {
                TableAction::Allow => "allow".into(),
                TableAction::Deny => "deny".into(),
            },
            rule: e.verdict.rule,
        })
        .collect();
    rows.sort();
    rows
}

/// The JSON behind `palisade endpoint get NS/POD`.
pub fn endpoint_view(reconciler: &mut Reconciler, pod: &str) -> anyhow::Result<serde_json::Value> {
    let iface =
        reconciler.registry().get(pod).cloned().ok_or_else(|| {
            anyhow::anyhow!("not an endpoint of this agent (no CNI registration)")
        })?;
    let compiled = reconciler.compiled();
    let entry = compiled.endpoints.get(pod).map(|e| (e.ingress, e.egress));
    let (desired_in, desired_out) = match entry {
        Some((i, e)) => (rows(compiled, i), rows(compiled, e)),
        None => (Vec::new(), Vec::new()),
    };
    let rule_ids: BTreeSet<u32> = desired_in
        .iter()
        .chain(&desired_out)
        .map(|r| r.rule)
        .collect();
    let rules: serde_json::Map<String, serde_json::Value> = rule_ids
        .iter()
        .filter_map(|id| {
            compiled
                .rules
                .get(id)
                .map(|o| (id.to_string(), palisade_policy::verdict::describe(o).into()))
        })
        .collect();
    let peers: BTreeSet<u32> = desired_in
        .iter()
        .chain(&desired_out)
        .map(|r| r.peer)
        .collect();
    let identities: serde_json::Map<String, serde_json::Value> = peers
        .iter()
        .filter_map(|id| {
            compiled
                .identities
                .get(id)
                .map(|i| (id.to_string(), serde_json::to_value(i).unwrap_or_default()))
        })
        .collect();
    let kernel = reconciler.enforcer_mut().endpoint_state(iface.ifindex);
    let attachment = reconciler.enforcer_mut().attachment(iface.ifindex);
    Ok(serde_json::json!({
        "pod": pod,
        "interface": iface.host_ifname,
        "ifindex": iface.ifindex,
        "ips": iface.ips,
        "generation_in_force": reconciler.in_force(pod),
        "desired": {
            "ingress_table": entry.map(|e| e.0),
            "egress_table": entry.map(|e| e.1),
            "ingress": desired_in,
            "egress": desired_out,
        },
        "kernel": match kernel {
            Ok(k) => serde_json::to_value(k)?,
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
        },
        "attachment": match attachment {
            Ok(a) => serde_json::to_value(a)?,
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
        },
        "rules": rules,
        "identities": identities,
    }))
}
