//! Frontends and backends from manifests as a user writes them, and the per-backend
//! verdict of the reference evaluator.

use std::net::IpAddr;

use super::*;
use crate::manifest;
use crate::verdict::{evaluate, evaluate_service, Flow, Peer};

fn load(yaml: &str) -> Cluster {
    let l = manifest::load(&[("t.yaml".to_string(), yaml.to_string())]);
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    l.cluster
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn be(addr: &str, port: u16) -> Backend {
    Backend {
        addr: ip(addr),
        port,
    }
}

/// A dual-stack Service `web` with a named targetPort, its two EndpointSlices per
/// family (the controller groups pods by resolved number: 8080 and 9090), and pods.
const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  externalIPs: [198.51.100.7]
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: web, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5]}, {addresses: [10.244.1.9], conditions: {ready: false}}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.7]}]
ports: [{name: http, port: 9090, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
endpoints: [{addresses: ['fd00:244::5']}]
ports: [{name: http, port: 8080, protocol: TCP}]
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.168.1.20}]}
";

#[test]
fn service_fields_are_decoded() {
    let c = load(WEB);
    let svc = &c.services["shop/web"];
    assert_eq!(svc.service_type, ServiceType::NodePort);
    assert_eq!(
        svc.ports[0].target_port,
        Some(TargetPort::Name("web".into()))
    );
    assert_eq!(svc.ports[0].node_port, Some(30080));
    assert_eq!(svc.external_ips, vec![ip("198.51.100.7")]);
    assert_eq!(
        svc.affinity_timeout,
        Some(10800),
        "the API's default timeout"
    );
}

#[test]
fn a_bad_service_field_is_an_error_naming_it() {
    let l = manifest::load(&[(
        "t.yaml".to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: Magic, ports: [{port: 80, targetPort: 'Bad_Name'}]}\n".to_string(),
    )]);
    let fields: Vec<_> = l.errors.iter().filter_map(|e| e.field()).collect();
    assert!(fields.contains(&"spec.type"), "{:?}", l.errors);
    assert!(
        fields.contains(&"spec.ports[0].targetPort"),
        "{:?}",
        l.errors
    );
}

#[test]
fn frontends_cover_cluster_ips_external_ips_and_node_ports_with_per_slice_target_ports() {
    let t = ServiceTable::build(&load(WEB));
    let v4 = t.resolve(ip("10.96.0.10"), 80, Protocol::Tcp).unwrap();
    assert_eq!(v4.kind, FrontendKind::ClusterIp);
    assert_eq!(v4.service, "shop/web");
    assert_eq!(
        v4.backends,
        vec![be("10.244.1.5", 8080), be("10.244.2.7", 9090)],
        "the named targetPort resolves per slice; not-ready endpoints are no backend"
    );
    assert_eq!(v4.affinity_timeout, Some(10800));
    let v6 = t.resolve(ip("fd00:96::10"), 80, Protocol::Tcp).unwrap();
    assert_eq!(
        v6.backends,
        vec![be("fd00:244::5", 8080)],
        "only backends of the frontend's family"
    );
    let ext = t.resolve(ip("198.51.100.7"), 80, Protocol::Tcp).unwrap();
    assert_eq!(ext.kind, FrontendKind::ExternalIp);
    let np = t.resolve(ip("192.168.1.20"), 30080, Protocol::Tcp).unwrap();
    assert_eq!(np.kind, FrontendKind::NodePort);
    assert_eq!(np.backends, v4.backends);
    assert!(t.resolve(ip("10.96.0.10"), 81, Protocol::Tcp).is_none());
    assert!(t.resolve(ip("10.96.0.10"), 80, Protocol::Udp).is_none());
    assert_eq!(t.of_service("shop/web").count(), 4);
    assert!(t.conflicts.is_empty());
}

/// The EndpointSlice controller writes `name: ""` for a Service port without a name
/// (as in the Kubernetes lab); the port is the same, in either spelling.
#[test]
fn an_unnamed_service_port_matches_a_slice_port_named_empty_or_unnamed() {
    for slice_port in [
        "{name: \"\", port: 8080, protocol: TCP}",
        "{port: 8080, protocol: TCP}",
    ] {
        let yaml = format!(
            "
apiVersion: v1
kind: Service
metadata: {{name: s}}
spec: {{clusterIP: 10.96.0.21, ports: [{{port: 80, protocol: TCP, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s-1, labels: {{kubernetes.io/service-name: s}}}}
addressType: IPv4
endpoints:
- {{addresses: [10.244.0.3]}}
ports: [{slice_port}]
"
        );
        let t = ServiceTable::build(&load(&yaml));
        let f = t.resolve(ip("10.96.0.21"), 80, Protocol::Tcp).unwrap();
        assert_eq!(f.backends, vec![be("10.244.0.3", 8080)], "{slice_port}");
    }
    // A named Service port still takes only its own slice port.
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: 10.96.0.22, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.3]}
ports: [{name: \"\", port: 8080, protocol: TCP}]
";
    let t = ServiceTable::build(&load(yaml));
    let f = t.resolve(ip("10.96.0.22"), 80, Protocol::Tcp).unwrap();
    assert!(f.backends.is_empty(), "{:?}", f.backends);
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: 10.96.0.20, ports: [{port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints:
- {addresses: [10.244.0.3], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.0.4], conditions: {ready: false, serving: false, terminating: true}}
ports: [{port: 53, protocol: UDP}]
";
    let t = ServiceTable::build(&load(yaml));
    let f = t.resolve(ip("10.96.0.20"), 53, Protocol::Udp).unwrap();
    assert_eq!(f.backends, vec![be("10.244.0.3", 53)]);
    assert!(f.terminating);
    let mut c = load(yaml);
    c.endpoint_slices
        .get_mut("default/s-1")
        .unwrap()
        .addresses
        .push(ip("10.244.0.8"));
    let t = ServiceTable::build(&c);
    let f = t.resolve(ip("10.96.0.20"), 53, Protocol::Udp).unwrap();
    assert_eq!(f.backends, vec![be("10.244.0.8", 53)], "a ready one wins");
    assert!(!f.terminating);
}

#[test]
fn without_endpoint_slices_the_selector_and_named_target_port_give_the_backends() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.30, selector: {app: web}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 9000}]}]}
status: {podIP: 10.244.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: no-port, labels: {app: web}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: other, labels: {app: db}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.0.8}
";
    let t = ServiceTable::build(&load(yaml));
    let f = t.resolve(ip("10.96.0.30"), 80, Protocol::Tcp).unwrap();
    assert!(f.from_selector);
    assert_eq!(
        f.backends,
        vec![be("10.244.0.5", 8080), be("10.244.0.6", 9000)]
    );
}

#[test]
fn two_services_claiming_one_frontend_keep_the_first_and_report_the_other() {
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {externalIPs: [198.51.100.1], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {externalIPs: [198.51.100.1], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: gone}
spec: {type: ExternalName, externalName: example.com, externalIPs: [198.51.100.2], ports: [{port: 80}]}
";
    let t = ServiceTable::build(&load(yaml));
    assert_eq!(
        t.resolve(ip("198.51.100.1"), 80, Protocol::Tcp)
            .unwrap()
            .service,
        "default/a"
    );
    assert_eq!(t.conflicts.len(), 1, "{:?}", t.conflicts);
    assert!(t.conflicts[0].contains("ignored default/b"));
    assert!(t.resolve(ip("198.51.100.2"), 80, Protocol::Tcp).is_none());
}

/// A client whose egress allows only `app=allowed` pods, and a Service with one
/// allowed and one denied backend.
const PARTIAL: &str = "
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.244.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: good, labels: {app: web, tier: allowed}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: bad, labels: {app: web, tier: denied}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.2.5}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {tier: allowed}}}], ports: [{port: http}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.40
  selector: {app: web}
  ports: [{name: h, port: 80, targetPort: http}, {name: s, port: 80, protocol: SCTP, targetPort: 8080}]
";

#[test]
fn a_frontend_is_judged_per_backend_and_the_flow_by_the_chosen_one() {
    let c = load(PARTIAL);
    let t = ServiceTable::build(&c);
    let flow = Flow::new(
        Peer::Ip(ip("10.244.0.2")),
        Peer::Ip(ip("10.96.0.40")),
        6,
        80,
    );
    assert!(
        !evaluate(&c, &flow).allowed,
        "as addressed, the ClusterIP is an unknown outside address"
    );
    let d = evaluate_service(&c, &t, &flow).expect("a frontend");
    assert_eq!(d.backends.len(), 2);
    assert!(d.partial());
    let good = d.chosen(&be("10.244.1.5", 8080)).unwrap();
    assert!(good.allowed, "{good:?}");
    assert!(!d.chosen(&be("10.244.2.5", 8080)).unwrap().allowed);
    assert_eq!(d.backends[0].pod.as_deref(), Some("default/good"));
    assert!(d.chosen(&be("10.244.1.5", 80)).is_none());
    assert!(!d.untranslated_egress_allowed());
    // Each backend's verdict is exactly that of a flow sent to it directly.
    for b in &d.backends {
        let direct = Flow::new(
            flow.src.clone(),
            Peer::Ip(b.backend.addr),
            6,
            b.backend.port,
        );
        assert_eq!(b.decision, evaluate(&c, &direct));
    }
}

#[test]
fn an_untranslated_sctp_frontend_is_allowed_only_if_every_backend_is() {
    let c = load(PARTIAL);
    let t = ServiceTable::build(&c);
    let f = t.resolve(ip("10.96.0.40"), 80, Protocol::Sctp).unwrap();
    assert!(!f.translated());
    let flow = Flow::new(
        Peer::Ip(ip("10.244.0.2")),
        Peer::Ip(ip("10.96.0.40")),
        132,
        80,
    );
    let d = evaluate_service(&c, &t, &flow).unwrap();
    assert!(!d.untranslated_egress_allowed(), "one backend is denied");
    let mut open = c.clone();
    open.network_policies.clear();
    let d = evaluate_service(&open, &ServiceTable::build(&open), &flow).unwrap();
    assert!(d.untranslated_egress_allowed());
    let mut empty = open.clone();
    empty.pods.retain(|k, _| k == "default/client");
    let d = evaluate_service(&empty, &ServiceTable::build(&empty), &flow).unwrap();
    assert!(d.backends.is_empty());
    assert!(!d.untranslated_egress_allowed(), "no backend: dropped");
}
