//! The CNI plugin's input: environment and stdin (`palisade_cni::spec::Env::from_lookup`
//! and `palisade_cni::plugin::plan`, everything the plugin decides before any I/O).
//!
//! Input: `KEY=VALUE` lines (the environment), an empty line, then stdin. Beyond "no
//! panic": DEL never fails; an error has a spec code and a message and survives its
//! JSON encoding; an ADD or CHECK plan names a pod, a sandbox, a host interface and
//! only unicast addresses, its `prevResult` is what stdin held, and its request
//! survives the trip over the agent's wire format.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use palisade_api::{Call, Register};
use palisade_cni::plugin::{plan, Plan};
use palisade_cni::spec::{code, CniError, Command, Env};

fn check_error(e: &CniError) {
    let known = [
        code::INCOMPATIBLE_VERSION,
        code::UNSUPPORTED_FIELD,
        code::UNKNOWN_CONTAINER,
        code::INVALID_ENV,
        code::IO_FAILURE,
        code::DECODE_FAILURE,
        code::INVALID_CONFIG,
        code::TRY_AGAIN_LATER,
        code::AGENT_REFUSED,
    ];
    assert!(known.contains(&e.code), "{e:?}");
    assert!(!e.msg.is_empty(), "{e:?}");
    let text = serde_json::to_string(e).expect("an error serializes");
    let back: CniError = serde_json::from_str(&text).expect("an error decodes");
    assert_eq!(&back, e);
}

fuzz_target!(|data: &[u8]| {
    let (head, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
    let vars: BTreeMap<String, String> = head
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = match Env::from_lookup(|k| vars.get(k).cloned()) {
        Ok(env) => env,
        Err(e) => return check_error(&e),
    };
    match plan(&env, stdin) {
        Err(e) => {
            assert_ne!(env.command, Command::Del, "DEL failed: {e:?}");
            assert_ne!(env.command, Command::Version, "VERSION failed: {e:?}");
            check_error(&e);
        }
        Ok(Plan::Version) => assert_eq!(env.command, Command::Version),
        Ok(Plan::Del { endpoint, .. }) => {
            assert_eq!(env.command, Command::Del);
            if let Some(e) = endpoint {
                assert!(!e.namespace.is_empty() && !e.pod.is_empty(), "{e:?}");
            }
        }
        Ok(Plan::Add { endpoint, prev, .. }) | Ok(Plan::Check { endpoint, prev, .. }) => {
            assert!(matches!(env.command, Command::Add | Command::Check));
            for (what, v) in [
                ("namespace", &endpoint.namespace),
                ("pod", &endpoint.pod),
                ("container_id", &endpoint.container_id),
                ("netns", &endpoint.netns),
                ("host_ifname", &endpoint.host_ifname),
            ] {
                assert!(!v.is_empty(), "{what} empty: {endpoint:?}");
            }
            assert!(!endpoint.ips.is_empty(), "{endpoint:?}");
            for ip in &endpoint.ips {
                assert!(
                    !ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast(),
                    "{ip} registered"
                );
            }
            let conf: serde_json::Value = serde_json::from_slice(stdin).expect("stdin parsed");
            assert_eq!(Some(&prev), conf.get("prevResult"));
            let req = Register(endpoint).request();
            let line = serde_json::to_string(&req).expect("a request serializes");
            assert_eq!(palisade_api::decode_request(&line).expect("decodes"), req);
        }
    }
});
