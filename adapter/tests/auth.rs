//! Authentication and authorization as the aggregator exercises them: a front-proxy client
//! certificate with `X-Remote-*` headers, bearer tokens (TokenReview) and SubjectAccessReview.
//! The API server is a stand-in (the only part that cannot run here), reached by the real
//! kube-rs client through a kubeconfig.

mod common;

use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::{Json, Router};
use common::{Adapter, get_json, write_kubeconfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::{Value, json};

const HPA: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    /// A client certificate and key, PEM, for `common_name`.
    fn client(&self, common_name: &str) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        cert.pem() + &key.serialize_pem()
    }
}

fn client_with(identity_pem: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().danger_accept_invalid_certs(true);
    if let Some(pem) = identity_pem {
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

/// Reviews seen by the stand-in API server.
type Seen = Arc<Mutex<Vec<Value>>>;

/// Paths kube-apiserver's default `system:discovery` role allows to `system:authenticated`.
fn discovery_path(path: &str) -> bool {
    ["/apis", "/openapi", "/version"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// A stand-in API server: TokenReview knows one token (alice); SubjectAccessReview allows the
/// HPA and alice everything, and discovery paths to `system:authenticated` as the default RBAC
/// binding of `system:discovery` does; nobody else anything.
async fn fake_api_server(front_proxy_ca_pem: String) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let sar_seen = seen.clone();
    // What kube-apiserver publishes for extension API servers (list values are JSON arrays).
    let config_map = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "requestheader-client-ca-file": front_proxy_ca_pem,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]"
        }
    });
    let app = Router::new()
        .route(
            "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication",
            axum::routing::get(move || {
                let config_map = config_map.clone();
                async move { Json(config_map) }
            }),
        )
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(|Json(review): Json<Value>| async move {
                let good = review["spec"]["token"] == "good-token";
                let mut answer = review.clone();
                answer["status"] = if good {
                    json!({"authenticated": true, "user": {"username": "alice", "groups": ["devs", "system:authenticated"]}})
                } else {
                    json!({"authenticated": false})
                };
                Json(answer)
            }),
        )
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(move |Json(review): Json<Value>| {
                let seen = sar_seen.clone();
                async move {
                    seen.lock().expect("lock").push(review["spec"].clone());
                    let spec = &review["spec"];
                    let user = spec["user"].as_str().unwrap_or_default();
                    let authenticated = spec["groups"]
                        .as_array()
                        .is_some_and(|g| g.iter().any(|g| g == "system:authenticated"));
                    let discovery = spec["nonResourceAttributes"]["path"]
                        .as_str()
                        .is_some_and(discovery_path);
                    let mut answer = review.clone();
                    answer["status"] = json!({
                        "allowed": user == HPA || user == "alice" || (authenticated && discovery)
                    });
                    Json(answer)
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_header_settings_come_from_the_cluster_configmap() {
    let dir = tempfile::tempdir().expect("dir");
    let front_proxy_ca = Ca::new("front-proxy-ca");
    let (api_url, _) = fake_api_server(front_proxy_ca.issuer.pem()).await;
    let kubeconfig = write_kubeconfig(dir.path(), &api_url);
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, include_str!("../rules.yaml")).expect("rules");
    let adapter = Adapter::start(
        &[
            "--config",
            rules.to_str().expect("utf-8"),
            "--prometheus-url",
            "http://127.0.0.1:1",
            "--objects-from",
            "prometheus",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8"))],
        dir.path(),
    )
    .await;
    let discovery = adapter.url("/apis/custom.metrics.k8s.io/v1beta2");
    let proxy = client_with(Some(&front_proxy_ca.client("front-proxy-client")));
    let response = proxy
        .get(&discovery)
        .header("X-Remote-User", HPA)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{}", adapter.logs());
    let stranger = client_with(Some(&front_proxy_ca.client("someone-else")));
    let response = stranger
        .get(&discovery)
        .header("X-Remote-User", HPA)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        401,
        "allowed names come from the ConfigMap too"
    );
    assert!(
        adapter.logs().contains("front-proxy-client"),
        "the settings are logged at start"
    );
}

/// The adapter with request-header authentication from `--requestheader-client-ca-file` (the
/// front proxy's CA) and SubjectAccessReviews against the stand-in API server, whose ConfigMap
/// names `configmap_ca` instead.
async fn guarded_adapter(
    dir: &std::path::Path,
    front_proxy_ca: &Ca,
    configmap_ca: &Ca,
) -> (Adapter, Seen) {
    let (api_url, seen) = fake_api_server(configmap_ca.issuer.pem()).await;
    let kubeconfig = write_kubeconfig(dir, &api_url);
    let ca_file = dir.join("requestheader-ca.pem");
    std::fs::write(&ca_file, front_proxy_ca.issuer.pem()).expect("CA file");
    let rules = dir.join("rules.yaml");
    std::fs::write(&rules, include_str!("../rules.yaml")).expect("rules");

    let adapter = Adapter::start(
        &[
            "--config",
            rules.to_str().expect("utf-8"),
            "--prometheus-url",
            "http://127.0.0.1:1",
            "--objects-from",
            "prometheus",
            "--authn",
            "requestheader",
            "--authz",
            "kubernetes",
            "--requestheader-client-ca-file",
            ca_file.to_str().expect("utf-8"),
            "--requestheader-allowed-names",
            "front-proxy-client",
        ],
        &[("KUBECONFIG", kubeconfig.to_str().expect("utf-8"))],
        dir,
    )
    .await;
    (adapter, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_front_proxy_or_a_reviewed_token_gets_in() {
    let dir = tempfile::tempdir().expect("dir");
    let front_proxy_ca = Ca::new("front-proxy-ca");
    // The ConfigMap names another CA: the flag must win.
    let rogue_ca = Ca::new("rogue-ca");
    let (adapter, seen) = guarded_adapter(dir.path(), &front_proxy_ca, &rogue_ca).await;
    let discovery = adapter.url("/apis/custom.metrics.k8s.io/v1beta2");
    let metric = adapter.url("/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/inference_requests_per_second");

    // Health endpoints are open.
    let anonymous = client_with(None);
    for path in ["/healthz", "/livez"] {
        let response = anonymous
            .get(adapter.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{path}");
    }

    // Refused: nothing, a forged header, a certificate from another CA, a name not allowed,
    // a token the API server rejects.
    let proxy = front_proxy_ca.client("front-proxy-client");
    let rogue = rogue_ca.client("front-proxy-client");
    let stranger = front_proxy_ca.client("someone-else");
    let refused: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no credentials", anonymous.get(&discovery)),
        (
            "forged header",
            anonymous.get(&discovery).header("X-Remote-User", HPA),
        ),
        (
            "rogue CA",
            client_with(Some(&rogue))
                .get(&discovery)
                .header("X-Remote-User", HPA),
        ),
        (
            "CN not allowed",
            client_with(Some(&stranger))
                .get(&discovery)
                .header("X-Remote-User", HPA),
        ),
        (
            "bad token",
            anonymous.get(&discovery).bearer_auth("bad-token"),
        ),
        (
            "proxy without user",
            client_with(Some(&proxy)).get(&discovery),
        ),
    ];
    for (case, request) in refused {
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 401, "{case}");
        let body: Value = response.json().await.expect("Status JSON");
        assert_eq!(body["kind"], "Status", "{case}");
        assert_eq!(body["reason"], "Unauthorized", "{case}");
    }

    // The front proxy speaking for the HPA: allowed, and the SAR names the HPA and the
    // request's resource attributes.
    let hpa = client_with(Some(&proxy));
    let response = hpa
        .get(&metric)
        .header("X-Remote-User", HPA)
        .header("X-Remote-Group", "system:serviceaccounts")
        .header("X-Remote-Group", "system:authenticated")
        .header("X-Remote-Extra-Scopes", "a")
        .send()
        .await
        .expect("request");
    // Past the guard; Prometheus is not running, so the metric itself cannot be answered.
    assert_eq!(response.status(), 503);
    let review = seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a SubjectAccessReview");
    assert_eq!(review["user"], HPA);
    assert_eq!(
        review["groups"],
        json!(["system:serviceaccounts", "system:authenticated"])
    );
    assert_eq!(review["extra"]["scopes"], json!(["a"]));
    assert_eq!(
        review["resourceAttributes"],
        json!({"namespace": "default", "verb": "get", "group": "custom.metrics.k8s.io", "version": "v1beta2",
               "resource": "pods", "subresource": "inference_requests_per_second", "name": "*"})
    );
    let (status, _) = get_json(&hpa, &discovery).await;
    assert_eq!(status, 401, "no X-Remote-User on this request");

    // The same proxy speaking for someone the SAR denies: 403 naming the user.
    let response = hpa
        .get(&metric)
        .header("X-Remote-User", "mallory")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("Status JSON");
    assert_eq!(body["reason"], "Forbidden");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("mallory"),
        "{body}"
    );

    // A bearer token: its reviewed identity is used, never a header sent beside it.
    let response = anonymous
        .get(&discovery)
        .bearer_auth("good-token")
        .header("X-Remote-User", HPA)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let review = seen
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a SubjectAccessReview");
    assert_eq!(review["user"], "alice");
    assert_eq!(
        review["nonResourceAttributes"],
        json!({"path": "/apis/custom.metrics.k8s.io/v1beta2", "verb": "get"})
    );

    let metrics = anonymous
        .get(adapter.url("/metrics"))
        .bearer_auth("good-token")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("metrics_adapter_auth_failures_total{reason=\"unauthenticated\"} 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("metrics_adapter_auth_failures_total{reason=\"forbidden\"} 1"),
        "{metrics}"
    );
}

/// What kube-apiserver's aggregator sends: discovery as `system:kube-aggregator` and OpenAPI as
/// `system:aggregator`, through the front proxy, with no `X-Remote-Group` at all. Like any
/// authenticated user they are in `system:authenticated`, which RBAC lets read discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregators_groupless_requests_are_authorized_as_an_authenticated_user() {
    let dir = tempfile::tempdir().expect("dir");
    let front_proxy_ca = Ca::new("front-proxy-ca");
    let (adapter, seen) = guarded_adapter(dir.path(), &front_proxy_ca, &front_proxy_ca).await;
    let proxy = client_with(Some(&front_proxy_ca.client("front-proxy-client")));
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
                      application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,\
                      application/json";
    let requests = [
        ("system:kube-aggregator", "/apis", aggregated),
        ("system:kube-aggregator", "/apis", "application/json"),
        (
            "system:kube-aggregator",
            "/apis/custom.metrics.k8s.io/v1beta2",
            "application/json",
        ),
        (
            "system:kube-aggregator",
            "/apis/custom.metrics.k8s.io/v1beta1",
            "application/json",
        ),
        ("system:aggregator", "/openapi/v2", "application/json"),
        ("system:aggregator", "/openapi/v3", "application/json"),
    ];
    for (user, path, accept) in requests {
        let response = proxy
            .get(adapter.url(path))
            .header("X-Remote-User", user)
            .header("Accept", accept)
            .send()
            .await
            .expect("request");
        assert_eq!(
            response.status(),
            200,
            "{user} GET {path}: {}",
            adapter.logs()
        );
        let review = seen.lock().expect("lock").last().cloned().expect("a SAR");
        assert_eq!(review["user"], user);
        assert_eq!(review["groups"], json!(["system:authenticated"]), "{path}");
        assert_eq!(review["nonResourceAttributes"]["path"], path);
    }

    // The aggregated form, marked Current, is what the aggregator gets for its Accept header.
    let response = proxy
        .get(adapter.url("/apis"))
        .header("X-Remote-User", "system:kube-aggregator")
        .header("Accept", aggregated)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["kind"], "APIGroupDiscoveryList");
    assert_eq!(
        body["items"][0]["metadata"]["name"],
        "custom.metrics.k8s.io"
    );
    let versions = &body["items"][0]["versions"];
    assert_eq!(versions[0]["version"], "v1beta2");
    assert_eq!(versions[0]["freshness"], "Current");
    assert_eq!(versions[1]["version"], "v1beta1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authn_none_needs_no_api_server_and_warns() {
    let dir = tempfile::tempdir().expect("dir");
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, include_str!("../rules.yaml")).expect("rules");
    let adapter = Adapter::start(
        &[
            "--config",
            rules.to_str().expect("utf-8"),
            "--prometheus-url",
            "http://127.0.0.1:1",
            "--objects-from",
            "prometheus",
            "--authn",
            "none",
        ],
        &[("KUBECONFIG", "/nonexistent")],
        dir.path(),
    )
    .await;
    let (status, body) = get_json(
        &client_with(None),
        &adapter.url("/apis/custom.metrics.k8s.io/v1beta1"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["resources"][0]["name"], "namespaces/no_metrics_discovered_yet",
        "never an empty list"
    );
    assert!(
        adapter.logs().contains("EVERY CALLER IS TRUSTED"),
        "{}",
        adapter.logs()
    );
}
