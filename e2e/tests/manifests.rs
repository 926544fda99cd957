//! `manifests/` rendered by real `kubectl kustomize`, every object parsed into its k8s-openapi
//! type, and cross-checked against the binaries (flags, ports, probe paths), the adapter's
//! rules, Prometheus (`promtool check config`) and the pod security baseline.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use clap::Parser;
use common::render;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::Value;

/// The rendered system, typed.
#[derive(Default)]
struct System {
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    config_maps: Vec<ConfigMap>,
    hpas: Vec<HorizontalPodAutoscaler>,
    api_services: Vec<APIService>,
    other: usize,
}

fn typed<T: serde::de::DeserializeOwned>(object: &Value) -> T {
    serde_json::from_value(object.clone()).unwrap_or_else(|e| {
        panic!(
            "{} {} does not parse: {e}",
            object["kind"], object["metadata"]["name"]
        )
    })
}

fn system() -> System {
    let mut system = System::default();
    for object in render("manifests") {
        match object["kind"].as_str().expect("kind") {
            "Deployment" => system.deployments.push(typed(&object)),
            "Service" => system.services.push(typed(&object)),
            "ConfigMap" => system.config_maps.push(typed(&object)),
            "HorizontalPodAutoscaler" => system.hpas.push(typed(&object)),
            "Namespace" => drop(typed::<Namespace>(&object)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&object)),
            "Role" => drop(typed::<Role>(&object)),
            "RoleBinding" => drop(typed::<RoleBinding>(&object)),
            "ClusterRole" => drop(typed::<ClusterRole>(&object)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&object)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(&object)),
            "APIService" => system.api_services.push(typed(&object)),
            other => panic!("unexpected kind {other} in manifests/"),
        }
        system.other += 1;
    }
    system
}

fn name<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    object: &T,
) -> String {
    object.metadata().name.clone().unwrap_or_default()
}

fn pod(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn container(deployment: &Deployment) -> &Container {
    &pod(deployment).containers[0]
}

fn deployment<'a>(system: &'a System, wanted: &str) -> &'a Deployment {
    system
        .deployments
        .iter()
        .find(|d| name(*d) == wanted)
        .unwrap_or_else(|| panic!("Deployment {wanted} missing"))
}

/// The container's listen port, taken from its own flags as the binary parses them.
fn listen_port(component: &str, args: &[String]) -> u16 {
    let argv = |bin: &str| std::iter::once(bin.to_owned()).chain(args.iter().cloned());
    match component {
        "inference" => match inference::config::Cli::try_parse_from(argv("inference")) {
            Ok(cli) => match cli.command {
                inference::config::Command::Serve(serve) => serve.listen.port(),
                other => panic!("inference must run `serve`, not {other:?}"),
            },
            Err(e) => panic!("inference args do not parse: {e}"),
        },
        "dispatcher" => dispatcher::config::Config::try_parse_from(argv("dispatcher"))
            .unwrap_or_else(|e| panic!("dispatcher args do not parse: {e}"))
            .listen
            .port(),
        "metrics-adapter" => adapter::config::Config::try_parse_from(argv("metrics-adapter"))
            .unwrap_or_else(|e| panic!("adapter args do not parse: {e}"))
            .listen
            .port(),
        other => panic!("no flags check for {other}"),
    }
}

#[test]
fn our_deployments_run_the_binaries_with_flags_they_accept_on_the_ports_they_declare() {
    let system = system();
    // Ports and probe paths from shared/DESIGN.md.
    let expected = [
        ("inference", 8080, "/readyz", "/healthz"),
        ("dispatcher", 8080, "/readyz", "/healthz"),
        ("metrics-adapter", 6443, "/readyz", "/livez"),
    ];
    for (component, port, readiness, liveness) in expected {
        let deployment = deployment(&system, component);
        let container = container(deployment);
        assert_eq!(
            container.image.as_deref(),
            Some(format!("imageclassifier/{component}:dev").as_str()),
            "image names follow DESIGN.md"
        );
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(listen_port(component, &args), port, "{component} --listen");
        let declared = container.ports.as_ref().expect("ports")[0].container_port;
        assert_eq!(declared, i32::from(port), "{component} containerPort");
        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(
            probe_path(&container.readiness_probe).as_deref(),
            Some(readiness),
            "{component}"
        );
        assert_eq!(
            probe_path(&container.liveness_probe).as_deref(),
            Some(liveness),
            "{component}"
        );
        assert!(
            container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some(),
            "{component} has resource requests"
        );
    }
}

#[test]
fn services_select_pods_and_name_ports_that_exist() {
    let system = system();
    for service in &system.services {
        let spec = service.spec.as_ref().expect("spec");
        let selector = spec.selector.clone().expect("selector");
        let matching: Vec<&Deployment> = system
            .deployments
            .iter()
            .filter(|d| {
                let labels = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "Service {} selects one Deployment",
            name(service)
        );
        let ports = container(matching[0]).ports.clone().unwrap_or_default();
        for port in spec.ports.as_ref().expect("ports") {
            match port.target_port.as_ref() {
                Some(IntOrString::String(named)) => assert!(
                    ports.iter().any(|p| p.name.as_deref() == Some(named)),
                    "Service {} targets port {named}",
                    name(service)
                ),
                other => panic!(
                    "Service {} should target a named port, not {other:?}",
                    name(service)
                ),
            }
        }
    }
}

#[test]
fn pods_follow_the_restricted_security_baseline_and_scrape_annotations_match_ports() {
    let system = system();
    for deployment in &system.deployments {
        let id = name(deployment);
        let pod = pod(deployment);
        let security = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(security.run_as_non_root, Some(true), "{id}");
        assert_eq!(
            security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault"),
            "{id}"
        );
        for container in &pod.containers {
            let context = container
                .security_context
                .as_ref()
                .expect("container securityContext");
            assert_eq!(context.allow_privilege_escalation, Some(false), "{id}");
            assert_eq!(context.read_only_root_filesystem, Some(true), "{id}");
            let dropped = context
                .capabilities
                .as_ref()
                .and_then(|c| c.drop.clone())
                .unwrap_or_default();
            assert_eq!(dropped, ["ALL"], "{id}");
        }
        let annotations: BTreeMap<String, String> = deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        if annotations.get("prometheus.io/scrape").map(String::as_str) == Some("true") {
            let port: i32 = annotations["prometheus.io/port"]
                .parse()
                .expect("numeric port");
            let ports = container(deployment).ports.clone().unwrap_or_default();
            assert!(
                ports.iter().any(|p| p.container_port == port),
                "{id} scrape port"
            );
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{id}");
        }
    }
}

#[test]
fn the_hpas_scale_inference_on_metrics_the_adapter_serves() {
    let system = system();
    let rules = adapter::rules::Rules::parse(include_str!("../../manifests/adapter/rules.yaml"))
        .expect("default rules");
    let served: Vec<String> = rules
        .iter()
        .filter_map(|rule| rule.metric_name(rule.series_query.metric.as_deref()?))
        .collect();
    let example: HorizontalPodAutoscaler = serde_norway::from_str(include_str!(
        "../../manifests/hpa/examples/in-flight-hpa.yaml"
    ))
    .expect("example HPA parses");
    assert_eq!(system.hpas.len(), 1);
    for hpa in system.hpas.iter().chain([&example]) {
        let spec = hpa.spec.as_ref().expect("spec");
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "inference");
        deployment(&system, "inference");
        assert_eq!(spec.min_replicas, Some(1));
        assert_eq!(spec.max_replicas, 10);
        assert!(spec.behavior.is_some(), "explicit behavior");
        for metric in spec.metrics.as_ref().expect("metrics") {
            let pods = metric.pods.as_ref().expect("a Pods metric");
            assert!(
                served.contains(&pods.metric.name),
                "{} is not served: {served:?}",
                pods.metric.name
            );
            assert_eq!(pods.target.type_, "AverageValue");
        }
    }
}

#[test]
fn the_prometheus_config_is_valid_and_labels_series_as_the_rules_expect() {
    let system = system();
    let prometheus = deployment(&system, "prometheus");
    // The name kustomize gave the generated ConfigMap, as the Deployment mounts it.
    let mounted = pod(prometheus)
        .volumes
        .as_ref()
        .and_then(|v| v.iter().find_map(|v| v.config_map.as_ref()))
        .map(|c| c.name.clone())
        .expect("a ConfigMap volume");
    let config = system
        .config_maps
        .iter()
        .find(|c| name(*c) == mounted)
        .unwrap_or_else(|| panic!("ConfigMap {mounted} is mounted but not defined"));
    let text = config
        .data
        .as_ref()
        .and_then(|d| d.get("prometheus.yml"))
        .expect("prometheus.yml");
    // Debian's Prometheus is built without Kubernetes service discovery, so promtool checks a
    // copy whose pod discovery is swapped for a static target; everything else (relabelling
    // regexes, intervals) is checked as written.
    let mut parsed: serde_norway::Value = serde_norway::from_str(text).expect("YAML");
    for job in parsed["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs")
    {
        let mapping = job.as_mapping_mut().expect("job");
        let sd = mapping
            .remove("kubernetes_sd_configs")
            .expect("pods are found by Kubernetes service discovery");
        assert_eq!(sd[0]["role"].as_str(), Some("pod"));
        assert_eq!(
            sd[0]["namespaces"]["names"][0].as_str(),
            Some("imageclassifier")
        );
        mapping.insert(
            "static_configs".into(),
            serde_norway::from_str("[{targets: ['127.0.0.1:8080']}]").expect("YAML"),
        );
    }
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, serde_norway::to_string(&parsed).expect("YAML")).expect("write");
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&path)
        .output()
        .expect("promtool (Debian's prometheus package) is installed");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for label in ["namespace", "pod", "app"] {
        assert!(
            text.contains(&format!("target_label: {label}")),
            "relabels to {label}"
        );
    }
    assert!(text.contains("scrape_interval: 5s"));
    let args = container(prometheus).args.clone().unwrap_or_default();
    assert!(
        args.iter()
            .any(|a| a == "--web.listen-address=0.0.0.0:9090")
    );
    let adapter_args = container(deployment(&system, "metrics-adapter"))
        .args
        .clone()
        .unwrap_or_default();
    assert!(
        adapter_args
            .iter()
            .any(|a| a == "--prometheus-url=http://prometheus:9090"),
        "adapter reaches the Service"
    );
}

#[test]
fn everything_renders_and_parses() {
    let system = system();
    assert!(system.other >= 25, "{} objects", system.other);
    assert_eq!(system.deployments.len(), 4);
}

/// Metric names shared/DESIGN.md fixes, plus Prometheus's own `up`.
const DESIGN_METRICS: &[&str] = &[
    "inference_requests_total",
    "inference_request_duration_seconds",
    "inference_queue_duration_seconds",
    "inference_batch_size",
    "inference_in_flight_requests",
    "inference_model_info",
    "dispatcher_requests_total",
    "dispatcher_request_duration_seconds",
    "dispatcher_in_flight_requests",
    "dispatcher_upstream_requests_total",
    "dispatcher_upstream_in_flight",
    "dispatcher_upstreams",
    "dispatcher_retries_total",
    "dispatcher_rejected_total",
    "metrics_adapter_requests_total",
    "metrics_adapter_request_duration_seconds",
    "metrics_adapter_prometheus_query_duration_seconds",
    "metrics_adapter_prometheus_errors_total",
    "metrics_adapter_discovered_metrics",
    "up",
];

#[test]
fn the_dashboard_queries_only_metrics_the_components_export() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../../manifests/grafana/dashboard.json"))
            .expect("dashboard JSON");
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            // A metric name is an identifier directly followed by a `{` selector.
            for (at, _) in expr.match_indices('{') {
                let name: String = expr[..at]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if name.is_empty() || expr[..at].ends_with("by (") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    DESIGN_METRICS.contains(&base),
                    "{name} in {expr:?} is not a DESIGN.md metric"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} metric references found");
}

#[test]
fn images_in_the_manifests_are_the_ones_make_images_builds() {
    let makefile = include_str!("../../Makefile");
    let listed: Vec<&str> = makefile
        .lines()
        .find_map(|l| l.strip_prefix("IMAGES := "))
        .expect("IMAGES in the Makefile")
        .split_whitespace()
        .collect();
    let dockerfile = include_str!("../../Dockerfile");
    let targets: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM runtime AS "))
        .collect();
    assert_eq!(listed, targets, "a Dockerfile target per image, same order");
    for deployment in &system().deployments {
        let image = container(deployment).image.clone().unwrap_or_default();
        if let Some(ours) = image.strip_prefix("imageclassifier/") {
            let component = ours.strip_suffix(":dev").expect("tag dev");
            assert!(
                listed.contains(&component),
                "{image} is not built by make images"
            );
        }
    }
}

/// The objects and make targets the e2e scripts name (`deploy/NAME`, `deployment/NAME`,
/// `svc/NAME PORT`, `apiservice/NAME`, `hpa NAME`, `make TARGET`), so that renaming one in the
/// manifests or the Makefile fails here rather than minutes into a cluster run.
#[test]
fn the_e2e_scripts_name_objects_and_targets_that_exist() {
    let system = system();
    let makefile = include_str!("../../Makefile");
    let has_target = |target: &str| {
        makefile
            .lines()
            .any(|l| l.strip_prefix(target).is_some_and(|r| r.starts_with(':')))
    };
    let mut checked = 0;
    for (script, text) in [
        ("e2e.sh", include_str!("../e2e.sh")),
        ("loadtest.sh", include_str!("../loadtest.sh")),
    ] {
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let words: Vec<&str> = line
                .split(|c: char| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | '(' | ')' | ';' | '{' | '}')
                })
                .filter(|w| !w.is_empty())
                .collect();
            for (i, word) in words.iter().enumerate() {
                let next = words.get(i + 1).copied().unwrap_or_default();
                let deployment_name = word
                    .strip_prefix("deploy/")
                    .or_else(|| word.split("deployment/").nth(1));
                if let Some(wanted) = deployment_name.filter(|n| !n.starts_with('$')) {
                    deployment(&system, wanted);
                } else if let Some(wanted) = word.strip_prefix("svc/") {
                    let port: i32 = next
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("{script}: svc/{wanted} without a port"));
                    let service = system
                        .services
                        .iter()
                        .find(|s| name(*s) == wanted)
                        .unwrap_or_else(|| panic!("{script}: Service {wanted} missing"));
                    let ports = service.spec.as_ref().and_then(|s| s.ports.as_ref());
                    assert!(
                        ports.is_some_and(|p| p.iter().any(|p| p.port == port)),
                        "{script}: Service {wanted} has no port {port}"
                    );
                } else if let Some(wanted) = word.strip_prefix("apiservice/") {
                    assert!(
                        system.api_services.iter().any(|a| name(a) == wanted),
                        "{script}: APIService {wanted} missing"
                    );
                } else if *word == "hpa" && !next.starts_with('-') {
                    assert!(
                        system.hpas.iter().any(|h| name(h) == next),
                        "{script}: HPA {next} missing"
                    );
                } else if *word == "make" && !next.is_empty() && !next.starts_with('$') {
                    assert!(has_target(next), "{script}: no make target {next}");
                } else {
                    continue;
                }
                checked += 1;
            }
        }
    }
    // The rollout loop names its Deployments in a list.
    let rollouts = include_str!("../e2e.sh")
        .lines()
        .find_map(|l| l.strip_prefix("for deployment in "))
        .and_then(|l| l.strip_suffix("; do"))
        .expect("the rollout loop");
    for wanted in rollouts.split_whitespace() {
        deployment(&system, wanted);
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} references checked");
}
