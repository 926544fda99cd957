//! Which metrics exist, and for which resources: the result of series discovery.
//!
//! prometheus-adapter's users complain that metrics appear late (a relist every 10 minutes)
//! and vanish when one relist fails. Here:
//! - a metric asked for but not yet known triggers a relist at request time (at most one per
//!   `lookup_interval`, shared by concurrent requests), so a new metric is served on first ask;
//! - a failed relist changes nothing, and a metric is dropped only after it has been missing
//!   from `drop_after` successful relists in a row (sticky);
//! - readers never wait on a relist: they read an immutable [`Snapshot`] swapped in atomically.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::metrics::Metrics;
use crate::prom::{PromError, Prometheus};
use crate::resources::GroupResource;
use crate::rules::{Rule, Rules};

/// A metric as the API names it: metric name and the resource it describes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricKey {
    /// The resource (`pods`, `services`, `namespaces`…).
    pub resource: GroupResource,
    /// The metric name.
    pub metric: String,
}

/// Everything needed to query one discovered metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The rule that serves it.
    pub rule_id: String,
    /// The Prometheus series name.
    pub series: String,
    /// The series label holding object names.
    pub resource_label: String,
    /// The series label holding the namespace, when the series has one.
    pub namespace_label: Option<String>,
}

impl Discovered {
    /// Whether values are per namespace (the series carries the namespace label).
    pub fn namespaced(&self) -> bool {
        self.namespace_label.is_some()
    }
}

/// An immutable view: the rules in force and the metrics discovered with them.
#[derive(Debug)]
pub struct Snapshot {
    /// The rules.
    pub rules: Arc<Rules>,
    /// Discovered metrics.
    pub metrics: BTreeMap<MetricKey, Discovered>,
}

impl Snapshot {
    /// The metric and the rule serving it.
    pub fn find(&self, key: &MetricKey) -> Option<(&Discovered, &Rule)> {
        let discovered = self.metrics.get(key)?;
        let rule = self.rules.get(&discovered.rule_id)?;
        Some((discovered, rule))
    }
}

/// Discovery settings.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// How far back series count as present (`/api/v1/series?start=`).
    pub max_age: Duration,
    /// Successful relists a metric may be missing from before it is dropped.
    pub drop_after: u32,
    /// Least time between two request-triggered relists.
    pub lookup_interval: Duration,
}

#[derive(Debug)]
struct Sticky {
    entries: BTreeMap<MetricKey, (Discovered, u32)>,
    last_attempt: Option<Instant>,
    /// Why the last relist failed, if it did: an unknown metric then cannot be called absent.
    last_error: Option<PromError>,
}

/// The metric registry; cheap to read from many requests at once.
#[derive(Debug)]
pub struct Registry {
    snapshot: ArcSwap<Snapshot>,
    sticky: Mutex<Sticky>,
    prometheus: Prometheus,
    config: RegistryConfig,
    metrics: Arc<Metrics>,
}

/// What a relist found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelistReport {
    /// Series returned by Prometheus, over all rules.
    pub series: usize,
    /// Metrics served after the relist.
    pub metrics: usize,
}

impl Registry {
    /// An empty registry serving `rules`; call [`Registry::relist`] to fill it.
    pub fn new(
        rules: Rules,
        prometheus: Prometheus,
        config: RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot {
                rules: Arc::new(rules),
                metrics: BTreeMap::new(),
            }),
            sticky: Mutex::new(Sticky {
                entries: BTreeMap::new(),
                last_attempt: None,
                last_error: None,
            }),
            prometheus,
            config,
            metrics,
        }
    }

    /// The current view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Finds a metric, relisting first when it is unknown and the last relist is older than
    /// the lookup interval. Errors only when that relist fails and the metric is unknown.
    pub async fn lookup(&self, key: &MetricKey) -> Result<Option<Arc<Snapshot>>, PromError> {
        let snapshot = self.snapshot();
        if snapshot.find(key).is_some() {
            return Ok(Some(snapshot));
        }
        let mut sticky = self.sticky.lock().await;
        // Another request may have relisted while this one waited for the lock.
        let snapshot = self.snapshot();
        if snapshot.find(key).is_some() {
            return Ok(Some(snapshot));
        }
        let recent = sticky
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.config.lookup_interval);
        if recent {
            if let Some(error) = &sticky.last_error {
                return Err(error.clone());
            }
        } else {
            tracing::debug!(metric = %key.metric, resource = %key.resource, "unknown metric: relisting now");
            self.relist_locked(&mut sticky).await?;
        }
        let snapshot = self.snapshot();
        Ok(snapshot.find(key).is_some().then_some(snapshot))
    }

    /// Lists every rule's series and updates the registry. On failure nothing changes.
    pub async fn relist(&self) -> Result<RelistReport, PromError> {
        let mut sticky = self.sticky.lock().await;
        self.relist_locked(&mut sticky).await
    }

    /// Swaps in new rules. Metrics whose rule still exists and still names the series the same
    /// way are kept until the next relist confirms or drops them.
    pub async fn set_rules(&self, rules: Rules) {
        let mut sticky = self.sticky.lock().await;
        sticky.entries.retain(|key, (discovered, _)| {
            rules.get(&discovered.rule_id).is_some_and(|rule| {
                rule.metric_name(&discovered.series).as_deref() == Some(key.metric.as_str())
                    && rule.resource_for_label(&discovered.resource_label).as_ref()
                        == Some(&key.resource)
            })
        });
        sticky.last_attempt = None;
        self.publish(Arc::new(rules), &sticky);
    }

    async fn relist_locked(&self, sticky: &mut Sticky) -> Result<RelistReport, PromError> {
        sticky.last_attempt = Some(Instant::now());
        let rules = self.snapshot().rules.clone();
        let start = unix_now() - i64::try_from(self.config.max_age.as_secs()).unwrap_or(0);
        // Rules sharing a seriesQuery share one call, as in prometheus-adapter.
        let mut by_query: BTreeMap<String, Vec<&Rule>> = BTreeMap::new();
        for rule in rules.iter() {
            by_query
                .entry(rule.series_query.to_string())
                .or_default()
                .push(rule);
        }
        let calls = by_query.values().map(|rules| async move {
            let series = self
                .prometheus
                .series(&rules[0].series_query, start)
                .await?;
            Ok::<_, PromError>((rules, series))
        });
        let results = match futures::future::try_join_all(calls).await {
            Ok(results) => results,
            Err(error) => {
                tracing::warn!(%error, "series discovery failed; keeping the metrics already known");
                sticky.last_error = Some(error.clone());
                return Err(error);
            }
        };
        sticky.last_error = None;
        let mut found = BTreeMap::new();
        let mut series_count = 0;
        for (rules, series) in &results {
            series_count += series.len();
            for labels in series {
                for rule in rules.iter() {
                    discover(rule, labels, &mut found);
                }
            }
        }
        for (key, (_, missed)) in &mut sticky.entries {
            *missed = if found.contains_key(key) {
                0
            } else {
                *missed + 1
            };
        }
        sticky
            .entries
            .retain(|_, (_, missed)| *missed < self.config.drop_after);
        for (key, discovered) in found {
            sticky.entries.insert(key, (discovered, 0));
        }
        self.publish(rules, sticky);
        let report = RelistReport {
            series: series_count,
            metrics: sticky.entries.len(),
        };
        tracing::debug!(
            series = report.series,
            metrics = report.metrics,
            "relisted series"
        );
        Ok(report)
    }

    fn publish(&self, rules: Arc<Rules>, sticky: &Sticky) {
        let metrics: BTreeMap<_, _> = sticky
            .entries
            .iter()
            .map(|(key, (discovered, _))| (key.clone(), discovered.clone()))
            .collect();
        self.metrics
            .discovered
            .set(i64::try_from(metrics.len()).unwrap_or(i64::MAX));
        self.snapshot.store(Arc::new(Snapshot { rules, metrics }));
    }
}

/// The metrics one series yields under one rule: one per label that names a resource.
fn discover(
    rule: &Rule,
    labels: &std::collections::HashMap<String, String>,
    found: &mut BTreeMap<MetricKey, Discovered>,
) {
    let Some(series) = labels.get("__name__") else {
        return;
    };
    let Some(metric) = rule.metric_name(series) else {
        return;
    };
    let resources: Vec<(&String, GroupResource)> = labels
        .keys()
        .filter_map(|label| Some((label, rule.resource_for_label(label)?)))
        .collect();
    let namespace_label = resources
        .iter()
        .find(|(_, resource)| resource.is_namespaces())
        .map(|(label, _)| (*label).clone());
    for (label, resource) in resources {
        let cluster_scoped = resource.is_namespaces() || resource.namespaced() == Some(false);
        let key = MetricKey {
            resource,
            metric: metric.clone(),
        };
        found.entry(key).or_insert_with(|| Discovered {
            rule_id: rule.id.clone(),
            series: series.clone(),
            resource_label: label.clone(),
            namespace_label: if cluster_scoped {
                None
            } else {
                namespace_label.clone()
            },
        });
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_yields_a_metric_per_resource_label() {
        let rules = Rules::parse(include_str!("../rules.yaml")).expect("default rules");
        let rule = rules.get("rules[0]").expect("rule");
        let labels = [
            ("__name__", "inference_requests_total"),
            ("namespace", "imageclassifier"),
            ("pod", "inference-0"),
            ("code", "200"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut found = BTreeMap::new();
        discover(rule, &labels, &mut found);
        let keys: Vec<String> = found
            .keys()
            .map(|k| format!("{}/{}", k.resource, k.metric))
            .collect();
        assert_eq!(
            keys,
            [
                "namespaces/inference_requests_per_second",
                "pods/inference_requests_per_second"
            ]
        );
        let pods = &found[&MetricKey {
            resource: GroupResource::core("pods"),
            metric: "inference_requests_per_second".into(),
        }];
        assert_eq!(pods.resource_label, "pod");
        assert_eq!(pods.namespace_label.as_deref(), Some("namespace"));
        let namespaces = &found[&MetricKey {
            resource: GroupResource::core("namespaces"),
            metric: "inference_requests_per_second".into(),
        }];
        assert!(!namespaces.namespaced());
    }

    #[test]
    fn series_the_rule_does_not_name_yield_nothing() {
        let rules = Rules::parse(include_str!("../rules.yaml")).expect("default rules");
        let rule = rules.get("rules[0]").expect("rule");
        let labels = [("__name__", "inference_requests"), ("pod", "p")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut found = BTreeMap::new();
        discover(rule, &labels, &mut found);
        assert!(found.is_empty());
    }
}
