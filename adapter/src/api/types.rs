//! The JSON the API writes: `MetricValueList` in both versions (field names differ), discovery
//! documents, and `Status` errors. Shapes follow k8s.io/metrics and apimachinery exactly; the
//! golden files in `tests/golden/` pin them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery, LabelSelector,
    LabelSelectorRequirement, ListMeta,
};
use serde::Serialize;

use super::paths::{ApiVersion, GROUP};
use crate::provider::MetricValue;
use crate::quantity::Quantity;
use crate::registry::Snapshot;
use crate::resources::GroupResource;
use crate::selector::{Operator, Selector};

/// A `MetricValueList` in either version.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueList<T> {
    kind: &'static str,
    api_version: String,
    metadata: ListMeta,
    items: Vec<T>,
}

/// A v1beta2 item.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1beta2 {
    described_object: ObjectReference,
    metric: MetricIdentifier,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    window_seconds: Option<i64>,
    value: Quantity,
}

/// v1beta2's `metric` field. `selector` has no `omitempty` upstream, so it is written as
/// `null` when absent.
#[derive(Debug, Serialize)]
pub struct MetricIdentifier {
    name: String,
    selector: Option<LabelSelector>,
}

/// A v1beta1 item.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValueV1beta1 {
    described_object: ObjectReference,
    metric_name: String,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<i64>,
    value: Quantity,
    selector: Option<LabelSelector>,
}

/// The list body for a version, as a JSON value ready to send.
pub fn metric_value_list(
    version: ApiVersion,
    metric: &str,
    metric_selector: &Selector,
    values: Vec<MetricValue>,
) -> serde_json::Value {
    let selector = label_selector(metric_selector);
    let common = |value: &MetricValue| {
        (
            ObjectReference {
                kind: Some(value.object.kind.clone()),
                namespace: value.object.namespace.clone(),
                name: Some(value.object.name.clone()),
                api_version: Some(value.object.api_version.clone()),
                ..ObjectReference::default()
            },
            timestamp(value.timestamp),
            value
                .window
                .map(|w| i64::try_from(w.as_secs()).unwrap_or(i64::MAX)),
        )
    };
    let json = match version {
        ApiVersion::V1beta2 => serde_json::to_value(MetricValueList {
            kind: "MetricValueList",
            api_version: version.group_version(),
            metadata: ListMeta::default(),
            items: values
                .iter()
                .map(|value| {
                    let (described_object, timestamp, window_seconds) = common(value);
                    MetricValueV1beta2 {
                        described_object,
                        metric: MetricIdentifier {
                            name: metric.to_owned(),
                            selector: selector.clone(),
                        },
                        timestamp,
                        window_seconds,
                        value: value.value,
                    }
                })
                .collect(),
        }),
        ApiVersion::V1beta1 => serde_json::to_value(MetricValueList {
            kind: "MetricValueList",
            api_version: version.group_version(),
            metadata: ListMeta::default(),
            items: values
                .iter()
                .map(|value| {
                    let (described_object, timestamp, window) = common(value);
                    MetricValueV1beta1 {
                        described_object,
                        metric_name: metric.to_owned(),
                        timestamp,
                        window,
                        value: value.value,
                        selector: selector.clone(),
                    }
                })
                .collect(),
        }),
    };
    json.expect("metric values serialise")
}

/// `metav1.Time`: RFC 3339, second precision, UTC.
fn timestamp(unix_seconds: i64) -> String {
    jiff::Timestamp::from_second(unix_seconds)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The metric selector echoed back, or `None` (written `null`) when the request had none.
fn label_selector(selector: &Selector) -> Option<LabelSelector> {
    if selector.is_empty() {
        return None;
    }
    let mut match_labels = BTreeMap::new();
    let mut expressions = Vec::new();
    let expression =
        |key: &str, operator: &str, values: Option<&BTreeSet<String>>| LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: values.map(|v| v.iter().cloned().collect()),
        };
    for requirement in selector.requirements() {
        let key = requirement.key.as_str();
        match &requirement.operator {
            Operator::Equals(value) => {
                match_labels.insert(key.to_owned(), value.clone());
            }
            Operator::NotEquals(value) => {
                expressions.push(expression(
                    key,
                    "NotIn",
                    Some(&BTreeSet::from([value.clone()])),
                ));
            }
            Operator::In(set) => expressions.push(expression(key, "In", Some(set))),
            Operator::NotIn(set) => expressions.push(expression(key, "NotIn", Some(set))),
            Operator::Exists => expressions.push(expression(key, "Exists", None)),
            Operator::DoesNotExist => expressions.push(expression(key, "DoesNotExist", None)),
            // Refused before a query is made; nothing to echo.
            Operator::GreaterThan(_) | Operator::LessThan(_) => {}
        }
    }
    Some(LabelSelector {
        match_labels: (!match_labels.is_empty()).then_some(match_labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    })
}

/// The name listed when nothing has been discovered yet: an empty list breaks every kubectl
/// command ("Got empty response for: custom.metrics.k8s.io/v1beta2"), so one documented
/// placeholder stands in. Asking for it gives a 404 that explains.
pub const PLACEHOLDER_METRIC: &str = "no_metrics_discovered_yet";

/// `GET /apis/custom.metrics.k8s.io/{version}`.
pub fn resource_list(version: ApiVersion, snapshot: &Snapshot) -> APIResourceList {
    // Every entry under one parent must share its scope, or the aggregator rejects the whole
    // group version ("Parent … and subresource … scope do not match").
    let mut scope: BTreeMap<&GroupResource, bool> = BTreeMap::new();
    for (key, discovered) in &snapshot.metrics {
        let namespaced = key.resource.namespaced().unwrap_or(discovered.namespaced());
        *scope.entry(&key.resource).or_insert(namespaced) |= namespaced;
    }
    let entry = |name: String, namespaced: bool| APIResource {
        name,
        singular_name: String::new(),
        namespaced,
        kind: "MetricValueList".into(),
        verbs: vec!["get".into()],
        ..APIResource::default()
    };
    let mut resources: Vec<APIResource> = snapshot
        .metrics
        .keys()
        .map(|key| {
            entry(
                format!("{}/{}", key.resource, key.metric),
                scope[&key.resource],
            )
        })
        .collect();
    if resources.is_empty() {
        resources.push(entry(format!("namespaces/{PLACEHOLDER_METRIC}"), false));
    }
    APIResourceList {
        group_version: version.group_version(),
        resources,
    }
}

/// `GET /apis/custom.metrics.k8s.io`.
pub fn api_group() -> APIGroup {
    let versions: Vec<GroupVersionForDiscovery> = ApiVersion::ALL
        .into_iter()
        .map(|v| GroupVersionForDiscovery {
            group_version: v.group_version(),
            version: v.as_str().into(),
        })
        .collect();
    APIGroup {
        name: GROUP.into(),
        preferred_version: versions.first().cloned(),
        versions,
        server_address_by_client_cidrs: None,
    }
}

/// `GET /apis`: a legacy `APIGroupList`, which makes the aggregator use the well-trodden
/// per-version discovery.
pub fn api_group_list() -> APIGroupList {
    APIGroupList {
        groups: vec![api_group()],
    }
}

#[cfg(test)]
pub(crate) mod tests;
