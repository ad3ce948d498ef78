//! `palisade endpoint get/diff`: one endpoint's desired and kernel state side by side,
//! in the same terms, with every rule id explained.

use std::collections::BTreeSet;

use palisade_policy::compiled::{Compiled, RuleTable, TableAction, TableId};

use crate::api::{DesiredTables, EndpointView, KernelRead};
use crate::reconcile::{Action, Reconciler, TableRow};

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
                TableAction::Allow => Action::Allow,
                TableAction::Deny => Action::Deny,
            },
            rule: e.verdict.rule,
        })
        .collect();
    rows.sort();
    rows
}

/// The view behind `palisade endpoint get NS/POD`.
pub fn endpoint_view(reconciler: &mut Reconciler, pod: &str) -> anyhow::Result<EndpointView> {
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
    let rules = rule_ids
        .iter()
        .filter_map(|id| {
            compiled
                .rules
                .get(id)
                .map(|o| (id.to_string(), palisade_policy::verdict::describe(o)))
        })
        .collect();
    let peers: BTreeSet<u32> = desired_in
        .iter()
        .chain(&desired_out)
        .map(|r| r.peer)
        .collect();
    let identities = peers
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
    Ok(EndpointView {
        pod: pod.to_string(),
        generation_in_force: reconciler.in_force(pod),
        interface: iface.host_ifname,
        ifindex: iface.ifindex,
        ips: iface.ips,
        desired: DesiredTables {
            ingress_table: entry.map(|e| e.0),
            egress_table: entry.map(|e| e.1),
            ingress: desired_in,
            egress: desired_out,
        },
        kernel: read(kernel),
        attachment: read(attachment),
        rules,
        identities,
    })
}

/// A kernel read, or why it failed (the view says so instead of leaving it out).
fn read<T>(r: anyhow::Result<T>) -> KernelRead<T> {
    match r {
        Ok(v) => KernelRead::Read(v),
        Err(e) => KernelRead::Failed {
            error: format!("{e:#}"),
        },
    }
}
