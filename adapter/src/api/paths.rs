//! Request paths of `custom.metrics.k8s.io`, parsed into what they ask for.
//!
//! Routes (relative to `/apis/custom.metrics.k8s.io/{v1beta1|v1beta2}`), as custom-metrics-apiserver
//! registers them:
//! - `` → discovery (`APIResourceList`)
//! - `/{resource}/{name}/{metric}` → root-scoped object (`nodes/n1/m`, `namespaces/ns/m`)
//! - `/namespaces/{ns}/{resource}/{name}/{metric}` → namespaced object
//! - `/namespaces/{ns}/metrics/{metric}` → the namespace object itself
//!
//! `{name}` may be `*` (sent as `%2A` by kubectl and the HPA).

use percent_encoding::percent_decode_str;

use crate::provider::ObjectName;
use crate::resources::GroupResource;

/// The API group served.
pub const GROUP: &str = "custom.metrics.k8s.io";

/// The two served versions; v1beta2 is preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// `metricName`, `window`.
    V1beta1,
    /// `metric.name`, `windowSeconds`.
    V1beta2,
}

impl ApiVersion {
    /// All versions, preferred first.
    pub const ALL: [Self; 2] = [Self::V1beta2, Self::V1beta1];

    /// `v1beta1` / `v1beta2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1beta1 => "v1beta1",
            Self::V1beta2 => "v1beta2",
        }
    }

    /// `custom.metrics.k8s.io/v1beta2`.
    pub fn group_version(self) -> String {
        format!("{GROUP}/{}", self.as_str())
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }
}

/// What a path under `/apis/custom.metrics.k8s.io/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The version's resource list.
    Discovery(ApiVersion),
    /// A metric.
    Metric(ApiVersion, MetricPath),
}

/// The metric part of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricPath {
    /// The resource.
    pub resource: GroupResource,
    /// The namespace, for namespaced objects.
    pub namespace: Option<String>,
    /// Which objects.
    pub name: ObjectName,
    /// The metric.
    pub metric: String,
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing is served there (404).
    #[error("{0}")]
    NotFound(String),
    /// The path is malformed (400).
    #[error("{0}")]
    BadRequest(String),
}

/// Parses the part of the path after `/apis/custom.metrics.k8s.io/`.
pub fn parse(rest: &str) -> Result<Route, PathError> {
    let not_found =
        || PathError::NotFound("the server could not find the requested resource".into());
    let rest = rest.trim_end_matches('/');
    let mut raw = rest.split('/');
    let version = raw
        .next()
        .and_then(ApiVersion::parse)
        .ok_or_else(not_found)?;
    let parts = raw
        .map(|segment| {
            percent_decode_str(segment)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| {
                    PathError::BadRequest(format!("invalid request path: {segment:?} is not UTF-8"))
                })
        })
        .collect::<Result<Vec<String>, _>>()?;
    if parts.iter().any(String::is_empty) {
        return Err(PathError::BadRequest(
            "invalid request path: empty segment".into(),
        ));
    }
    let object = |name: &str| {
        if name == "*" {
            ObjectName::All
        } else {
            ObjectName::One(name.to_owned())
        }
    };
    let path = match parts.as_slice() {
        [] => return Ok(Route::Discovery(version)),
        [ns_word, namespace, metrics_word, metric]
            if ns_word == "namespaces" && metrics_word == "metrics" =>
        {
            MetricPath {
                resource: GroupResource::core("namespaces"),
                namespace: None,
                name: object(namespace),
                metric: metric.clone(),
            }
        }
        [ns_word, namespace, resource, name, metric] if ns_word == "namespaces" => {
            if namespace == "*" {
                return Err(PathError::BadRequest(
                    "invalid request path: a namespace cannot be \"*\" here; leave the \
                     namespace out to ask across namespaces"
                        .into(),
                ));
            }
            MetricPath {
                resource: resource.parse().unwrap_or_else(|never| match never {}),
                namespace: Some(namespace.clone()),
                name: object(name),
                metric: metric.clone(),
            }
        }
        [resource, name, metric] => MetricPath {
            resource: resource.parse().unwrap_or_else(|never| match never {}),
            namespace: None,
            name: object(name),
            metric: metric.clone(),
        },
        [_] | [_, _] | [_, _, _, _] => return Err(not_found()),
        _ => return Err(not_found()),
    };
    Ok(Route::Metric(version, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        metric: &str,
    ) -> MetricPath {
        MetricPath {
            resource: resource.parse().expect("infallible"),
            namespace: namespace.map(str::to_owned),
            name: name.map_or(ObjectName::All, |n| ObjectName::One(n.to_owned())),
            metric: metric.to_owned(),
        }
    }

    #[test]
    fn routes() {
        use ApiVersion::*;
        let cases = [
            ("v1beta2", Route::Discovery(V1beta2)),
            ("v1beta1/", Route::Discovery(V1beta1)),
            (
                "v1beta2/namespaces/default/pods/%2A/requests_per_second",
                Route::Metric(
                    V1beta2,
                    metric("pods", Some("default"), None, "requests_per_second"),
                ),
            ),
            (
                "v1beta1/namespaces/default/pods/*/m",
                Route::Metric(V1beta1, metric("pods", Some("default"), None, "m")),
            ),
            (
                "v1beta2/namespaces/default/deployments.apps/web/queue_depth",
                Route::Metric(
                    V1beta2,
                    metric(
                        "deployments.apps",
                        Some("default"),
                        Some("web"),
                        "queue_depth",
                    ),
                ),
            ),
            (
                "v1beta2/namespaces/default/pod/web-1/m",
                Route::Metric(V1beta2, metric("pods", Some("default"), Some("web-1"), "m")),
            ),
            (
                "v1beta2/namespaces/default/metrics/queue_depth",
                Route::Metric(
                    V1beta2,
                    metric("namespaces", None, Some("default"), "queue_depth"),
                ),
            ),
            (
                "v1beta2/namespaces/%2A/metrics/queue_depth",
                Route::Metric(V1beta2, metric("namespaces", None, None, "queue_depth")),
            ),
            (
                "v1beta2/nodes/*/cpu",
                Route::Metric(V1beta2, metric("nodes", None, None, "cpu")),
            ),
            (
                "v1beta2/namespaces/default/m",
                Route::Metric(V1beta2, metric("namespaces", None, Some("default"), "m")),
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(parse(path), Ok(expected), "{path}");
        }
    }

    #[test]
    fn refusals() {
        let not_found = [
            "v1",
            "v2beta9/pods/*/m",
            "",
            "v1beta2/nodes",
            "v1beta2/nodes/foo",
            "v1beta2/namespaces/ns/pods/bar",
            "v1beta2/a/b/c/d/e/f",
        ];
        for path in not_found {
            assert!(matches!(parse(path), Err(PathError::NotFound(_))), "{path}");
        }
        let bad = [
            "v1beta2/namespaces//pods/*/m",
            "v1beta2/pods/%FF/m",
            "v1beta2/namespaces/*/pods/*/m",
        ];
        for path in bad {
            assert!(
                matches!(parse(path), Err(PathError::BadRequest(_))),
                "{path}"
            );
        }
    }
}
