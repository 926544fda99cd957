//! The bits of PromQL the adapter writes and reads: label matchers, string literals, and the
//! series selectors of `seriesQuery`.
//!
//! Every value that comes from a request (object names, selector values) goes through
//! [`Matcher`], which quotes it and, for `=~`/`!~`, escapes regex metacharacters. prometheus-adapter
//! passes such values through unescaped, so a pod name with a `.` matches more than it should.

use std::fmt;

use crate::selector::{Operator, Requirement};

/// A label matching operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Regex => "=~",
            Self::NotRegex => "!~",
        }
    }
}

/// One `label op "value"` matcher; the value is kept unquoted and quoted when written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// The label name.
    pub label: String,
    /// The operator.
    pub op: MatchOp,
    /// The value (for regex operators, already a regex).
    pub value: String,
}

impl Matcher {
    /// `label="value"`.
    pub fn equal(label: &str, value: &str) -> Self {
        Self {
            label: label.to_owned(),
            op: MatchOp::Equal,
            value: value.to_owned(),
        }
    }

    /// A matcher selecting any of `values` exactly: `=` for one value, an escaped alternation
    /// with `=~` for several.
    pub fn any_of<S: AsRef<str>>(label: &str, values: &[S]) -> Self {
        match values {
            [one] => Self::equal(label, one.as_ref()),
            many => Self {
                label: label.to_owned(),
                op: MatchOp::Regex,
                value: alternation(many.iter().map(AsRef::as_ref)),
            },
        }
    }

    /// The matchers for one Kubernetes selector requirement, with prometheus-adapter's mapping:
    /// `in` → `=~`, `notin` → `!~`, `exists` → `!=""`, `!key` → `=""`.
    pub fn for_requirement(requirement: &Requirement) -> Result<Self, UnsupportedOperator> {
        let label = sanitize_label(&requirement.key);
        let (op, value) = match &requirement.operator {
            Operator::Equals(value) => (MatchOp::Equal, value.clone()),
            Operator::NotEquals(value) => (MatchOp::NotEqual, value.clone()),
            Operator::In(set) => (MatchOp::Regex, alternation(set.iter().map(String::as_str))),
            Operator::NotIn(set) => (
                MatchOp::NotRegex,
                alternation(set.iter().map(String::as_str)),
            ),
            Operator::Exists => (MatchOp::NotEqual, String::new()),
            Operator::DoesNotExist => (MatchOp::Equal, String::new()),
            Operator::GreaterThan(_) | Operator::LessThan(_) => {
                return Err(UnsupportedOperator {
                    key: requirement.key.clone(),
                });
            }
        };
        Ok(Self { label, op, value })
    }
}

/// `<` and `>` have no label-matcher equivalent in PromQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the selector operators < and > (on {key:?}) cannot be applied to Prometheus series")]
pub struct UnsupportedOperator {
    key: String,
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.label,
            self.op.as_str(),
            quote(&self.value)
        )
    }
}

/// Joins matchers with commas, as `<<.LabelMatchers>>` expects.
pub fn join_matchers(matchers: &[Matcher]) -> String {
    matchers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A regex matching exactly one of `values`.
fn alternation<'a>(values: impl Iterator<Item = &'a str>) -> String {
    values.map(regex::escape).collect::<Vec<_>>().join("|")
}

/// Kubernetes label keys may contain `.`, `/` and `-`; Prometheus label names may not. The
/// conventional mapping (kube-state-metrics, Prometheus relabelling) replaces them with `_`.
fn sanitize_label(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A PromQL double-quoted string literal.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A series selector as written in a rule's `seriesQuery`: `name{label="v",…}`, `{__name__=~"…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSelector {
    /// The metric name before the braces, if any.
    pub metric: Option<String>,
    /// The matchers inside the braces.
    pub matchers: Vec<Matcher>,
}

/// Why a `seriesQuery` is not a series selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SeriesSelectorError(String);

impl SeriesSelector {
    /// Parses a series selector; only what `/api/v1/series?match[]=` accepts is allowed.
    pub fn parse(text: &str) -> Result<Self, SeriesSelectorError> {
        let fail = |what: &str| SeriesSelectorError(format!("{what} in series selector {text:?}"));
        let text = text.trim();
        let (metric, rest) = match text.find('{') {
            Some(at) => (text[..at].trim(), Some(&text[at..])),
            None => (text, None),
        };
        if !metric.is_empty() && !is_metric_name(metric) {
            return Err(fail(&format!("invalid metric name {metric:?}")));
        }
        let mut matchers = Vec::new();
        if let Some(rest) = rest {
            let inner = rest
                .strip_prefix('{')
                .and_then(|r| r.trim_end().strip_suffix('}'))
                .ok_or_else(|| fail("missing '}'"))?;
            let mut chars = Cursor::new(inner);
            loop {
                chars.skip_space();
                if chars.at_end() {
                    break;
                }
                matchers.push(chars.matcher().map_err(|what| fail(&what))?);
                chars.skip_space();
                if !chars.eat(',') && !chars.at_end() {
                    return Err(fail("expected ',' between matchers"));
                }
            }
        }
        if metric.is_empty() && matchers.is_empty() {
            return Err(fail("empty selector"));
        }
        let has_positive = !metric.is_empty()
            || matchers.iter().any(|m| match m.op {
                MatchOp::Equal | MatchOp::Regex => {
                    regex::Regex::new(&format!("^(?:{})$", m.value)).is_ok_and(|r| !r.is_match(""))
                }
                MatchOp::NotEqual | MatchOp::NotRegex => false,
            });
        if !has_positive {
            return Err(fail(
                "Prometheus needs a metric name or a matcher that does not match the empty string",
            ));
        }
        Ok(Self {
            metric: (!metric.is_empty()).then(|| metric.to_owned()),
            matchers,
        })
    }
}

impl fmt::Display for SeriesSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{{{}}}",
            self.metric.as_deref().unwrap_or(""),
            join_matchers(&self.matchers)
        )
    }
}

fn is_metric_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A tiny cursor over the inside of `{…}`.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }

    fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    fn skip_space(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn matcher(&mut self) -> Result<Matcher, String> {
        let end = self
            .rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest.len());
        let label = &self.rest[..end];
        if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("expected a label name at {:?}", self.rest));
        }
        self.rest = &self.rest[end..];
        self.skip_space();
        let op = [
            ("=~", MatchOp::Regex),
            ("!~", MatchOp::NotRegex),
            ("!=", MatchOp::NotEqual),
            ("=", MatchOp::Equal),
        ]
        .into_iter()
        .find_map(|(text, op)| {
            self.rest.strip_prefix(text).map(|rest| {
                self.rest = rest;
                op
            })
        })
        .ok_or_else(|| format!("expected =, !=, =~ or !~ after {label:?}"))?;
        self.skip_space();
        let value = self.string()?;
        if matches!(op, MatchOp::Regex | MatchOp::NotRegex) {
            regex::Regex::new(&value).map_err(|e| format!("bad regex {value:?}: {e}"))?;
        }
        Ok(Matcher {
            label: label.to_owned(),
            op,
            value,
        })
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self
            .rest
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '\'' | '`'))
            .ok_or_else(|| format!("expected a quoted value at {:?}", self.rest))?;
        let mut value = String::new();
        let mut chars = self.rest[1..].char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.rest = &self.rest[1 + at + c.len_utf8()..];
                    return Ok(value);
                }
                '\\' if quote != '`' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, c)) => value.push(c),
                    None => break,
                },
                c => value.push(c),
            }
        }
        Err("unterminated string".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;

    #[test]
    fn matchers_escape_and_quote_values() {
        let cases = [
            (Matcher::equal("pod", "web-1"), r#"pod="web-1""#),
            (Matcher::any_of("pod", &["web-1"]), r#"pod="web-1""#),
            (
                Matcher::any_of("pod", &["web-1", "web-2"]),
                r#"pod=~"web\\-1|web\\-2""#,
            ),
            (Matcher::any_of("pod", &["a.b", "c"]), r#"pod=~"a\\.b|c""#),
            (Matcher::equal("x", r#"say "hi"\"#), r#"x="say \"hi\"\\""#),
        ];
        for (matcher, expected) in cases {
            assert_eq!(matcher.to_string(), expected);
        }
    }

    #[test]
    fn selector_requirements_become_matchers() {
        let cases = [
            ("app=web", r#"app="web""#),
            ("app==web", r#"app="web""#),
            ("app!=web", r#"app!="web""#),
            ("tier in (a,b.c)", r#"tier=~"a|b\\.c""#),
            ("tier notin (a)", r#"tier!~"a""#),
            ("canary", r#"canary!="""#),
            ("!canary", r#"canary="""#),
            ("app.kubernetes.io/name=x", r#"app_kubernetes_io_name="x""#),
        ];
        for (selector, expected) in cases {
            let selector: Selector = selector.parse().expect("valid");
            let matcher = Matcher::for_requirement(&selector.requirements()[0]).expect("supported");
            assert_eq!(matcher.to_string(), expected, "{selector}");
        }
        let selector: Selector = "n>3".parse().expect("valid");
        assert!(Matcher::for_requirement(&selector.requirements()[0]).is_err());
    }

    #[test]
    fn parses_series_selectors() {
        let cases = [
            (
                r#"http_requests_total{namespace!="",pod!=""}"#,
                r#"http_requests_total{namespace!="",pod!=""}"#,
            ),
            ("up", "up{}"),
            (
                r#"{__name__=~"^container_.*",container!="POD"}"#,
                r#"{__name__=~"^container_.*",container!="POD"}"#,
            ),
            (r#"x{ a = 'b' , c=~`d.*` }"#, r#"x{a="b",c=~"d.*"}"#),
            (r#"x{a="q\"uote"}"#, r#"x{a="q\"uote"}"#),
        ];
        for (input, expected) in cases {
            let parsed = SeriesSelector::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.to_string(), expected);
        }
    }

    #[test]
    fn refuses_bad_series_selectors() {
        let cases = [
            ("", "empty selector"),
            ("{}", "empty selector"),
            (r#"{pod!=""}"#, "does not match the empty string"),
            (r#"{a=~".*"}"#, "does not match the empty string"),
            ("rate(x[1m])", "invalid metric name"),
            (r#"x{a="b""#, "missing '}'"),
            (r#"x{a="b}"#, "unterminated"),
            (r#"x{a~"b"}"#, "expected ="),
            (r#"x{a=b}"#, "quoted value"),
            (r#"x{a="b" c="d"}"#, "expected ','"),
            (r#"x{a=~"("}"#, "bad regex"),
        ];
        for (input, expected) in cases {
            let error = SeriesSelector::parse(input).expect_err(input).to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }
}
