//! What the caller may do: delegated to the API server with a `SubjectAccessReview`, answers
//! cached for 10 s (kube-apiserver's defaults), `system:masters` always allowed.
//!
//! Attributes follow the apiserver's request-info rules for this group: a metric path is a
//! `get` on resource `<resource>` with subresource `<metric>` (the HPA's role grants
//! `custom.metrics.k8s.io` `*`), the namespace metric path is a `get` on resource `metrics`,
//! anything else is a non-resource `get` on the path.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use tokio::sync::Mutex;

use super::authn::UserInfo;
use crate::api::paths::{self, GROUP, Route};
use crate::provider::ObjectName;

/// What is being asked for, in SubjectAccessReview terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// A resource request.
    Resource {
        /// Namespace, empty for cluster-scoped.
        namespace: String,
        /// API version.
        version: String,
        /// Resource.
        resource: String,
        /// Subresource (the metric).
        subresource: String,
        /// Object name (`*` for all).
        name: String,
    },
    /// Any other path.
    NonResource {
        /// The path.
        path: String,
    },
}

impl Attributes {
    /// The attributes of a request path.
    pub fn for_path(path: &str) -> Self {
        let non_resource = || Self::NonResource {
            path: path.to_owned(),
        };
        let Some(rest) = path.strip_prefix(&format!("/apis/{GROUP}/")) else {
            return non_resource();
        };
        match paths::parse(rest) {
            Ok(Route::Metric(version, metric)) => {
                let name = match metric.name {
                    ObjectName::All => "*".to_owned(),
                    ObjectName::One(name) => name,
                };
                if metric.resource.is_namespaces() && metric.namespace.is_none() {
                    // `namespaces/{ns}/metrics/{m}`: authorised as `metrics` named `{m}`.
                    Self::Resource {
                        namespace: name,
                        version: version.as_str().into(),
                        resource: "metrics".into(),
                        subresource: String::new(),
                        name: metric.metric,
                    }
                } else {
                    Self::Resource {
                        namespace: metric.namespace.unwrap_or_default(),
                        version: version.as_str().into(),
                        resource: metric.resource.to_string(),
                        subresource: metric.metric,
                        name,
                    }
                }
            }
            _ => non_resource(),
        }
    }
}

/// Delegated authorization.
pub struct Authorizer {
    client: kube::Client,
    cache: Mutex<HashMap<(UserInfo, Attributes), (Instant, bool)>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

const CACHE_TTL: Duration = Duration::from_secs(10);

impl Authorizer {
    /// Reviews access with `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` may do `attributes`.
    pub async fn allowed(&self, user: &UserInfo, attributes: &Attributes) -> Result<bool, String> {
        if user.groups.iter().any(|g| g == "system:masters") {
            return Ok(true);
        }
        let key = (user.clone(), attributes.clone());
        {
            let mut cache = self.cache.lock().await;
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if let Some((_, allowed)) = cache.get(&key) {
                return Ok(*allowed);
            }
        }
        let mut spec = SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            extra: Some(user.extra.clone()),
            ..SubjectAccessReviewSpec::default()
        };
        match attributes {
            Attributes::Resource {
                namespace,
                version,
                resource,
                subresource,
                name,
            } => {
                spec.resource_attributes = Some(ResourceAttributes {
                    namespace: Some(namespace.clone()),
                    verb: Some("get".into()),
                    group: Some(GROUP.into()),
                    version: Some(version.clone()),
                    resource: Some(resource.clone()),
                    subresource: Some(subresource.clone()),
                    name: Some(name.clone()),
                    ..ResourceAttributes::default()
                });
            }
            Attributes::NonResource { path } => {
                spec.non_resource_attributes = Some(NonResourceAttributes {
                    path: Some(path.clone()),
                    verb: Some("get".into()),
                });
            }
        }
        let review = SubjectAccessReview {
            spec,
            ..SubjectAccessReview::default()
        };
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("SubjectAccessReview failed: {e}"))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.cache
            .lock()
            .await
            .insert(key, (Instant::now(), allowed));
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_follow_the_apiserver_request_info() {
        let resource = |ns: &str, resource: &str, sub: &str, name: &str| Attributes::Resource {
            namespace: ns.into(),
            version: "v1beta2".into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
        };
        let cases = [
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/rps",
                resource("default", "pods", "rps", "*"),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/deployments.apps/web/q",
                resource("default", "deployments.apps", "q", "web"),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/metrics/q",
                resource("default", "metrics", "", "q"),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2/nodes/n1/cpu",
                resource("", "nodes", "cpu", "n1"),
            ),
            (
                "/apis/custom.metrics.k8s.io/v1beta2",
                Attributes::NonResource {
                    path: "/apis/custom.metrics.k8s.io/v1beta2".into(),
                },
            ),
            (
                "/openapi/v2",
                Attributes::NonResource {
                    path: "/openapi/v2".into(),
                },
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(Attributes::for_path(path), expected, "{path}");
        }
    }
}
