//! Where the upstream list comes from: a fixed `--upstreams` list, or the EndpointSlices of a
//! Kubernetes Service, watched with kube-rs. Only endpoints that are ready and not terminating
//! receive traffic, so a pod that starts terminating stops getting new requests at the next
//! watch event (well under a second), and a new pod is used as soon as its readiness probe
//! passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use crate::balancer::Balancer;
use crate::metrics::Metrics;

/// The label Kubernetes puts on every EndpointSlice of a Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Folds EndpointSlice watch events into the set of usable `ip:port` addresses. Kept apart
/// from the watch so tests drive it with constructed objects through the same code path.
#[derive(Debug, Default)]
pub struct SliceState {
    port_name: String,
    slices: BTreeMap<String, BTreeSet<String>>,
    /// Slices seen since the watch (re)started, applied at `InitDone`.
    pending: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl SliceState {
    /// State that takes the port named `port_name` from each slice (or its first port).
    pub fn new(port_name: &str) -> Self {
        Self {
            port_name: port_name.to_string(),
            ..Self::default()
        }
    }

    /// Applies one event; returns the new address set when it changed what is usable.
    pub fn apply(&mut self, event: Event<EndpointSlice>) -> Option<BTreeSet<String>> {
        let before = self.addresses();
        match event {
            Event::Apply(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                let addrs = self.ready_addresses(&slice);
                self.slices.insert(name, addrs);
            }
            Event::Delete(slice) => {
                self.slices
                    .remove(&slice.metadata.name.clone().unwrap_or_default());
            }
            Event::Init => self.pending = Some(BTreeMap::new()),
            Event::InitApply(slice) => {
                let name = slice.metadata.name.clone().unwrap_or_default();
                let addrs = self.ready_addresses(&slice);
                self.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, addrs);
            }
            Event::InitDone => {
                // A relist replaces everything at once: slices deleted while the watch was
                // down disappear here.
                if let Some(fresh) = self.pending.take() {
                    self.slices = fresh;
                }
            }
        }
        let after = self.addresses();
        (after != before).then_some(after)
    }

    /// Union of all slices' usable addresses.
    pub fn addresses(&self) -> BTreeSet<String> {
        self.slices.values().flatten().cloned().collect()
    }

    fn ready_addresses(&self, slice: &EndpointSlice) -> BTreeSet<String> {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(self.port_name.as_str()))
            .or_else(|| ports.first())
            .and_then(|p| p.port);
        let Some(port) = port else {
            return BTreeSet::new();
        };
        slice
            .endpoints
            .iter()
            .filter(|e| {
                let conditions = e.conditions.as_ref();
                // The API says an unset `ready` means "unknown, treat as ready"; an unset
                // `terminating` means not terminating.
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                ready && !terminating
            })
            .flat_map(|e| e.addresses.iter())
            .map(|ip| {
                if ip.contains(':') {
                    format!("[{ip}]:{port}") // IPv6
                } else {
                    format!("{ip}:{port}")
                }
            })
            .collect()
    }
}

/// Watches the Service's EndpointSlices and keeps the balancer's upstream set current. Runs
/// until the process ends; watch errors are retried with backoff by kube-rs.
pub async fn watch_endpoint_slices(
    client: kube::Client,
    namespace: String,
    service: String,
    port_name: String,
    balancer: Arc<Balancer>,
    metrics: Arc<Metrics>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut state = SliceState::new(&port_name);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if let Some(addresses) = state.apply(event) {
                    tracing::info!(upstreams = ?addresses, "upstreams changed");
                    balancer.set_upstreams(&addresses);
                    metrics.set_upstreams(&balancer);
                }
            }
            Err(error) => tracing::warn!(%error, "EndpointSlice watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn slice(name: &str, endpoints: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ports: Some(vec![
                EndpointPort {
                    name: Some("metrics".into()),
                    port: Some(9000),
                    ..EndpointPort::default()
                },
                EndpointPort {
                    name: Some("http".into()),
                    port: Some(8080),
                    ..EndpointPort::default()
                },
            ]),
            endpoints: endpoints
                .iter()
                .map(|(ip, ready, terminating)| Endpoint {
                    addresses: vec![(*ip).into()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        terminating: *terminating,
                        serving: None,
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        }
    }

    fn set(addrs: &[&str]) -> BTreeSet<String> {
        addrs.iter().map(|a| (*a).to_string()).collect()
    }

    #[test]
    fn ready_endpoints_are_added_and_terminating_ones_drained_at_once() {
        let mut s = SliceState::new("http");
        assert_eq!(s.apply(Event::Init), None);
        assert_eq!(
            s.apply(Event::InitApply(slice(
                "a",
                &[("10.0.0.1", Some(true), None)]
            ))),
            None,
            "nothing is published before the initial list completes"
        );
        assert_eq!(s.apply(Event::InitDone), Some(set(&["10.0.0.1:8080"])));
        // A new pod that is not ready yet is not used; once ready it is.
        let not_ready = slice(
            "a",
            &[
                ("10.0.0.1", Some(true), None),
                ("10.0.0.2", Some(false), None),
            ],
        );
        assert_eq!(s.apply(Event::Apply(not_ready)), None);
        let ready = slice(
            "a",
            &[("10.0.0.1", Some(true), None), ("10.0.0.2", None, None)],
        );
        assert_eq!(
            s.apply(Event::Apply(ready)),
            Some(set(&["10.0.0.1:8080", "10.0.0.2:8080"]))
        );
        // Scale-down: the pod is terminating (still serving its in-flight requests).
        let draining = slice(
            "a",
            &[
                ("10.0.0.1", Some(false), Some(true)),
                ("10.0.0.2", Some(true), None),
            ],
        );
        assert_eq!(
            s.apply(Event::Apply(draining)),
            Some(set(&["10.0.0.2:8080"]))
        );
    }

    #[test]
    fn slices_are_unioned_and_deleted_slices_removed() {
        let mut s = SliceState::new("http");
        s.apply(Event::Apply(slice("a", &[("10.0.0.1", Some(true), None)])));
        s.apply(Event::Apply(slice("b", &[("10.0.0.2", Some(true), None)])));
        assert_eq!(s.addresses(), set(&["10.0.0.1:8080", "10.0.0.2:8080"]));
        assert_eq!(
            s.apply(Event::Delete(slice("a", &[]))),
            Some(set(&["10.0.0.2:8080"]))
        );
        // A relist that no longer contains "b" drops it.
        s.apply(Event::Init);
        s.apply(Event::InitApply(slice(
            "c",
            &[("10.0.0.3", Some(true), None)],
        )));
        assert_eq!(s.apply(Event::InitDone), Some(set(&["10.0.0.3:8080"])));
    }

    #[test]
    fn port_is_taken_by_name_then_first_and_ipv6_is_bracketed() {
        let mut s = SliceState::new("grpc");
        let mut v6 = slice("a", &[("fd00::1", Some(true), None)]);
        v6.address_type = "IPv6".into();
        assert_eq!(s.apply(Event::Apply(v6)), Some(set(&["[fd00::1]:9000"])));
    }
}
