use palisade_datapath::abi::*;
use palisade_datapath::packet::Packet;
use palisade_datapath::Hook;

use crate::common::*;

#[test]
fn smoke_allow_and_deny() {
    let c = compiled(table(deny(1), &[]), table(allow(2), &[]), &[]);
    let mut t = loaded(&c);
    assert!(t.run(
        Hook::FromPod,
        &Packet::tcp("10.0.0.1", "1.2.3.4", 1000, 80, 2).frame()
    ));
    assert!(!t.run(
        Hook::ToPod,
        &Packet::tcp("1.2.3.4", "10.0.0.1", 1000, 80, 2).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_ALLOW), 1);
    assert_eq!(t.count(DIR_INGRESS, REASON_POLICY_DENY), 1);
}
