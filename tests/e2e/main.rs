//! End-to-end tests: the `hawking` binary with real exporters, collectors and sockets.
//! One test binary with modules, so the dependency stack links once.

mod attribution;
mod capture_replay;
mod exporters;
mod flow_exports;
mod garage;
mod goflow2;
mod hubble_grpc;
mod ipfix_tcp;
mod kafka;
mod kafka_source;
mod kube_api;
mod kube_api_tests;
mod malformed;
mod netns;
mod netobserv_ipfix;
mod pgwire;
mod recorded_cluster;
mod replay;
mod shutdown;
mod snat;
mod split_roles;
mod sql_surface;
mod store_upkeep;
mod support;
mod templates;
