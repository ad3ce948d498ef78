//! Issue 14, "Spoofing": one test per row of the table in docs/semantics.md
//! ("Spoofing"), each a `BPF_PROG_TEST_RUN` of the production object on the
//! pod's egress hook (`from_pod`), asserting the verdict and the reason
//! counter. The pod owns 10.0.0.1 and fd00::1 (tests/it/common.rs).

use palisade_datapath::abi::*;
use palisade_datapath::packet::{arp_frame, Packet};
use palisade_datapath::Hook;

use crate::common::*;

/// Both directions allow everything: a drop can only come from a check
/// before policy.
fn open() -> TestDp {
    loaded(&compiled(table(allow(1), &[]), table(allow(2), &[]), &[]))
}

/// Sends a UDP datagram from `src` out of the pod; returns whether it passed.
fn udp_from(t: &mut TestDp, src: &str, dst: &str) -> bool {
    t.run(Hook::FromPod, &Packet::udp(src, dst, 4000, 53).frame())
}

fn assert_spoof_drops(sources: &[&str], dst4: &str, dst6: &str) {
    let mut t = open();
    for src in sources {
        let dst = if src.contains(':') { dst6 } else { dst4 };
        assert!(!udp_from(&mut t, src, dst), "{src} must drop");
    }
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), sources.len() as u64);
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_ALLOW), 0);
    // The pod's own addresses still pass the same allow-all policy.
    assert!(udp_from(&mut t, "10.0.0.1", dst4));
    assert!(udp_from(&mut t, "fd00::1", dst6));
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_ALLOW), 2);
}

#[test]
fn another_pods_address_on_the_same_node_drops_as_spoof() {
    assert_spoof_drops(&["10.0.0.2", "fd00::2"], "10.0.0.9", "fd00::9");
}

#[test]
fn another_nodes_pod_address_drops_as_spoof() {
    // The check knows only the endpoint's own addresses, so where the other
    // pod lives does not matter.
    assert_spoof_drops(&["10.0.1.7", "fd00:0:0:1::7"], "10.0.0.9", "fd00::9");
}

#[test]
fn the_nodes_address_drops_as_spoof() {
    assert_spoof_drops(
        &["192.168.1.10", "2001:db8:ffff::10"],
        "10.0.0.9",
        "fd00::9",
    );
}

#[test]
fn an_address_outside_the_cluster_drops_as_spoof() {
    assert_spoof_drops(&["8.8.8.8", "2001:4860::8888"], "10.0.0.9", "fd00::9");
}

#[test]
fn unspecified_sources_drop_as_spoof_outside_ndp() {
    assert_spoof_drops(&["0.0.0.0", "::"], "255.255.255.255", "ff02::1");
}

#[test]
fn link_local_source_drops_as_spoof_for_non_ndp_traffic() {
    let mut t = open();
    assert!(!udp_from(&mut t, "fe80::1", "fe80::2"));
    assert!(!t.run(
        Hook::FromPod,
        &icmp("fe80::1", "fd00::9", 128, 1, vec![]).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), 2);
    assert_eq!(t.count(DIR_EGRESS, REASON_NDP), 0);
}

/// A Neighbor Advertisement: ICMPv6 type 136; the first 16 bits after the
/// checksum carry R|S|O (0x8000|0x4000|0x2000), the target follows the
/// 32-bit flags word.
fn neighbor_advert(src: &str, flags: u16, target: &str) -> Vec<u8> {
    let target: std::net::Ipv6Addr = target.parse().unwrap();
    icmp(src, "ff02::1", 136, flags, target.octets().to_vec()).frame()
}

#[test]
fn forged_neighbor_advertisement_passes_with_or_without_override() {
    // Known hole (docs/semantics.md, Spoofing): NDP passes before
    // anti-spoofing and its target is not read, so a pod can advertise
    // another pod's address; whether the host's neighbour cache takes it
    // depends on the node, not on this program.
    let mut t = open();
    assert!(t.run(
        Hook::FromPod,
        &neighbor_advert("fe80::1", 0x2000, "fd00::2")
    ));
    assert!(t.run(Hook::FromPod, &neighbor_advert("fe80::1", 0, "fd00::2")));
    assert!(t.run(
        Hook::FromPod,
        &neighbor_advert("fd00::2", 0x2000, "fd00::2")
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_NDP), 3);
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), 0);
}

#[test]
fn router_advertisement_and_redirect_from_a_pod_drop_as_spoofing() {
    // A pod is never a router: RA (134) and Redirect (137) from it would steer its
    // neighbours' traffic. They drop before policy (which allows everything here),
    // counted as spoofing; towards the pod (from the node's router) they pass.
    let mut t = open();
    assert!(!t.run(
        Hook::FromPod,
        &icmp("fe80::1", "ff02::1", 134, 0, vec![]).frame()
    ));
    assert!(!t.run(
        Hook::FromPod,
        &icmp("fe80::1", "fd00::9", 137, 0, vec![]).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), 2);
    assert_eq!(t.count(DIR_EGRESS, REASON_NDP), 0);
    assert!(t.run(
        Hook::ToPod,
        &icmp("fe80::1", "ff02::1", 134, 0, vec![]).frame()
    ));
    assert_eq!(t.count(DIR_INGRESS, REASON_NDP), 1);
    // An endpoint that may source any address (EP_F_NO_SPOOF_CHECK) may also
    // advertise itself as a router.
    t.set_endpoint_flags(POD, EP_F_NO_SPOOF_CHECK).unwrap();
    assert!(t.run(
        Hook::FromPod,
        &icmp("fe80::1", "ff02::1", 134, 0, vec![]).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_NDP), 1);
}

#[test]
fn router_and_neighbour_solicitations_pass_as_ndp() {
    let mut t = open();
    assert!(t.run(
        Hook::FromPod,
        &icmp("fe80::1", "ff02::2", 133, 0, vec![]).frame()
    ));
    // DAD: a solicitation from ::.
    assert!(t.run(
        Hook::FromPod,
        &icmp("::", "ff02::1:ff00:1", 135, 0, vec![]).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_NDP), 2);
}

/// An ARP request from the pod with `sender` as its sender protocol address.
fn arp_from(sender: [u8; 4]) -> Vec<u8> {
    let mut f = arp_frame();
    f[28..32].copy_from_slice(&sender);
    f
}

#[test]
fn arp_passes_whatever_its_sender_address() {
    // Known hole (docs/semantics.md, Spoofing): non-IP frames pass unparsed,
    // so ARP with another pod's sender address (cache poisoning) is not
    // stopped here.
    let mut t = open();
    assert!(t.run(Hook::FromPod, &arp_from([10, 0, 0, 1])));
    assert!(t.run(Hook::FromPod, &arp_from([10, 0, 0, 2])));
    assert!(t.run(Hook::FromPod, &arp_from([0, 0, 0, 0])));
    assert_eq!(t.count(DIR_EGRESS, REASON_NON_IP), 3);
}

#[test]
fn vlan_tagged_frames_from_a_pod_drop() {
    let mut t = open();
    for tpid in [[0x81, 0x00], [0x88, 0xa8]] {
        // A correct source address inside the tag: the tag alone drops it.
        let mut f = Packet::udp("10.0.0.1", "10.0.0.9", 1, 2).frame();
        f[12..14].copy_from_slice(&tpid);
        assert!(!t.run(Hook::FromPod, &f), "tpid {tpid:x?}");
    }
    assert_eq!(t.count(DIR_EGRESS, REASON_VLAN), 2);
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), 0);
}

#[test]
fn icmp_error_with_a_right_source_quoting_a_forged_inner_header_is_policy() {
    // The outer source is the pod's; the quoted datagram claims to come from
    // another pod. No tracked flow matches it, so it is not RELATED and never
    // creates state: the pod's egress policy judges it like any new packet.
    let forged = Packet::udp("10.0.0.9", "10.0.0.2", 53, 4000).ip_bytes();
    let mut t = open();
    assert!(t.run(
        Hook::FromPod,
        &icmp("10.0.0.1", "10.0.0.9", 3, 0, forged.clone()).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_CT_RELATED), 0);
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_ALLOW), 1);
    assert!(
        t.conntrack().iter().next().is_none(),
        "an error opens no state"
    );

    let mut t = loaded(&compiled(table(allow(1), &[]), table(deny(2), &[]), &[]));
    assert!(!t.run(
        Hook::FromPod,
        &icmp("10.0.0.1", "10.0.0.9", 3, 0, forged).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_POLICY_DENY), 1);
    // A forged outer source drops before the inner header is read.
    assert!(!t.run(
        Hook::FromPod,
        &icmp("10.0.0.2", "10.0.0.9", 3, 0, vec![0; 28]).frame()
    ));
    assert_eq!(t.count(DIR_EGRESS, REASON_SPOOF), 1);
}
