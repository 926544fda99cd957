//! The adapter's Kubernetes objects, rendered by real `kubectl kustomize` and cross-checked
//! against the binary's flags, ports, paths and the aggregation layer's expectations.

use std::collections::BTreeMap;
use std::process::Command;

use adapter::config::Config;
use adapter::rules::Rules;
use clap::Parser;
use serde::Deserialize;
use serde_json::Value;

fn objects() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/adapter");
    let output = Command::new("kubectl")
        .args(["kustomize", dir])
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("YAML object"))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} missing"))
}

#[test]
fn apiservices_point_at_the_service_and_prefer_v1beta2() {
    let objects = objects();
    let v2 = find(&objects, "APIService", "v1beta2.custom.metrics.k8s.io");
    let v1 = find(&objects, "APIService", "v1beta1.custom.metrics.k8s.io");
    assert_eq!(v2["spec"]["versionPriority"], 200);
    assert_eq!(v1["spec"]["versionPriority"], 100);
    let service = find(&objects, "Service", "metrics-adapter");
    for api_service in [v1, v2] {
        assert_eq!(api_service["spec"]["group"], "custom.metrics.k8s.io");
        assert_eq!(api_service["spec"]["service"]["name"], "metrics-adapter");
        assert_eq!(
            api_service["spec"]["service"]["namespace"],
            service["metadata"]["namespace"]
        );
        assert_eq!(api_service["spec"]["service"]["port"], 443);
        assert_eq!(api_service["spec"]["groupPriorityMinimum"], 100);
    }
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "https");
}

#[test]
fn the_deployment_runs_the_binary_as_designed() {
    let objects = objects();
    let deployment = find(&objects, "Deployment", "metrics-adapter");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string"))
        .collect();
    let config =
        Config::try_parse_from(std::iter::once("metrics-adapter").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("manifest args are not valid flags: {e}"));
    assert_eq!(config.listen.port(), 6443);
    let port = &container["ports"][0];
    assert_eq!(port["name"], "https");
    assert_eq!(port["containerPort"], 6443);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "https", "{probe}");
    }
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(deployment["spec"]["replicas"].as_u64().expect("replicas") >= 2);

    // The rules file the flag names is the mounted ConfigMap, and it is the default rules.
    let mount = &container["volumeMounts"][0];
    assert_eq!(
        config.config.parent().expect("dir").to_str(),
        mount["mountPath"].as_str()
    );
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("mounted volume");
    let config_map = find(
        &objects,
        "ConfigMap",
        volume["configMap"]["name"].as_str().expect("name"),
    );
    let file = config
        .config
        .file_name()
        .expect("file")
        .to_str()
        .expect("UTF-8");
    let rules = config_map["data"][file]
        .as_str()
        .expect("rules in the ConfigMap");
    assert_eq!(rules, include_str!("../rules.yaml"));
    Rules::parse(rules).expect("the shipped rules compile");
}

#[test]
fn rbac_is_what_an_aggregated_server_and_the_hpa_need() {
    let objects = objects();
    let deployment = find(&objects, "Deployment", "metrics-adapter");
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"].clone();
    let namespace = deployment["metadata"]["namespace"].clone();
    let adapter_subject = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .expect("subjects")
            .iter()
            .any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == namespace
            })
    };
    let delegator = find(
        &objects,
        "ClusterRoleBinding",
        "metrics-adapter:system:auth-delegator",
    );
    assert_eq!(delegator["roleRef"]["name"], "system:auth-delegator");
    assert!(adapter_subject(delegator));
    let reader = find(&objects, "RoleBinding", "metrics-adapter-auth-reader");
    assert_eq!(
        reader["metadata"]["namespace"], "kube-system",
        "must be where the ConfigMap is"
    );
    assert_eq!(
        reader["roleRef"]["name"],
        "extension-apiserver-authentication-reader"
    );
    assert!(adapter_subject(reader));
    let lister = find(
        &objects,
        "ClusterRoleBinding",
        "metrics-adapter-resource-reader",
    );
    assert!(adapter_subject(lister));
    let role = find(&objects, "ClusterRole", "metrics-adapter-resource-reader");
    let verbs: Vec<&Value> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| r["verbs"].as_array().expect("verbs"))
        .collect();
    assert!(
        verbs
            .iter()
            .all(|v| ["get", "list", "watch"].contains(&v.as_str().expect("verb"))),
        "read-only"
    );
    let hpa = find(
        &objects,
        "ClusterRoleBinding",
        "hpa-controller-custom-metrics",
    );
    assert_eq!(hpa["subjects"][0]["name"], "horizontal-pod-autoscaler");
    assert_eq!(hpa["subjects"][0]["namespace"], "kube-system");
    let metrics_reader = find(
        &objects,
        "ClusterRole",
        hpa["roleRef"]["name"].as_str().expect("role"),
    );
    assert_eq!(
        metrics_reader["rules"][0]["apiGroups"][0],
        "custom.metrics.k8s.io"
    );
}

#[test]
fn every_object_carries_the_recommended_labels() {
    let mut seen = BTreeMap::new();
    for object in objects() {
        let labels = &object["metadata"]["labels"];
        let id = format!("{}/{}", object["kind"], object["metadata"]["name"]);
        assert_eq!(
            labels["app.kubernetes.io/part-of"], "imageclassifier",
            "{id}"
        );
        assert!(labels["app.kubernetes.io/name"].is_string(), "{id}");
        *seen
            .entry(object["kind"].as_str().expect("kind").to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("APIService"), Some(&2));
}
