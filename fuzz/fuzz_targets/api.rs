//! The agent's unix-socket protocol, both ends, on arbitrary lines.
//!
//! The first byte picks the decoder, the rest is the line:
//! - the agent's request decoder (`palisade_api::decode_request`): a decoded request
//!   encodes and decodes back to itself;
//! - a client's reply decoder (`palisade_api::client::decode`) for each request type:
//!   a reply it accepts, put back in the envelope as the agent builds it, is accepted
//!   again (and, for the replies without floats, decodes to the same value);
//! - a `flows` line (`FlowItem`): decode, encode, decode is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_api::client::decode;
use palisade_api::{
    decode_request, Call, Check, Endpoint, FlowItem, Metrics, Register, Reply, Status, Sync,
    Unregister,
};

/// A reply `C` accepted is accepted again once re-enveloped; `exact` also asks for
/// the same value (not for replies with floats, which JSON may not carry bit for bit).
fn reply<C: Call>(line: &str, exact: bool)
where
    C::Reply: PartialEq + std::fmt::Debug,
{
    let Ok(r) = decode::<C>(line) else {
        return;
    };
    let again = serde_json::to_string(&Reply::of::<C>(&r)).expect("a reply serializes");
    let back = decode::<C>(&again).unwrap_or_else(|e| panic!("{again}: {e}"));
    if exact {
        assert_eq!(back, r, "{again}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(line) = std::str::from_utf8(rest) else {
        return;
    };
    match pick % 9 {
        0 => {
            if let Ok(req) = decode_request(line) {
                let text = serde_json::to_string(&req).expect("a request serializes");
                assert!(!text.contains('\n'), "a request is one line: {text}");
                assert_eq!(decode_request(&text).expect("decodes back"), req, "{text}");
            }
        }
        1 => reply::<Register>(line, true),
        2 => reply::<Unregister>(line, true),
        3 => reply::<Check>(line, true),
        4 => reply::<Sync>(line, false),
        5 => reply::<Status>(line, false),
        6 => reply::<Endpoint>(line, false),
        7 => reply::<Metrics>(line, true),
        _ => {
            if let Ok(item) = serde_json::from_str::<FlowItem>(line) {
                let text = serde_json::to_string(&item).expect("an item serializes");
                assert_eq!(
                    serde_json::from_str::<FlowItem>(&text).expect("decodes"),
                    item
                );
            }
        }
    }
});
