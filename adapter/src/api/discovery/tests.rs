use super::*;
use crate::api::types::tests::{assert_golden, snapshot};

const V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
const V2BETA1: &str = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";
const PROTOBUF_V2: &str =
    "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

#[test]
fn plain_clients_get_the_legacy_list() {
    for accept in [
        None,
        Some(""),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/json, */*"),
        Some("*/*"),
        Some("application/*"),
    ] {
        assert_eq!(negotiate(accept), Some(Format::Legacy), "{accept:?}");
    }
}

#[test]
fn the_aggregator_of_each_release_gets_the_version_it_asks_for_first() {
    // 1.30 and later: v2 first, v2beta1 and then the legacy list as fallbacks.
    let current = format!("{V2},{V2BETA1},application/json");
    assert_eq!(
        negotiate(Some(&current)),
        Some(Format::Aggregated(AggregatedVersion::V2))
    );
    // 1.28: v2beta1 only, then legacy.
    let older = format!("{V2BETA1},application/json");
    assert_eq!(
        negotiate(Some(&older)),
        Some(Format::Aggregated(AggregatedVersion::V2beta1))
    );
    // kubectl puts protobuf first; we serve JSON, so its JSON alternative is taken.
    let kubectl = format!("{PROTOBUF_V2},{V2},application/json");
    assert_eq!(
        negotiate(Some(&kubectl)),
        Some(Format::Aggregated(AggregatedVersion::V2))
    );
}

#[test]
fn parameters_are_read_whatever_their_spacing_order_and_quality() {
    let spaced = "application/json; as=APIGroupDiscoveryList; v=v2; g=apidiscovery.k8s.io";
    assert_eq!(
        negotiate(Some(spaced)),
        Some(Format::Aggregated(AggregatedVersion::V2))
    );
    let weighted = format!("application/json;q=0.5, {V2BETA1};q=0.9");
    assert_eq!(
        negotiate(Some(&weighted)),
        Some(Format::Aggregated(AggregatedVersion::V2beta1))
    );
    let refused = format!("{V2};q=0, application/json");
    assert_eq!(negotiate(Some(&refused)), Some(Format::Legacy));
    // A specific type wins over a wildcard of the same quality, wherever it stands.
    let wildcard_first = format!("*/*, {V2}");
    assert_eq!(
        negotiate(Some(&wildcard_first)),
        Some(Format::Aggregated(AggregatedVersion::V2))
    );
    // A quality above 1 counts as 1; a parameter without a value is ignored.
    let inflated = format!("application/json;q=7, {V2};flag");
    assert_eq!(negotiate(Some(&inflated)), Some(Format::Legacy));
}

#[test]
fn what_we_cannot_serve_is_not_acceptable() {
    for accept in [
        "application/vnd.kubernetes.protobuf",
        PROTOBUF_V2,
        "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIResourceList",
        "application/json;g=example.com;v=v2;as=APIGroupDiscoveryList",
        "application/yaml",
    ] {
        assert_eq!(negotiate(Some(accept)), None, "{accept}");
    }
    assert_eq!(
        AggregatedVersion::V2.content_type(),
        V2,
        "the Content-Type echoes the media type asked for"
    );
}

#[test]
fn the_aggregated_document_nests_metrics_under_their_objects() {
    let snapshot = snapshot(&[
        ("pods", "inference_requests_per_second", true),
        ("namespaces", "inference_requests_per_second", false),
        ("services", "dispatcher_requests_per_second", true),
        ("pods", "odd_metric", false),
    ]);
    let json = serde_json::to_value(group_discovery_list(AggregatedVersion::V2, &snapshot))
        .expect("serialises");
    assert_golden("apis-aggregated-v2", &json);
    let beta = serde_json::to_value(group_discovery_list(AggregatedVersion::V2beta1, &snapshot))
        .expect("serialises");
    assert_eq!(beta["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    assert_eq!(
        beta["items"], json["items"],
        "the versions differ only in name"
    );
}

#[test]
fn before_any_discovery_the_placeholder_is_listed_and_current() {
    let json = serde_json::to_value(group_discovery_list(AggregatedVersion::V2, &snapshot(&[])))
        .expect("serialises");
    for version in json["items"][0]["versions"].as_array().expect("versions") {
        assert_eq!(version["freshness"], "Current");
        let subresources = &version["resources"][0]["subresources"][0];
        assert_eq!(subresources["subresource"], types::PLACEHOLDER_METRIC);
    }
}
