//! Numbering across passes: merged deltas, full rebuilds and adoption of a previous
//! run's ids must never give a number in use a second meaning, and deletions must leave
//! nothing behind.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::state::diff;
use super::tests::{apply_checked, arb_cluster, compare_with_oracle};
use super::{changes_between, compile, merge, Compiler, InUse};
use crate::compiled::{Compiled, IdentityId};
use crate::model::{Cluster, IpBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyRule};
use crate::selector::LabelSelector;

/// What a datapath loaded with `c` would report as in use.
fn in_use(c: &Compiled) -> InUse {
    let mut u = InUse {
        addresses: c.addresses.clone(),
        ..InUse::default()
    };
    for (t, table) in &c.tables {
        u.max_table = u.max_table.max(*t);
        for e in &table.entries {
            u.max_identity = u.max_identity.max(e.peer);
            u.max_rule = u.max_rule.max(e.verdict.rule);
        }
    }
    for id in c.addresses.values() {
        u.max_identity = u.max_identity.max(*id);
    }
    u
}

fn address_sets(c: &Compiled) -> BTreeMap<IdentityId, BTreeSet<ipnet::IpNet>> {
    let mut out: BTreeMap<IdentityId, BTreeSet<ipnet::IpNet>> = BTreeMap::new();
    for (n, id) in &c.addresses {
        out.entry(*id).or_default().insert(*n);
    }
    out
}

fn replay(from: &Compiled, to: &Compiled, what: &str) -> Result<Compiled, TestCaseError> {
    let mut state = from.clone();
    for op in &diff(from, to).ops {
        apply_checked(&mut state, op).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
    }
    Ok(state)
}

#[test]
fn deleting_the_last_policy_naming_a_cidr_retires_its_prefixes_at_once() {
    let mut c = Cluster::default();
    c.namespaces.insert(
        "a".into(),
        crate::model::Namespace {
            name: "a".into(),
            labels: Default::default(),
        },
    );
    let np = NetworkPolicy {
        namespace: "a".into(),
        name: "blocks".into(),
        pod_selector: LabelSelector::everything(),
        ingress: None,
        egress: Some(vec![NetworkPolicyRule {
            peers: Some(vec![NetworkPolicyPeer::IpBlock(IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()],
            })]),
            ports: None,
        }]),
    };
    let mut comp = Compiler::new(c.clone());
    let before: Vec<_> = comp.compiled().addresses.keys().copied().collect();
    comp.upsert_network_policy(np);
    assert!(comp
        .compiled()
        .addresses
        .contains_key(&"10.1.0.0/16".parse().unwrap()));
    let delta = comp.remove_network_policy("a/blocks");
    let after: Vec<_> = comp.compiled().addresses.keys().copied().collect();
    assert_eq!(after, before, "prefixes left behind by {delta:?}");
    assert_eq!(
        comp.compiled().identities.len(),
        compile(&c).identities.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    /// One merged delta per pass is safe op by op, reaches the same snapshot as the
    /// deltas one by one, and leaves exactly the prefixes a fresh compile has.
    #[test]
    fn merged_deltas_of_a_pass_are_safe_and_leave_no_leftovers(
        from in arb_cluster(),
        to in arb_cluster(),
    ) {
        let mut comp = Compiler::new(from.clone());
        let mut state = comp.compiled().clone();
        let deltas: Vec<_> = changes_between(&from, &to).into_iter().map(|ch| comp.apply(ch)).collect();
        for op in &merge(deltas).ops {
            if let Err(e) = apply_checked(&mut state, op) {
                return Err(TestCaseError::fail(format!("merged: {e}")));
            }
        }
        prop_assert_eq!(&state, comp.compiled());
        let fresh = compile(&to);
        prop_assert_eq!(
            comp.compiled().addresses.keys().collect::<Vec<_>>(),
            fresh.addresses.keys().collect::<Vec<_>>()
        );
        prop_assert_eq!(comp.compiled().identities.len(), fresh.identities.len());
    }

    /// A full pass (rebuild) after incremental changes keeps every number's meaning:
    /// the difference from the previous snapshot is safe op by op (no table rewritten
    /// under a live id, no identity re-meant) and the result equals the semantics.
    #[test]
    fn rebuild_keeps_numbers_and_is_safe_from_the_previous_state(
        from in arb_cluster(),
        mid in arb_cluster(),
        to in arb_cluster(),
    ) {
        let mut comp = Compiler::new(from.clone());
        for ch in changes_between(&from, &mid) {
            comp.apply(ch);
        }
        let before = comp.compiled().clone();
        // Same cluster: nothing may change at all.
        comp.rebuild(mid.clone());
        prop_assert_eq!(&before, comp.compiled());
        // A different cluster (as after a failed pass): safe, and right.
        comp.rebuild(to.clone());
        let state = replay(&before, comp.compiled(), "rebuild")?;
        prop_assert_eq!(&state, comp.compiled());
        prop_assert_eq!(compare_with_oracle(&to, comp.compiled()), Ok(()));
    }

    /// A compiler taking over a previous run's kernel state: table and rule ids all
    /// fresh; an identity keeps its number only with exactly the same addresses; with
    /// nothing changed, every address keeps its identity.
    #[test]
    fn adopting_never_re_means_a_number_in_use(
        from in arb_cluster(),
        to in arb_cluster(),
    ) {
        let old = Compiler::new(from.clone()).compiled().clone();
        let used = in_use(&old);
        let same = Compiler::adopting(from.clone(), &used);
        prop_assert_eq!(&same.compiled().addresses, &old.addresses);
        for (what, c) in [("same", same.compiled().clone()), ("other", Compiler::adopting(to.clone(), &used).compiled().clone())] {
            prop_assert!(c.tables.keys().all(|t| *t > used.max_table), "{}: table id reused", what);
            prop_assert!(c.rules.keys().all(|r| *r > used.max_rule), "{}: rule id reused", what);
            let (old_sets, new_sets) = (address_sets(&old), address_sets(&c));
            for (id, set) in &new_sets {
                prop_assert!(
                    *id > used.max_identity || old_sets.get(id) == Some(set),
                    "{}: identity {} re-meant", what, id
                );
            }
        }
        let other = Compiler::adopting(to.clone(), &used);
        prop_assert_eq!(compare_with_oracle(&to, other.compiled()), Ok(()));
    }
}

/// Puts every other pod on node `n1`, the rest on `n2`.
fn spread(mut c: Cluster) -> Cluster {
    for (i, p) in c.pods.values_mut().enumerate() {
        p.node_name = Some(if i % 2 == 0 { "n1" } else { "n2" }.into());
    }
    c
}

/// Every verdict of every endpoint of `scoped`, looked up as the datapath does, equals
/// the same endpoint's in `full`.
fn same_verdicts(c: &Cluster, scoped: &Compiled, full: &Compiled) -> Result<(), TestCaseError> {
    let (addrs, ports) = (
        super::tests::probe_addresses(c),
        super::tests::probe_ports(c),
    );
    for (pod, e) in &scoped.endpoints {
        let f = &full.endpoints[pod];
        for ip in &addrs {
            let (ps, pf) = (scoped.lookup_identity(*ip), full.lookup_identity(*ip));
            for proto in [6u8, 17, 132, 0] {
                for port in &ports {
                    for (ts, tf) in [(e.ingress, f.ingress), (e.egress, f.egress)] {
                        let (a, b) = (
                            scoped.lookup(ts, ps, proto, *port),
                            full.lookup(tf, pf, proto, *port),
                        );
                        prop_assert_eq!(
                            a.action,
                            b.action,
                            "{} peer {} proto {} port {}",
                            pod,
                            ip,
                            proto,
                            port
                        );
                        prop_assert_eq!(scoped.rules.get(&a.rule), full.rules.get(&b.rule));
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    /// A node-scoped compiler gives endpoints exactly to its node's pods, with the same
    /// verdicts as a whole-cluster compile, and stays so through incremental changes
    /// and rebuilds.
    #[test]
    fn a_node_scoped_compiler_keeps_only_its_pods_as_endpoints_with_the_same_verdicts(
        from in arb_cluster(),
        to in arb_cluster(),
    ) {
        let (from, to) = (spread(from), spread(to));
        let local = |c: &Cluster| -> BTreeSet<String> {
            compile(c).endpoints.keys().filter(|k| c.pods[*k].node_name.as_deref() == Some("n1")).cloned().collect()
        };
        let mut comp = Compiler::for_node(from.clone(), "n1");
        prop_assert_eq!(comp.compiled().endpoints.keys().cloned().collect::<BTreeSet<_>>(), local(&from));
        same_verdicts(&from, comp.compiled(), &compile(&from))?;
        let mut state = comp.compiled().clone();
        let deltas: Vec<_> = changes_between(&from, &to).into_iter().map(|ch| comp.apply(ch)).collect();
        for op in &merge(deltas).ops {
            if let Err(e) = apply_checked(&mut state, op) {
                return Err(TestCaseError::fail(format!("scoped merged: {e}")));
            }
        }
        prop_assert_eq!(&state, comp.compiled());
        prop_assert_eq!(comp.compiled().endpoints.keys().cloned().collect::<BTreeSet<_>>(), local(&to));
        same_verdicts(&to, comp.compiled(), &compile(&to))?;
        let before = comp.compiled().clone();
        comp.rebuild(to.clone());
        prop_assert_eq!(&before, comp.compiled());
    }
}
