//! The decision-event decoder (`palisade_datapath::decode_record`: ring-buffer bytes to
//! an event) on arbitrary bytes. Beyond "no panic": a record shorter than a
//! `struct event` is refused, any longer one decodes; the reason is a name the API
//! knows (or `unknown`), the direction one of the two, addresses present exactly for
//! IPv4 and IPv6; the event serializes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_api::Reason;
use palisade_datapath::{abi, decode_record};

fuzz_target!(|data: &[u8]| {
    let size = std::mem::size_of::<abi::Event>();
    let Some(ev) = decode_record(data) else {
        assert!(data.len() < size, "{} bytes refused", data.len());
        return;
    };
    assert!(data.len() >= size);
    let reason = Reason::from_name(ev.reason);
    assert_eq!(
        reason == Reason::Unknown,
        ev.reason == "unknown",
        "reason {:?} has no API name",
        ev.reason
    );
    assert!(
        matches!(ev.direction, "ingress" | "egress"),
        "{}",
        ev.direction
    );
    let family = data[std::mem::offset_of!(abi::Event, family)];
    let ip = matches!(family, 4 | 6);
    assert_eq!(ev.src.is_some(), ip);
    assert_eq!(ev.dst.is_some(), ip);
    if family == 4 {
        assert!(ev.src.unwrap().is_ipv4() && ev.dst.unwrap().is_ipv4());
    }
    serde_json::to_string(&ev).expect("an event serializes");
});
