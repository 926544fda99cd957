//! Rules: prometheus-adapter's model, compiled and validated once.
//!
//! A rule says which Prometheus series to discover (`seriesQuery`, `seriesFilters`), which of
//! their labels name Kubernetes objects (`resources`), what the metric is called (`name`) and
//! how to query it (`metricsQuery`). [`Rules::parse`] checks everything a request would later
//! need, so a broken file fails at start (or is refused on reload) with the rule named.

pub mod config;
pub mod template;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use regex::Regex;

use crate::promql::SeriesSelector;
use crate::resources::GroupResource;
use config::{DiscoveryRule, RulesFile};
pub use template::QueryArgs;
use template::{QueryTemplate, ResourceTemplate};

/// A validated set of rules.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `rules[2]`: where the rule sits in the file, for errors and self-metrics.
    pub id: String,
    /// The series selector used for discovery.
    pub series_query: SeriesSelector,
    filters: Vec<NameFilter>,
    name_matches: Regex,
    name_as: String,
    resources: ResourceMapper,
    query: QueryTemplate,
    /// The range of the query's first range selector (`[2m]` → 120 s): the `windowSeconds`
    /// the HPA is told the value covers.
    pub window: Option<Duration>,
}

#[derive(Debug, Clone)]
struct NameFilter {
    keep_matching: bool,
    regex: Regex,
}

#[derive(Debug, Clone)]
struct ResourceMapper {
    overrides: BTreeMap<String, GroupResource>,
    template: Option<ResourceTemplate>,
}

/// Why the rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read. (The causes below are part of the message, not a
    /// `source`: an error chain printed whole would otherwise name them twice.)
    #[error(
        "cannot read rules file {path}: {error} (give the rules with --config or ADAPTER_CONFIG; \
         the default rules are manifests/adapter/rules.yaml)"
    )]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The YAML does not have the expected shape.
    #[error("rules file is not valid: {0}")]
    Yaml(serde_norway::Error),
    /// One rule is wrong.
    #[error("{rule} (seriesQuery {series_query:?}): {problem}")]
    Rule {
        /// `rules[N]`.
        rule: String,
        /// Its series query, to find it in the file.
        series_query: String,
        /// What is wrong.
        problem: String,
    },
    /// The file has no `rules`.
    #[error("rules file has no `rules`: nothing would be served")]
    Empty,
}

impl Rules {
    /// Reads and compiles a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|error| RulesError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text)
    }

    /// Compiles rules from YAML text.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let file: RulesFile = serde_norway::from_str(text).map_err(RulesError::Yaml)?;
        if !file.external_rules.is_empty() || file.resource_rules.is_some() {
            tracing::warn!(
                "externalRules and resourceRules are accepted for compatibility but not served: \
                 this adapter implements custom.metrics.k8s.io only"
            );
        }
        if file.rules.is_empty() {
            return Err(RulesError::Empty);
        }
        let rules = file
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                Rule::compile(format!("rules[{index}]"), rule).map_err(|problem| RulesError::Rule {
                    rule: format!("rules[{index}]"),
                    series_query: rule.series_query.clone(),
                    problem,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The rules in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// The rule with this id.
    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.id == id)
    }
}

impl Rule {
    fn compile(id: String, rule: &DiscoveryRule) -> Result<Self, String> {
        let series_query = SeriesSelector::parse(&rule.series_query).map_err(|e| e.to_string())?;
        let filters = rule
            .series_filters
            .iter()
            .map(|filter| match (&filter.is, &filter.is_not) {
                (Some(is), None) => Ok(NameFilter {
                    keep_matching: true,
                    regex: compile_regex("seriesFilters.is", is)?,
                }),
                (None, Some(is_not)) => Ok(NameFilter {
                    keep_matching: false,
                    regex: compile_regex("seriesFilters.isNot", is_not)?,
                }),
                _ => Err("each seriesFilters entry needs exactly one of `is` or `isNot`".into()),
            })
            .collect::<Result<_, String>>()?;
        let matches = if rule.name.matches.is_empty() {
            ".*"
        } else {
            &rule.name.matches
        };
        let name_matches = compile_regex("name.matches", matches)?;
        let name_as = match (rule.name.as_.is_empty(), name_matches.captures_len() - 1) {
            (false, _) => rule.name.as_.clone(),
            (true, 0) => "$0".to_owned(),
            (true, 1) => "$1".to_owned(),
            (true, _) => {
                return Err(
                    "name.matches has more than one capture group, so name.as must say which \
                     to use"
                        .into(),
                );
            }
        };
        let resources = ResourceMapper::compile(&rule.resources)?;
        let query =
            QueryTemplate::parse(&rule.metrics_query).map_err(|e| format!("metricsQuery: {e}"))?;
        if !query.groups_by_resource() {
            return Err(
                "metricsQuery must group by <<.GroupBy>> (e.g. `sum(...) by (<<.GroupBy>>)`), \
                 otherwise results cannot be matched to objects"
                    .into(),
            );
        }
        if !query.uses_label_matchers() {
            return Err(
                "metricsQuery must apply <<.LabelMatchers>>, otherwise every request gets every \
                 object's series"
                    .into(),
            );
        }
        Ok(Self {
            id,
            series_query,
            filters,
            name_matches,
            name_as,
            resources,
            query,
            window: first_range(&rule.metrics_query),
        })
    }

    /// The metric name a discovered series is served as, or `None` when the filters (including
    /// the implicit `name.matches`) drop it.
    pub fn metric_name(&self, series: &str) -> Option<String> {
        let kept = self
            .filters
            .iter()
            .all(|f| f.regex.is_match(series) == f.keep_matching);
        if !kept {
            return None;
        }
        let captures = self.name_matches.captures(series)?;
        let mut name = String::new();
        captures.expand(&self.name_as, &mut name);
        (!name.is_empty()).then_some(name)
    }

    /// The resource a series label names, if any.
    pub fn resource_for_label(&self, label: &str) -> Option<GroupResource> {
        self.resources.resource_for(label)
    }

    /// The series label that names objects of this resource.
    pub fn label_for_resource(&self, resource: &GroupResource) -> Option<String> {
        self.resources.label_for(resource)
    }

    /// The PromQL for one request.
    pub fn render(&self, args: &QueryArgs) -> String {
        self.query.render(args)
    }
}

impl ResourceMapper {
    fn compile(mapping: &config::ResourceMapping) -> Result<Self, String> {
        let overrides = mapping
            .overrides
            .iter()
            .map(|(label, r)| {
                if r.resource.is_empty() {
                    return Err(format!("resources.overrides.{label} needs a resource"));
                }
                Ok((
                    label.clone(),
                    GroupResource::normalized(&r.group, &r.resource),
                ))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        let template = mapping
            .template
            .as_deref()
            .map(ResourceTemplate::parse)
            .transpose()
            .map_err(|e| format!("resources.template: {e}"))?;
        if overrides.is_empty() && template.is_none() {
            return Err(
                "resources needs `overrides` or a `template`, otherwise no series label names \
                 an object"
                    .into(),
            );
        }
        Ok(Self {
            overrides,
            template,
        })
    }

    fn resource_for(&self, label: &str) -> Option<GroupResource> {
        if let Some(resource) = self.overrides.get(label) {
            return Some(resource.clone());
        }
        let (group, resource) = self.template.as_ref()?.parse_label(label)?;
        Some(GroupResource::normalized(&group, &resource))
    }

    fn label_for(&self, resource: &GroupResource) -> Option<String> {
        if let Some((label, _)) = self.overrides.iter().find(|(_, r)| *r == resource) {
            return Some(label.clone());
        }
        let template = self.template.as_ref()?;
        Some(template.label_for(&resource.group, &resource.singular()))
    }
}

fn compile_regex(field: &str, pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("{field}: invalid regex {pattern:?}: {e}"))
}

/// The duration of the first range selector (`[2m]`, `[1m30s]`, `[5m:30s]`) in a query.
fn first_range(query: &str) -> Option<Duration> {
    let range = Regex::new(r"\[((?:[0-9]+(?:ms|s|m|h|d|w|y))+)(?::[^\]]*)?\]").ok()?;
    let unit = Regex::new(r"([0-9]+)(ms|s|m|h|d|w|y)").ok()?;
    let text = range.captures(query)?.get(1)?.as_str();
    let millis = unit
        .captures_iter(text)
        .map(|c| {
            let n: u64 = c[1].parse().unwrap_or(0);
            let scale = match &c[2] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                _ => 31_536_000_000,
            };
            n.saturating_mul(scale)
        })
        .fold(0_u64, u64::saturating_add);
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests;
