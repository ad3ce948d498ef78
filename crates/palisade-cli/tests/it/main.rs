//! Integration tests of the `palisade` binary: offline commands, and lab tests that
//! create real network namespaces, run the real agent and send real packets (root
//! needed; every test removes what it made, also when it fails).

mod api_replies;
mod bounds;
mod cli;
mod convert;
mod diff;
mod docs_commands;
mod habits;
mod kube_calico;
mod kube_lab;
mod kube_services;
mod lab;
mod lab_transitions;
mod least_privilege;
mod live;
mod registration;
mod services;
mod support;
mod view;
mod workloads;
