use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::api::error::ApiError;
use crate::provider::DescribedObject;
use crate::registry::{Discovered, MetricKey};
use crate::rules::Rules;

/// Compares with `tests/golden/<name>.json`; `UPDATE_GOLDEN=1` rewrites the file (review the
/// diff against shared/CUSTOM-METRICS-API.md before committing).
pub(crate) fn assert_golden(name: &str, actual: &serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(actual).expect("serialises") + "\n";
        std::fs::write(&path, text).expect("golden file written");
    }
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("golden file is JSON");
    assert_eq!(actual, &expected, "{name} differs from {}", path.display());
}

fn values() -> Vec<MetricValue> {
    let pod = |name: &str, milli: i64| MetricValue {
        object: DescribedObject {
            kind: "Pod".into(),
            api_version: "v1".into(),
            namespace: Some("imageclassifier".into()),
            name: name.into(),
        },
        timestamp: 1_764_331_200,
        window: Some(Duration::from_secs(30)),
        value: Quantity::from_milli(milli),
    };
    vec![
        pod("inference-7d9f8-abcde", 1500),
        pod("inference-7d9f8-fghij", 3000),
    ]
}

#[test]
fn v1beta2_metric_value_list() {
    let json = metric_value_list(
        ApiVersion::V1beta2,
        "inference_requests_per_second",
        &Selector::default(),
        values(),
    );
    assert_golden("v1beta2-pods", &json);
}

#[test]
fn v1beta1_metric_value_list() {
    let selector: Selector = "code=200,method in (POST),!canary".parse().expect("valid");
    let json = metric_value_list(
        ApiVersion::V1beta1,
        "inference_requests_per_second",
        &selector,
        values(),
    );
    assert_golden("v1beta1-pods-with-selector", &json);
}

#[test]
fn object_metric_on_a_grouped_kind() {
    let value = MetricValue {
        object: DescribedObject {
            kind: "Deployment".into(),
            api_version: "apps/v1".into(),
            namespace: Some("imageclassifier".into()),
            name: "inference".into(),
        },
        timestamp: 1_764_331_200,
        window: None,
        value: Quantity::from_milli(42_000),
    };
    let json = metric_value_list(
        ApiVersion::V1beta2,
        "queue_depth",
        &Selector::default(),
        vec![value],
    );
    assert_golden("v1beta2-deployment", &json);
}

pub(crate) fn snapshot(metrics: &[(&str, &str, bool)]) -> Snapshot {
    let rules = Rules::parse(include_str!("../../../rules.yaml")).expect("default rules");
    let metrics: BTreeMap<MetricKey, Discovered> = metrics
        .iter()
        .map(|(resource, metric, namespaced)| {
            (
                MetricKey {
                    resource: resource.parse().expect("infallible"),
                    metric: (*metric).into(),
                },
                Discovered {
                    rule_id: "rules[0]".into(),
                    series: "inference_requests_total".into(),
                    resource_label: "pod".into(),
                    namespace_label: namespaced.then(|| "namespace".into()),
                },
            )
        })
        .collect();
    Snapshot {
        rules: Arc::new(rules),
        metrics,
    }
}

#[test]
fn discovery_lists_each_metric_with_a_consistent_scope() {
    let snapshot = snapshot(&[
        ("pods", "inference_requests_per_second", true),
        ("namespaces", "inference_requests_per_second", false),
        ("services", "dispatcher_requests_per_second", true),
        // A pods series without a namespace label must not make `pods` cluster-scoped.
        ("pods", "odd_metric", false),
    ]);
    let json =
        serde_json::to_value(resource_list(ApiVersion::V1beta2, &snapshot)).expect("serialises");
    assert_golden("v1beta2-discovery", &json);
}

#[test]
fn discovery_is_never_empty() {
    let json = serde_json::to_value(resource_list(ApiVersion::V1beta1, &snapshot(&[])))
        .expect("serialises");
    assert_golden("v1beta1-discovery-empty", &json);
}

#[test]
fn group_documents() {
    assert_golden(
        "apis",
        &serde_json::to_value(api_group_list()).expect("serialises"),
    );
    assert_golden(
        "api-group",
        &serde_json::to_value(api_group()).expect("serialises"),
    );
}

#[test]
fn status_errors() {
    let error = ApiError::NotFound(
        "the server could not find the metric inference_requests_per_second for pods".into(),
    );
    assert_golden(
        "status-not-found",
        &serde_json::to_value(error.status()).expect("serialises"),
    );
}
