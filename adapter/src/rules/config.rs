//! The rules file, field for field as prometheus-adapter reads it (`pkg/config/config.go`), so
//! an existing prometheus-adapter config loads unchanged. Unknown keys are refused, as
//! prometheus-adapter's strict YAML decoding does, so a typo fails at start instead of silently
//! serving nothing.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RulesFile {
    /// Rules for `custom.metrics.k8s.io`.
    #[serde(default)]
    pub rules: Vec<DiscoveryRule>,
    /// Rules for `external.metrics.k8s.io`; accepted so shared configs load, not served.
    #[serde(default)]
    pub external_rules: Vec<DiscoveryRule>,
    /// Rules for `metrics.k8s.io`; accepted so shared configs load, not served.
    #[serde(default)]
    pub resource_rules: Option<serde_norway::Value>,
}

/// One rule: which series to discover, what to call them, and how to query them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiscoveryRule {
    /// A Prometheus series selector passed to `/api/v1/series?match[]=`.
    pub series_query: String,
    /// Extra filters on the series name.
    #[serde(default)]
    pub series_filters: Vec<RegexFilter>,
    /// How series labels map to Kubernetes resources.
    #[serde(default)]
    pub resources: ResourceMapping,
    /// How the series name becomes the metric name.
    #[serde(default)]
    pub name: NameMapping,
    /// The query template, with `<<` `>>` delimiters.
    pub metrics_query: String,
}

/// `{is: regex}` keeps matching names; `{isNot: regex}` drops them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegexFilter {
    /// Keep only names matching this.
    pub is: Option<String>,
    /// Drop names matching this.
    pub is_not: Option<String>,
}

/// Label ↔ resource association.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceMapping {
    /// A template such as `<<.Resource>>` or `kube_<<.Group>>_<<.Resource>>`.
    pub template: Option<String>,
    /// Explicit label → resource pairs.
    #[serde(default)]
    pub overrides: BTreeMap<String, GroupResourceRef>,
    /// Used by external rules only; accepted and ignored here.
    pub namespaced: Option<bool>,
}

/// A resource as written in an override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupResourceRef {
    /// The API group (empty for core).
    #[serde(default)]
    pub group: String,
    /// The resource, singular or plural.
    pub resource: String,
}

/// Series name → metric name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameMapping {
    /// A regex over the series name; defaults to `.*`.
    #[serde(default)]
    pub matches: String,
    /// The replacement (`$1`, `${1}_per_second`); defaults to `$0` or `$1`.
    #[serde(default, rename = "as")]
    pub as_: String,
}
