//! Answers one metric request: find the rule, resolve the objects, render and run the PromQL,
//! and map the samples back to objects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crate::objects::{ObjectScope, Objects, ObjectsError};
use crate::prom::{PromError, Prometheus, Sample};
use crate::promql::{Matcher, UnsupportedOperator, join_matchers};
use crate::quantity::Quantity;
use crate::registry::{Discovered, MetricKey, Registry};
use crate::resources::GroupResource;
use crate::rules::QueryArgs;
use crate::selector::Selector;

/// The object part of a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectName {
    /// `*`: every object selected by the label selector.
    All,
    /// One named object; the answer must hold exactly one value.
    One(String),
}

/// A metric request, whichever API version and route it came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricRequest {
    /// The resource the objects are.
    pub resource: GroupResource,
    /// The namespace for namespaced routes.
    pub namespace: Option<String>,
    /// Which objects.
    pub name: ObjectName,
    /// The metric name.
    pub metric: String,
    /// `labelSelector`: selects objects.
    pub label_selector: Selector,
    /// `metricLabelSelector`: selects series.
    pub metric_selector: Selector,
}

/// An object a value describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedObject {
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// `v1`, `apps/v1`…
    pub api_version: String,
    /// Namespace, for namespaced objects.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// One value of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricValue {
    /// The object it describes.
    pub object: DescribedObject,
    /// Unix time of the Prometheus sample, in seconds.
    pub timestamp: i64,
    /// The span the value covers, from the rule's range selector.
    pub window: Option<Duration>,
    /// The value.
    pub value: Quantity,
}

/// Why a request got no values.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No such metric, or no value for the named object.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be turned into a query.
    #[error("{0}")]
    BadRequest(String),
    /// Prometheus failed.
    #[error(transparent)]
    Prometheus(#[from] PromError),
    /// Objects could not be listed.
    #[error(transparent)]
    Objects(#[from] ObjectsError),
}

impl From<UnsupportedOperator> for ProviderError {
    fn from(error: UnsupportedOperator) -> Self {
        Self::BadRequest(error.to_string())
    }
}

/// Ties the registry, the object source and Prometheus together.
#[derive(Debug)]
pub struct Provider {
    /// Discovered metrics and the rules.
    pub registry: Arc<Registry>,
    objects: Objects,
    prometheus: Prometheus,
}

impl Provider {
    /// A provider over these parts.
    pub fn new(registry: Arc<Registry>, objects: Objects, prometheus: Prometheus) -> Self {
        Self {
            registry,
            objects,
            prometheus,
        }
    }

    /// The values for a request, sorted by object name.
    pub async fn get(&self, request: &MetricRequest) -> Result<Vec<MetricValue>, ProviderError> {
        let not_found = || {
            ProviderError::NotFound(format!(
                "the server could not find the metric {} for {}",
                request.metric, request.resource
            ))
        };
        let key = MetricKey {
            resource: request.resource.clone(),
            metric: request.metric.clone(),
        };
        let snapshot = self.registry.lookup(&key).await?.ok_or_else(not_found)?;
        let (discovered, rule) = snapshot.find(&key).ok_or_else(not_found)?;
        if discovered.namespaced() != request.namespace.is_some() {
            return Err(not_found());
        }
        let scope = match &request.name {
            ObjectName::One(name) => ObjectScope::Names(vec![name.clone()]),
            ObjectName::All => {
                self.objects
                    .select(
                        &request.resource,
                        request.namespace.as_deref(),
                        &request.label_selector,
                    )
                    .await?
            }
        };
        if matches!(&scope, ObjectScope::Names(names) if names.is_empty()) {
            return Ok(Vec::new());
        }
        let args = query_args(request, discovered, &scope)?;
        let promql = rule.render(&args);
        tracing::debug!(%promql, "querying Prometheus");
        let samples = self.prometheus.query(&promql).await?;
        let values = to_values(request, discovered, &scope, samples, rule.window);
        match &request.name {
            ObjectName::One(name) if values.len() != 1 => Err(ProviderError::NotFound(format!(
                "the server could not find the metric {} for {} {name}",
                request.metric, request.resource
            ))),
            _ => Ok(values),
        }
    }
}

/// The template arguments: metric-selector matchers, then the namespace, then the objects.
fn query_args(
    request: &MetricRequest,
    discovered: &Discovered,
    scope: &ObjectScope,
) -> Result<QueryArgs, ProviderError> {
    let mut matchers = request
        .metric_selector
        .requirements()
        .iter()
        .map(Matcher::for_requirement)
        .collect::<Result<Vec<_>, _>>()?;
    let mut values_by_name = BTreeMap::new();
    if let (Some(label), Some(namespace)) = (&discovered.namespace_label, &request.namespace) {
        matchers.push(Matcher::equal(label, namespace));
        values_by_name.insert(label.clone(), namespace.clone());
    }
    let resource_label = &discovered.resource_label;
    match scope {
        ObjectScope::Names(names) => {
            matchers.push(Matcher::any_of(resource_label, names));
            values_by_name.insert(resource_label.clone(), names.join("|"));
        }
        ObjectScope::SeriesLabels(selector) => {
            for requirement in selector.requirements() {
                matchers.push(Matcher::for_requirement(requirement)?);
            }
            matchers.push(Matcher {
                label: resource_label.clone(),
                op: crate::promql::MatchOp::NotEqual,
                value: String::new(),
            });
        }
    }
    Ok(QueryArgs {
        series: discovered.series.clone(),
        label_matchers: join_matchers(&matchers),
        group_by: resource_label.clone(),
        label_values_by_name: values_by_name,
    })
}

fn to_values(
    request: &MetricRequest,
    discovered: &Discovered,
    scope: &ObjectScope,
    samples: Vec<Sample>,
    window: Option<Duration>,
) -> Vec<MetricValue> {
    let wanted: Option<BTreeSet<&str>> = match scope {
        ObjectScope::Names(names) => Some(names.iter().map(String::as_str).collect()),
        ObjectScope::SeriesLabels(_) => None,
    };
    // A single-object query whose PromQL aggregated the resource label away still answers
    // for that object (prometheus-adapter issue #150).
    let lone_unlabelled = match (&request.name, samples.as_slice()) {
        (ObjectName::One(name), [only])
            if !only.labels.contains_key(&discovered.resource_label) =>
        {
            Some(name.clone())
        }
        _ => None,
    };
    let mut values: Vec<MetricValue> = samples
        .into_iter()
        .filter_map(|sample| {
            let name = match sample.labels.get(&discovered.resource_label) {
                Some(name) => name.clone(),
                None => lone_unlabelled.clone()?,
            };
            if wanted.as_ref().is_some_and(|w| !w.contains(name.as_str())) {
                return None;
            }
            let Some(value) = Quantity::from_f64(sample.value) else {
                tracing::debug!(object = %name, value = sample.value, "skipping a non-finite sample");
                return None;
            };
            let namespace = discovered.namespace_label.as_ref().and_then(|label| {
                request
                    .namespace
                    .clone()
                    .or_else(|| sample.labels.get(label).cloned())
            });
            #[allow(clippy::cast_possible_truncation, reason = "Unix seconds fit in i64")]
            let timestamp = sample.timestamp.floor() as i64;
            Some(MetricValue {
                object: DescribedObject {
                    kind: request.resource.kind(),
                    api_version: request.resource.api_version(),
                    namespace,
                    name,
                },
                timestamp,
                window,
                value,
            })
        })
        .collect();
    values.sort_by(|a, b| a.object.name.cmp(&b.object.name));
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: ObjectName, selector: &str, metric_selector: &str) -> MetricRequest {
        MetricRequest {
            resource: GroupResource::core("pods"),
            namespace: Some("prod".into()),
            name,
            metric: "http_requests_per_second".into(),
            label_selector: selector.parse().expect("valid"),
            metric_selector: metric_selector.parse().expect("valid"),
        }
    }

    fn discovered() -> Discovered {
        Discovered {
            rule_id: "rules[0]".into(),
            series: "http_requests_total".into(),
            resource_label: "pod".into(),
            namespace_label: Some("namespace".into()),
        }
    }

    #[test]
    fn label_matchers_follow_prometheus_adapter_order() {
        let cases = [
            (
                request(ObjectName::All, "", ""),
                ObjectScope::Names(vec!["web-1".into(), "web-2".into()]),
                r#"namespace="prod",pod=~"web\\-1|web\\-2""#,
            ),
            (
                request(ObjectName::One("web-1".into()), "", "code=200"),
                ObjectScope::Names(vec!["web-1".into()]),
                r#"code="200",namespace="prod",pod="web-1""#,
            ),
            (
                request(ObjectName::All, "app=web", ""),
                ObjectScope::SeriesLabels("app=web".parse().expect("valid")),
                r#"namespace="prod",app="web",pod!="""#,
            ),
        ];
        for (request, scope, expected) in cases {
            let args = query_args(&request, &discovered(), &scope).expect("renders");
            assert_eq!(args.label_matchers, expected);
            assert_eq!(args.group_by, "pod");
        }
        let bad = request(ObjectName::All, "", "code>200");
        let scope = ObjectScope::Names(vec!["a".into()]);
        assert!(matches!(
            query_args(&bad, &discovered(), &scope),
            Err(ProviderError::BadRequest(_))
        ));
    }

    fn sample(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timestamp: 1_700_000_000.25,
            value,
        }
    }

    #[test]
    fn samples_map_back_to_the_objects_asked_for() {
        let scope = ObjectScope::Names(vec!["web-1".into(), "web-2".into()]);
        let samples = vec![
            sample(&[("pod", "web-2")], 2.5),
            sample(&[("pod", "web-1")], 1.0),
            sample(&[("pod", "other")], 9.0),
            sample(&[("pod", "web-3")], f64::NAN),
        ];
        let values = to_values(
            &request(ObjectName::All, "", ""),
            &discovered(),
            &scope,
            samples,
            Some(Duration::from_secs(120)),
        );
        let summary: Vec<(String, String, i64)> = values
            .iter()
            .map(|v| (v.object.name.clone(), v.value.to_string(), v.timestamp))
            .collect();
        assert_eq!(
            summary,
            [
                ("web-1".into(), "1".into(), 1_700_000_000),
                ("web-2".into(), "2500m".into(), 1_700_000_000)
            ]
        );
        assert_eq!(values[0].object.namespace.as_deref(), Some("prod"));
        assert_eq!(values[0].object.kind, "Pod");
        assert_eq!(values[0].object.api_version, "v1");
    }

    #[test]
    fn a_lone_unlabelled_sample_answers_a_single_object_request() {
        let scope = ObjectScope::Names(vec!["web-1".into()]);
        let one = request(ObjectName::One("web-1".into()), "", "");
        let values = to_values(&one, &discovered(), &scope, vec![sample(&[], 4.0)], None);
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].object.name, "web-1");
        let all = request(ObjectName::All, "", "");
        assert!(to_values(&all, &discovered(), &scope, vec![sample(&[], 4.0)], None).is_empty());
    }
}
