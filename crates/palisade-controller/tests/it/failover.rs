//! Two controller replicas: one leads (holds the Lease and writes), the other waits;
//! the leader dies without releasing anything, and the other takes over once the
//! Lease expires and writes the answers for what changed meanwhile.

use std::time::{Duration, Instant};

use crate::support::*;

const NP: &str = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
 "metadata":{"name":"web","namespace":"team-a"},
 "spec":{"podSelector":{"matchLabels":{"app":"web"}},"ingress":[{"ports":[{"port":PORT}]}]}}"#;

fn status_rv(cp: &palisade_kube_lab::ControlPlane) -> Result<String, String> {
    let v = get_json(
        cp,
        &["networkpolicystatuses.palisade.io", "-n", "team-a", "web"],
    )?;
    Ok(v["spec"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn np_rv(cp: &palisade_kube_lab::ControlPlane) -> String {
    get_json(cp, &["networkpolicy", "-n", "team-a", "web"]).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_second_replica_takes_over_when_the_leader_dies_and_only_one_leads() {
    let Some(cp) = start("controller failover", &[]) else {
        return;
    };
    let kc = controller_identity(&cp);
    let lease = Duration::from_secs(3);
    let renew = Duration::from_millis(500);
    let mut replicas = [
        Replica::start(&kc, "replica-a", lease, renew),
        Replica::start(&kc, "replica-b", lease, renew),
    ];
    cp.kubectl(cp.admin(), &["create", "namespace", "team-a"], None)
        .unwrap();
    apply(&cp, &NP.replace("PORT", "80"));
    let rv1 = np_rv(&cp);
    eventually(
        Duration::from_secs(60),
        "the leader's answer for the policy",
        || status_rv(&cp).and_then(|rv| if rv == rv1 { Ok(rv) } else { Err(rv) }),
    );
    let (leader, transitions) = lease_holder(&cp).expect("a Lease with a holder");
    assert_eq!(transitions, 0, "one replica took the Lease and kept it");
    assert!(leader == "replica-a" || leader == "replica-b", "{leader}");
    // The standby keeps away while the leader renews: still the same holder well past
    // one lease duration.
    let watched_until = Instant::now() + lease * 2;
    while Instant::now() < watched_until {
        assert_eq!(
            lease_holder(&cp).unwrap(),
            (leader.clone(), 0),
            "the leader kept the Lease"
        );
        std::thread::sleep(renew);
    }

    let dead = replicas.iter_mut().find(|r| r.identity == leader).unwrap();
    dead.kill();
    let killed = Instant::now();
    apply(&cp, &NP.replace("PORT", "8080"));
    let rv2 = np_rv(&cp);
    let (next, transitions) = eventually(
        Duration::from_secs(30),
        "the other replica to take the Lease",
        || {
            lease_holder(&cp).and_then(|h| {
                if h.0 != leader {
                    Ok(h)
                } else {
                    Err(format!("{h:?}"))
                }
            })
        },
    );
    assert_eq!(transitions, 1);
    eventually(
        Duration::from_secs(30),
        "the new leader's answer for the updated policy",
        || status_rv(&cp).and_then(|rv| if rv == rv2 { Ok(rv) } else { Err(rv) }),
    );
    eprintln!(
        "failover: {leader} killed, {next} leads and has written the update after {:.1} s (lease {lease:?}, renew {renew:?})",
        killed.elapsed().as_secs_f64()
    );
}
