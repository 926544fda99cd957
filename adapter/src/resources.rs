//! Kubernetes resources the adapter can describe: `pods`, `services`, `deployments.apps`…
//!
//! The HPA names resources group-qualified and plural (`deployments.apps`), rules name them in
//! whatever form (`pod`, `Deployment`, `deploy`), and responses need the kind and API version of
//! each object. A RESTMapper would answer this from API discovery; the adapter must also run
//! without an API server, so the common resources are listed here and others are derived by the
//! usual pluralisation (documented in docs/ADAPTER.md).

use std::fmt;
use std::str::FromStr;

/// A group-qualified plural resource, as it appears in paths: `pods`, `deployments.apps`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    /// The API group; empty for the core group.
    pub group: String,
    /// The plural, lower-case resource name.
    pub resource: String,
}

/// What a response needs to know about a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group (`""` for core).
    pub group: &'static str,
    /// The served version used in `describedObject.apiVersion`.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// Plural resource name.
    pub plural: &'static str,
    /// Singular resource name.
    pub singular: &'static str,
    /// Short names (`po`, `svc`, `deploy`).
    pub short: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

const fn info(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
) -> ResourceInfo {
    ResourceInfo {
        group,
        version,
        kind,
        plural,
        singular,
        short,
        namespaced,
    }
}

/// The resources metrics are commonly attached to.
const KNOWN: &[ResourceInfo] = &[
    info("", "v1", "Pod", "pods", "pod", &["po"], true),
    info("", "v1", "Service", "services", "service", &["svc"], true),
    info(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        &["ns"],
        false,
    ),
    info("", "v1", "Node", "nodes", "node", &["no"], false),
    info(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        &["pv"],
        false,
    ),
    info(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        &["pvc"],
        true,
    ),
    info(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        &["ep"],
        true,
    ),
    info(
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        &["rc"],
        true,
    ),
    info(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        &["deploy"],
        true,
    ),
    info(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        &["sts"],
        true,
    ),
    info(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        &["rs"],
        true,
    ),
    info(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        &["ds"],
        true,
    ),
    info("batch", "v1", "Job", "jobs", "job", &[], true),
    info(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        &["cj"],
        true,
    ),
    info(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        &["ing"],
        true,
    ),
    info(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        &["hpa"],
        true,
    ),
];

impl GroupResource {
    /// The core-group resource with this name, normalised.
    pub fn core(resource: &str) -> Self {
        Self::normalized("", resource)
    }

    /// Normalises any spelling (`pod`, `Pod`, `po`, `pods`) to the plural form, resolving the
    /// group from the table when it is empty and the name is unambiguous (`deployment` →
    /// `deployments.apps`).
    pub fn normalized(group: &str, resource: &str) -> Self {
        let resource = resource.to_ascii_lowercase();
        let known = KNOWN.iter().find(|info| {
            (group.is_empty() || info.group == group)
                && (info.plural == resource
                    || info.singular == resource
                    || info.short.contains(&resource.as_str()))
        });
        match known {
            Some(info) => Self {
                group: info.group.to_owned(),
                resource: info.plural.to_owned(),
            },
            None => Self {
                group: group.to_owned(),
                resource: pluralize(&resource),
            },
        }
    }

    /// The table entry, if this is a resource the adapter knows.
    pub fn info(&self) -> Option<&'static ResourceInfo> {
        KNOWN
            .iter()
            .find(|info| info.group == self.group && info.plural == self.resource)
    }

    /// Whether this is `namespaces`, the resource whose objects are namespaces themselves.
    pub fn is_namespaces(&self) -> bool {
        self.group.is_empty() && self.resource == "namespaces"
    }

    /// Whether objects of this resource live in namespaces, when the table knows.
    pub fn namespaced(&self) -> Option<bool> {
        self.info().map(|info| info.namespaced)
    }

    /// The kind for `describedObject` (`Pod`), derived from the singular name when unknown.
    pub fn kind(&self) -> String {
        match self.info() {
            Some(info) => info.kind.to_owned(),
            None => {
                let singular = singularize(&self.resource);
                let mut chars = singular.chars();
                chars
                    .next()
                    .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                    .unwrap_or_default()
            }
        }
    }

    /// `describedObject.apiVersion`: `v1` for core, `apps/v1` for grouped kinds (never `/v1`,
    /// the upstream quirk).
    pub fn api_version(&self) -> String {
        let version = self.info().map_or("v1", |info| info.version);
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The singular name, as rule templates use it (`<<.Resource>>` renders `pod`).
    pub fn singular(&self) -> String {
        match self.info() {
            Some(info) => info.singular.to_owned(),
            None => singularize(&self.resource),
        }
    }
}

fn pluralize(word: &str) -> String {
    if word.ends_with('s') {
        word.to_owned()
    } else if let Some(stem) = word.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{word}s")
    }
}

fn singularize(word: &str) -> String {
    if let Some(stem) = word.strip_suffix("ies") {
        format!("{stem}y")
    } else if let Some(stem) = word.strip_suffix("sses") {
        format!("{stem}ss")
    } else if let Some(stem) = word.strip_suffix('s') {
        stem.to_owned()
    } else {
        word.to_owned()
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

impl FromStr for GroupResource {
    type Err = std::convert::Infallible;

    /// Parses the path form `resource[.group]`, normalising the resource name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.split_once('.') {
            Some((resource, group)) => Self::normalized(group, resource),
            None => Self::normalized("", text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_spellings() {
        let cases = [
            ("pods", "pods"),
            ("pod", "pods"),
            ("Pod", "pods"),
            ("po", "pods"),
            ("svc", "services"),
            ("namespace", "namespaces"),
            ("deployments.apps", "deployments.apps"),
            ("deployment.apps", "deployments.apps"),
            ("deploy", "deployments.apps"),
            ("ingresses.networking.k8s.io", "ingresses.networking.k8s.io"),
            ("widgets.example.com", "widgets.example.com"),
            ("widget.example.com", "widgets.example.com"),
            ("policy.example.com", "policies.example.com"),
        ];
        for (input, expected) in cases {
            let gr: GroupResource = input.parse().expect("infallible");
            assert_eq!(gr.to_string(), expected, "{input}");
        }
    }

    #[test]
    fn kinds_and_api_versions() {
        let cases = [
            ("pods", "Pod", "v1", "pod"),
            ("namespaces", "Namespace", "v1", "namespace"),
            ("deployments.apps", "Deployment", "apps/v1", "deployment"),
            (
                "horizontalpodautoscalers.autoscaling",
                "HorizontalPodAutoscaler",
                "autoscaling/v2",
                "horizontalpodautoscaler",
            ),
            ("widgets.example.com", "Widget", "example.com/v1", "widget"),
            ("policies.example.com", "Policy", "example.com/v1", "policy"),
        ];
        for (input, kind, api_version, singular) in cases {
            let gr: GroupResource = input.parse().expect("infallible");
            assert_eq!(gr.kind(), kind);
            assert_eq!(gr.api_version(), api_version);
            assert_eq!(gr.singular(), singular);
        }
    }
}
