//! Plain-words rendering of origins and steps, for `palisade explain` and decision logs.

use std::fmt;

use crate::compiled::RuleOrigin;
use crate::model::{Action, CalicoAction, Direction, Tier};

use super::{ClusterOutcome, Step};

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn tier_word(t: Tier) -> &'static str {
    match t {
        Tier::Admin => "Admin",
        Tier::Baseline => "Baseline",
    }
}

/// `rule 0 "deny-imds"`, or `rule 0` for an unnamed rule.
fn rule_ref(index: usize, name: &str) -> String {
    if name.is_empty() {
        format!("rule {index}")
    } else {
        format!("rule {index} {name:?}")
    }
}

/// One sentence for the rule (or absence of rules) that decided a side, e.g.
/// `allowed by NetworkPolicy default/allow-client ingress rule 0` or
/// `denied by ClusterNetworkPolicy deny-metadata (Admin tier) egress rule 0 "deny-imds"`.
pub fn describe(origin: &RuleOrigin) -> String {
    match origin {
        RuleOrigin::NetworkPolicy {
            namespace,
            name,
            direction,
            index,
        } => format!(
            "allowed by NetworkPolicy {namespace}/{name} {} rule {index}",
            dir_word(*direction)
        ),
        RuleOrigin::Cluster {
            kind,
            name,
            tier,
            direction,
            index,
            rule_name,
            action,
        } => {
            let verb = match action {
                Action::Accept => "allowed by",
                Action::Deny => "denied by",
                Action::Pass => "passed to NetworkPolicy by",
            };
            format!(
                "{verb} {} {name} ({} tier) {} {}",
                kind.as_str(),
                tier_word(*tier),
                dir_word(*direction),
                rule_ref(*index, rule_name)
            )
        }
        RuleOrigin::Calico {
            kind,
            namespace,
            name,
            direction,
            index,
            action,
        } => {
            let verb = match action {
                CalicoAction::Allow => "allowed by",
                CalicoAction::Deny => "denied by",
                CalicoAction::Pass => "passed to the next tier by",
                CalicoAction::Log => "logged by",
            };
            let who = match namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name.clone(),
            };
            format!(
                "{verb} {} {who} {} rule {index} ({})",
                kind.as_str(),
                dir_word(*direction),
                action.as_str()
            )
        }
        RuleOrigin::Isolated {
            direction,
            policies,
        } => format!(
            "denied: isolated for {} by policies {}; no rule allowed it",
            dir_word(*direction),
            policies.join(", ")
        ),
        RuleOrigin::Default { direction } => format!(
            "allowed: no policy isolates or decides {} for the pod",
            dir_word(*direction)
        ),
    }
}

/// Renders a [`Step`] as one sentence.
pub(super) fn step(step: &Step, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match step {
        Step::NoClusterPolicy { tier } => {
            write!(
                f,
                "{} tier: no cluster policy selects the pod",
                tier_word(*tier)
            )
        }
        Step::ClusterPolicy {
            kind,
            name,
            tier,
            priority,
            direction,
            outcome,
            notes,
        } => {
            write!(
                f,
                "{} tier: {} {name} (priority {priority}) ",
                tier_word(*tier),
                kind.as_str()
            )?;
            match outcome {
                ClusterOutcome::NoMatch => write!(f, "no {} rule matched", dir_word(*direction))?,
                ClusterOutcome::Matched {
                    index,
                    rule_name,
                    action,
                } => {
                    write!(f, "{} {action:?} matched", rule_ref(*index, rule_name))?;
                    if *action == Action::Pass {
                        f.write_str(": skipping the rest of the Admin tier")?;
                    }
                }
            }
            for note in notes {
                write!(f, "; note: {note}")?;
            }
            Ok(())
        }
        Step::NetworkPolicies {
            direction,
            isolating,
            allowed_by,
        } => {
            let d = dir_word(*direction);
            if isolating.is_empty() {
                return write!(f, "NetworkPolicy: no policy selects the pod for {d}");
            }
            write!(
                f,
                "NetworkPolicy: pod isolated for {d} by {}; ",
                isolating.join(", ")
            )?;
            match allowed_by {
                Some((policy, index)) => write!(f, "rule {policy} {d}[{index}] allowed"),
                None => f.write_str("no rule allowed it"),
            }
        }
        Step::CalicoPolicy {
            policy,
            order,
            direction,
            matched,
            logged,
        } => {
            let order = match order {
                Some(o) => format!("order {}", o.0),
                None => "no order".to_string(),
            };
            write!(f, "Default tier: {policy} ({order}) ")?;
            match matched {
                None => write!(f, "no {} rule decided", dir_word(*direction))?,
                Some((index, action)) => {
                    write!(
                        f,
                        "{} rule {index} {} matched",
                        dir_word(*direction),
                        action.as_str()
                    )?;
                    if *action == CalicoAction::Pass {
                        f.write_str(": skipping the rest of the default tier")?;
                    }
                }
            }
            if !logged.is_empty() {
                let l: Vec<String> = logged.iter().map(|i| i.to_string()).collect();
                write!(
                    f,
                    "; Log rules {} matched (Palisade does not log them)",
                    l.join(", ")
                )?;
            }
            Ok(())
        }
        Step::Default { direction } => write!(
            f,
            "Default: allowed (no tier decided {})",
            dir_word(*direction)
        ),
    }
}
