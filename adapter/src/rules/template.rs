//! prometheus-adapter's `metricsQuery` and `resources.template` templates.
//!
//! They are Go `text/template`s with `<<` `>>` delimiters. Real configs use a handful of
//! actions, so those are supported and anything else is refused when the rules load (a clear
//! error beats a query that renders wrong at request time).

use std::collections::BTreeMap;

/// What a `metricsQuery` template can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Series,
    LabelMatchers,
    GroupBy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
    /// `<<index .LabelValuesByName "label">>`
    LabelValues(String),
}

/// A parsed `metricsQuery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTemplate {
    pieces: Vec<Piece>,
}

/// The values a query is rendered with.
#[derive(Debug, Clone, Default)]
pub struct QueryArgs {
    /// The series name.
    pub series: String,
    /// Comma-joined label matchers.
    pub label_matchers: String,
    /// Comma-joined labels to group by.
    pub group_by: String,
    /// Label → `|`-joined values requested.
    pub label_values_by_name: BTreeMap<String, String>,
}

/// Splits a template into literal text and the trimmed inside of each `<<…>>` action, applying
/// Go's `<<-` / `->>` whitespace trimming.
fn actions(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(start) = rest.find("<<") {
        let mut literal = &rest[..start];
        if trim_next {
            literal = literal.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after
            .find(">>")
            .ok_or_else(|| format!("unclosed '<<' at {:?}", &rest[start..]))?;
        let mut action = &after[..end];
        if let Some(trimmed) = action.strip_prefix('-') {
            literal = literal.trim_end();
            action = trimmed;
        }
        trim_next = false;
        if let Some(trimmed) = action.strip_suffix('-') {
            trim_next = true;
            action = trimmed;
        }
        out.push((literal.to_owned(), Some(action.trim().to_owned())));
        rest = &after[end + 2..];
    }
    let literal = if trim_next { rest.trim_start() } else { rest };
    out.push((literal.to_owned(), None));
    Ok(out)
}

impl QueryTemplate {
    /// Parses a `metricsQuery`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        for (literal, action) in actions(text)? {
            if !literal.is_empty() {
                pieces.push(Piece::Text(literal));
            }
            let Some(action) = action else { continue };
            let piece = match action.as_str() {
                ".Series" => Piece::Field(Field::Series),
                ".LabelMatchers" => Piece::Field(Field::LabelMatchers),
                ".GroupBy" => Piece::Field(Field::GroupBy),
                other => match parse_index(other) {
                    Some(label) => Piece::LabelValues(label),
                    None => {
                        return Err(format!(
                            "unsupported template action <<{other}>>: use <<.Series>>, \
                             <<.LabelMatchers>>, <<.GroupBy>> or \
                             <<index .LabelValuesByName \"label\">>"
                        ));
                    }
                },
            };
            pieces.push(piece);
        }
        Ok(Self { pieces })
    }

    fn uses(&self, field: Field) -> bool {
        self.pieces.contains(&Piece::Field(field))
    }

    /// Whether the query groups by the resource label; without it the result cannot be mapped
    /// back to objects (prometheus-adapter issue #150).
    pub fn groups_by_resource(&self) -> bool {
        self.uses(Field::GroupBy)
    }

    /// Whether the query applies the request's label matchers.
    pub fn uses_label_matchers(&self) -> bool {
        self.uses(Field::LabelMatchers)
    }

    /// The query for one request.
    pub fn render(&self, args: &QueryArgs) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(Field::Series) => out.push_str(&args.series),
                Piece::Field(Field::LabelMatchers) => out.push_str(&args.label_matchers),
                Piece::Field(Field::GroupBy) => out.push_str(&args.group_by),
                Piece::LabelValues(label) => out.push_str(
                    args.label_values_by_name
                        .get(label)
                        .map_or("", String::as_str),
                ),
            }
        }
        out
    }
}

/// `index .LabelValuesByName "pod"` → `pod`.
fn parse_index(action: &str) -> Option<String> {
    let rest = action.strip_prefix("index")?.trim_start();
    let rest = rest.strip_prefix(".LabelValuesByName")?.trim();
    let label = rest.strip_prefix('"')?.strip_suffix('"')?;
    (!label.is_empty()).then(|| label.to_owned())
}

/// A parsed `resources.template`, usable both ways: label → resource and resource → label.
#[derive(Debug, Clone)]
pub struct ResourceTemplate {
    pieces: Vec<ResourcePiece>,
    reverse: regex::Regex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ResourcePiece {
    Text(String),
    Group,
    Resource,
}

impl ResourceTemplate {
    /// Parses a template such as `<<.Resource>>` or `kube_<<.Group>>_<<.Resource>>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut pattern = String::from("^");
        for (literal, action) in actions(text)? {
            if !literal.is_empty() {
                pattern.push_str(&regex::escape(&literal));
                pieces.push(ResourcePiece::Text(literal));
            }
            match action.as_deref() {
                None => {}
                Some(".Group") => {
                    pattern.push_str("(?P<group>.+?)");
                    pieces.push(ResourcePiece::Group);
                }
                Some(".Resource") => {
                    pattern.push_str("(?P<resource>.+?)");
                    pieces.push(ResourcePiece::Resource);
                }
                Some(other) => {
                    return Err(format!(
                        "unsupported resource template action <<{other}>>: use <<.Group>> and \
                         <<.Resource>>"
                    ));
                }
            }
        }
        pattern.push('$');
        if !pieces.contains(&ResourcePiece::Resource) {
            return Err(format!(
                "resource template {text:?} must contain <<.Resource>>"
            ));
        }
        let reverse = regex::Regex::new(&pattern).map_err(|e| e.to_string())?;
        Ok(Self { pieces, reverse })
    }

    /// The (group, resource) a label name stands for, if it fits the template. Group dots are
    /// written as `_` in label names.
    pub fn parse_label(&self, label: &str) -> Option<(String, String)> {
        let captures = self.reverse.captures(label)?;
        let group = captures
            .name("group")
            .map_or(String::new(), |g| g.as_str().replace('_', "."));
        let resource = captures.name("resource")?.as_str().to_owned();
        Some((group, resource))
    }

    /// The label name for a resource: group with `_` for `.`, singular resource name.
    pub fn label_for(&self, group: &str, singular: &str) -> String {
        self.pieces
            .iter()
            .map(|piece| match piece {
                ResourcePiece::Text(text) => text.clone(),
                ResourcePiece::Group => group.replace('.', "_"),
                ResourcePiece::Resource => singular.to_owned(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> QueryArgs {
        QueryArgs {
            series: "http_requests_total".into(),
            label_matchers: r#"namespace="prod",pod=~"web\\-1|web\\-2""#.into(),
            group_by: "pod".into(),
            label_values_by_name: [("pod".to_owned(), "web-1|web-2".to_owned())].into(),
        }
    }

    #[test]
    fn renders_query_templates() {
        let cases = [
            (
                "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
                r#"sum(rate(http_requests_total{namespace="prod",pod=~"web\\-1|web\\-2"}[2m])) by (pod)"#,
            ),
            (
                "sum(<< .Series >>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
                r#"sum(http_requests_total{namespace="prod",pod=~"web\\-1|web\\-2"}) by (pod)"#,
            ),
            (
                r#"count({pod=~"<<index .LabelValuesByName "pod">>"}) by (<<.GroupBy>>)"#,
                r#"count({pod=~"web-1|web-2"}) by (pod)"#,
            ),
            ("x  <<- .GroupBy ->>  y", "xpody"),
            ("plain", "plain"),
        ];
        for (template, expected) in cases {
            let parsed = QueryTemplate::parse(template).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.render(&args()), expected, "{template}");
        }
    }

    #[test]
    fn refuses_unsupported_actions() {
        let cases = [
            ("<<.Foo>>", "unsupported template action <<.Foo>>"),
            ("<<range .GroupBySlice>>x<<end>>", "unsupported"),
            ("sum(<<.Series", "unclosed"),
        ];
        for (template, expected) in cases {
            let error = QueryTemplate::parse(template).expect_err(template);
            assert!(error.contains(expected), "{template}: {error}");
        }
    }

    #[test]
    fn knows_what_a_query_uses() {
        let query = QueryTemplate::parse("sum(<<.Series>>{<<.LabelMatchers>>})").expect("valid");
        assert!(!query.groups_by_resource());
        assert!(query.uses_label_matchers());
    }

    #[test]
    fn resource_templates_work_both_ways() {
        let plain = ResourceTemplate::parse("<<.Resource>>").expect("valid");
        assert_eq!(
            plain.parse_label("pod"),
            Some((String::new(), "pod".into()))
        );
        assert_eq!(plain.label_for("", "pod"), "pod");

        let grouped = ResourceTemplate::parse("kube_<<.Group>>_<<.Resource>>").expect("valid");
        assert_eq!(
            grouped.parse_label("kube_apps_deployment"),
            Some(("apps".into(), "deployment".into()))
        );
        assert_eq!(grouped.parse_label("pod"), None);
        assert_eq!(
            grouped.label_for("networking.k8s.io", "ingress"),
            "kube_networking_k8s_io_ingress"
        );

        assert!(ResourceTemplate::parse("<<.Group>>").is_err());
        assert!(ResourceTemplate::parse("<<.Kind>>").is_err());
    }
}
