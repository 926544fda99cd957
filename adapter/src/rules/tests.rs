use super::*;

const PA_CONFIG: &str = include_str!("../../tests/fixtures/prometheus-adapter-config.yaml");
const DEFAULT_RULES: &str = include_str!("../../rules.yaml");

fn one_rule(yaml: &str) -> Result<Rules, RulesError> {
    Rules::parse(&format!("rules:\n{yaml}"))
}

const BASE: &str = r#"
- seriesQuery: 'http_requests_total{namespace!="",pod!=""}'
  resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: 'sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)'
"#;

#[test]
fn the_default_rules_serve_the_design_metrics() {
    let rules = Rules::parse(DEFAULT_RULES).expect("default rules compile");
    let names: Vec<_> = rules
        .iter()
        .filter_map(|rule| rule.metric_name(rule.series_query.metric.as_deref()?))
        .collect();
    assert_eq!(
        names,
        [
            "inference_requests_per_second",
            "inference_in_flight_requests",
            "dispatcher_requests_per_second"
        ]
    );
    let dispatcher = rules.get("rules[2]").expect("three rules");
    assert_eq!(
        dispatcher.resource_for_label("app"),
        Some(GroupResource::core("services"))
    );
}

#[test]
fn a_prometheus_adapter_config_loads_unchanged() {
    let rules = Rules::parse(PA_CONFIG).expect("prometheus-adapter config compiles");
    let first = rules.get("rules[0]").expect("rule");
    assert_eq!(
        first.metric_name("inference_requests_total").as_deref(),
        Some("inference_requests_per_second")
    );
    assert_eq!(
        first.metric_name("inference_request_duration_seconds_total"),
        None
    );
    assert_eq!(
        first.resource_for_label("pod"),
        Some(GroupResource::core("pods"))
    );
    assert_eq!(
        first.resource_for_label("namespace"),
        Some(GroupResource::core("namespaces"))
    );
    assert_eq!(
        first
            .label_for_resource(&GroupResource::core("pods"))
            .as_deref(),
        Some("pod")
    );
    assert_eq!(first.window, Some(Duration::from_secs(120)));
    let second = rules.get("rules[1]").expect("rule");
    assert_eq!(
        second
            .metric_name("inference_in_flight_requests")
            .as_deref(),
        Some("inference_in_flight_requests")
    );
    assert_eq!(second.window, None);
}

#[test]
fn naming_follows_matches_and_as() {
    let cases = [
        (
            r#"{matches: "^(.*)_total$", as: "${1}_per_second"}"#,
            "a_total",
            Some("a_per_second"),
        ),
        (r#"{matches: "^(.*)_total$"}"#, "a_total", Some("a")),
        (r#"{matches: "^(.*)_total$"}"#, "a_count", None),
        (r#"{matches: "_total$"}"#, "a_total", Some("_total")),
        (
            r#"{matches: "^(?P<base>.*)_total$", as: "${base}_rate"}"#,
            "a_total",
            Some("a_rate"),
        ),
        ("{}", "anything", Some("anything")),
    ];
    for (name, series, expected) in cases {
        let yaml = BASE.replace(r#"{matches: "^(.*)_total$", as: "${1}_per_second"}"#, name);
        let rules = one_rule(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rule = rules.get("rules[0]").expect("rule");
        assert_eq!(
            rule.metric_name(series).as_deref(),
            expected,
            "{name} on {series}"
        );
    }
}

#[test]
fn series_filters_apply_before_naming() {
    let yaml = BASE.replace(
        "  resources:",
        "  seriesFilters: [{is: \"^http_\"}, {isNot: \"_errors_\"}]\n  resources:",
    );
    let rules = one_rule(&yaml).expect("compiles");
    let rule = rules.get("rules[0]").expect("rule");
    assert!(rule.metric_name("http_requests_total").is_some());
    assert!(rule.metric_name("grpc_requests_total").is_none());
    assert!(rule.metric_name("http_errors_total").is_none());
}

#[test]
fn windows_come_from_the_first_range() {
    let cases = [
        ("[2m]", Some(120_000_u64)),
        ("[30s]", Some(30_000)),
        ("[1m30s]", Some(90_000)),
        ("[500ms]", Some(500)),
        ("[5m:30s]", Some(300_000)),
        ("", None),
    ];
    for (range, expected) in cases {
        let yaml = BASE.replace("[2m]", range);
        let rules = one_rule(&yaml).expect("compiles");
        let window = rules.get("rules[0]").expect("rule").window;
        assert_eq!(
            window.map(|w| w.as_millis()),
            expected.map(u128::from),
            "{range}"
        );
    }
}

#[test]
fn bad_rules_fail_with_the_rule_named() {
    let cases: Vec<(String, &str)> = vec![
        (
            BASE.replace(
                "seriesQuery: 'http_requests_total{",
                "seriesQuery: 'rate(x{",
            ),
            "invalid metric name",
        ),
        (
            BASE.replace("^(.*)_total$", "^(.*_total$"),
            "name.matches: invalid regex",
        ),
        (
            BASE.replace(r#", as: "${1}_per_second""#, "")
                .replace("^(.*)_total$", "^(.*)_(.*)$"),
            "more than one capture group",
        ),
        (
            BASE.replace("<<.Series>>", "<<.Serie>>"),
            "unsupported template action <<.Serie>>",
        ),
        (
            BASE.replace(" by (<<.GroupBy>>)", ""),
            "must group by <<.GroupBy>>",
        ),
        (
            BASE.replace("<<.LabelMatchers>>", ""),
            "must apply <<.LabelMatchers>>",
        ),
        (
            BASE.replace(
                "resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}",
                "resources: {}",
            ),
            "resources needs",
        ),
        (
            BASE.replace(
                "resources: {overrides:",
                "resources: {template: \"<<.Kind>>\", overrides:",
            ),
            "resources.template",
        ),
        (
            BASE.replace(
                "  resources:",
                "  seriesFilters: [{is: a, isNot: b}]\n  resources:",
            ),
            "exactly one of",
        ),
        (
            BASE.replace("metricsQuery", "metricQuery"),
            "unknown field `metricQuery`",
        ),
    ];
    for (yaml, expected) in cases {
        let error = one_rule(&yaml).expect_err(expected).to_string();
        assert!(
            error.contains(expected),
            "expected {expected:?} in: {error}"
        );
        if !expected.starts_with("unknown field") {
            assert!(error.starts_with("rules[0] (seriesQuery "), "{error}");
        }
    }
    assert!(matches!(Rules::parse("rules: []"), Err(RulesError::Empty)));
    assert!(matches!(Rules::parse("rules: {"), Err(RulesError::Yaml(_))));
}

#[test]
fn rendering_fills_the_template() {
    let rules = one_rule(BASE).expect("compiles");
    let rule = rules.get("rules[0]").expect("rule");
    let query = rule.render(&QueryArgs {
        series: "http_requests_total".into(),
        label_matchers: r#"namespace="prod",pod=~"web\\-1|web\\-2""#.into(),
        group_by: "pod".into(),
        ..QueryArgs::default()
    });
    assert_eq!(
        query,
        r#"sum(rate(http_requests_total{namespace="prod",pod=~"web\\-1|web\\-2"}[2m])) by (pod)"#
    );
}

#[test]
fn a_missing_rules_file_is_named_once_with_the_flag_that_sets_it() {
    let error = Rules::load(std::path::Path::new("/nonexistent/rules.yaml")).expect_err("missing");
    // As the binary prints it: the whole chain.
    let printed = format!("{:#}", anyhow::Error::from(error));
    assert_eq!(printed.matches("No such file").count(), 1, "{printed}");
    assert!(
        printed.contains("/nonexistent/rules.yaml") && printed.contains("--config"),
        "{printed}"
    );
}
