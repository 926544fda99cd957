//! `GET /apis` in both discovery formats: the legacy `APIGroupList`, and the aggregated
//! `APIGroupDiscoveryList` (`apidiscovery.k8s.io` v2, and v2beta1 for Kubernetes 1.26–1.29)
//! chosen by the `Accept` header as kube-apiserver chooses it.
//!
//! Why both: kube-apiserver's aggregator asks every APIService for the aggregated form first.
//! A server that answers only the legacy form makes it fall back to one request per group
//! version, which it sends as `system:kube-aggregator` with no groups; any hiccup there (a 403,
//! a timeout) marks the group version `Stale` with no resources, and client-go discovery — the
//! HPA's among them — then drops it ("no known available metric versions found"). Serving the
//! aggregated form answers the aggregator in one request and marks our versions `Current`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;
use serde::Serialize;

use super::paths::{ApiVersion, GROUP};
use super::types;
use crate::registry::Snapshot;

/// The API group of the aggregated discovery types.
const DISCOVERY_GROUP: &str = "apidiscovery.k8s.io";
/// The kind the aggregated form is asked for as (`as=` in the media type).
const DISCOVERY_KIND: &str = "APIGroupDiscoveryList";

/// A version of `apidiscovery.k8s.io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregatedVersion {
    /// GA since Kubernetes 1.30.
    V2,
    /// Beta in 1.26–1.29 (1.28's aggregator asks only for this one), still understood later.
    V2beta1,
}

impl AggregatedVersion {
    fn as_str(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V2beta1 => "v2beta1",
        }
    }

    /// The `Content-Type` of an answer in this version, spelled as kube-apiserver spells it.
    pub fn content_type(self) -> String {
        format!(
            "application/json;g={DISCOVERY_GROUP};v={};as={DISCOVERY_KIND}",
            self.as_str()
        )
    }
}

/// Which document `GET /apis` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `APIGroupList` (`application/json`).
    Legacy,
    /// `APIGroupDiscoveryList`.
    Aggregated(AggregatedVersion),
}

/// The format the `Accept` header prefers, or `None` when it accepts nothing we serve (406).
///
/// Media ranges are taken by their `q` (default 1), then the more specific first (a type over
/// `application/*` over `*/*`), then in the order given — what the apiserver's negotiation
/// (goautoneg) does. Protobuf and YAML are not served; an absent header means JSON.
pub fn negotiate(accept: Option<&str>) -> Option<Format> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Some(Format::Legacy);
    };
    let mut offers: Vec<(f32, u8, usize, Format)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(position, range)| {
            let (format, quality, specificity) = media_range(range)?;
            (quality > 0.0).then_some((quality, specificity, position, format))
        })
        .collect();
    offers.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    offers.first().map(|(_, _, _, format)| *format)
}

/// One media range of an `Accept` header: what it selects, its quality (0 to 1), and how
/// specific it is (0 for `*/*`, 1 for `application/*`, 2 for a type).
fn media_range(range: &str) -> Option<(Format, f32, u8)> {
    let mut parts = range.split(';').map(str::trim);
    let media_type = parts.next()?.to_ascii_lowercase();
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    // A parameter without a value is ignored, as goautoneg ignores it.
    for (key, value) in parts.filter_map(|param| param.split_once('=')) {
        params.insert(
            key.trim().to_ascii_lowercase(),
            value.trim().trim_matches('"').to_owned(),
        );
    }
    let quality = match params.remove("q") {
        Some(q) => q
            .parse::<f32>()
            .ok()
            .filter(|q| q.is_finite())?
            .clamp(0.0, 1.0),
        None => 1.0,
    };
    let specificity = match media_type.as_str() {
        "*/*" => 0,
        "application/*" => 1,
        _ => 2,
    };
    if !matches!(
        media_type.as_str(),
        "application/json" | "application/*" | "*/*"
    ) {
        return None;
    }
    // Without a group/version/kind, any JSON is the legacy list (`charset` and the like aside).
    if !["g", "v", "as"].iter().any(|key| params.contains_key(*key)) {
        return Some((Format::Legacy, quality, specificity));
    }
    let group = params.get("g").map(String::as_str);
    let kind = params.get("as").map(String::as_str);
    if media_type != "application/json" || group != Some(DISCOVERY_GROUP) {
        return None;
    }
    if kind != Some(DISCOVERY_KIND) {
        return None;
    }
    let version = match params.get("v").map(String::as_str) {
        Some("v2") => AggregatedVersion::V2,
        Some("v2beta1") => AggregatedVersion::V2beta1,
        _ => return None,
    };
    Some((Format::Aggregated(version), quality, specificity))
}

/// `APIGroupDiscoveryList`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDiscoveryList {
    kind: &'static str,
    api_version: String,
    metadata: Empty,
    items: Vec<GroupDiscovery>,
}

/// An empty `ListMeta` / the absent fields of `ObjectMeta`, written `{}` as Go writes them.
#[derive(Debug, Serialize)]
struct Empty {}

/// `APIGroupDiscovery`: one group and its versions, preferred first.
#[derive(Debug, Serialize)]
struct GroupDiscovery {
    metadata: GroupName,
    versions: Vec<VersionDiscovery>,
}

#[derive(Debug, Serialize)]
struct GroupName {
    name: &'static str,
}

/// `APIVersionDiscovery`.
#[derive(Debug, Serialize)]
struct VersionDiscovery {
    version: &'static str,
    resources: Vec<ResourceDiscovery>,
    freshness: &'static str,
}

/// `APIResourceDiscovery`: a resource (for us, a kind of described object such as `pods`)
/// whose metrics are its subresources.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceDiscovery {
    resource: String,
    response_kind: GroupVersionKind,
    scope: &'static str,
    singular_resource: String,
    /// `None` (written `null`) for a parent that exists only through its subresources, as
    /// kube-apiserver writes it.
    verbs: Option<Vec<String>>,
    subresources: Vec<SubresourceDiscovery>,
}

/// `APISubresourceDiscovery`: one metric of a resource.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SubresourceDiscovery {
    subresource: String,
    response_kind: GroupVersionKind,
    verbs: Vec<String>,
}

/// `GroupVersionKind` (every field written, empty or not).
#[derive(Debug, Default, Serialize)]
struct GroupVersionKind {
    group: String,
    version: String,
    kind: String,
}

/// `GET /apis` in the aggregated form: the same resources as the per-version documents, with
/// `pods/<metric>` entries as subresources of a `pods` parent — the conversion kube-apiserver
/// applies to a legacy list, so both paths show clients the same thing.
pub fn group_discovery_list(version: AggregatedVersion, snapshot: &Snapshot) -> GroupDiscoveryList {
    let versions = ApiVersion::ALL
        .into_iter()
        .map(|api_version| VersionDiscovery {
            version: api_version.as_str(),
            resources: nest(types::resource_list(api_version, snapshot).resources),
            freshness: "Current",
        })
        .collect();
    GroupDiscoveryList {
        kind: DISCOVERY_KIND,
        api_version: format!("{DISCOVERY_GROUP}/{}", version.as_str()),
        metadata: Empty {},
        items: vec![GroupDiscovery {
            metadata: GroupName { name: GROUP },
            versions,
        }],
    }
}

/// `parent/child` resources as parents with subresources, in order of first appearance.
/// Every name we list has a parent part (`types::resource_list` guarantees it).
fn nest(resources: Vec<APIResource>) -> Vec<ResourceDiscovery> {
    let mut parents: Vec<ResourceDiscovery> = Vec::new();
    for resource in resources {
        let Some((parent, child)) = resource.name.split_once('/') else {
            continue;
        };
        let scope = if resource.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        };
        let index = match parents.iter().position(|p| p.resource == parent) {
            Some(index) => index,
            None => {
                parents.push(ResourceDiscovery {
                    resource: parent.to_owned(),
                    response_kind: GroupVersionKind::default(),
                    scope,
                    singular_resource: String::new(),
                    verbs: None,
                    subresources: Vec::new(),
                });
                parents.len() - 1
            }
        };
        parents[index].subresources.push(SubresourceDiscovery {
            subresource: child.to_owned(),
            response_kind: GroupVersionKind {
                kind: resource.kind,
                ..GroupVersionKind::default()
            },
            verbs: resource.verbs,
        });
    }
    parents
}

#[cfg(test)]
mod tests;
