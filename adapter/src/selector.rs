//! Kubernetes label selectors: `a=b,c!=d,e in (x,y),f notin (z),g,!h,i>3`.
//!
//! The HPA sends its scale target's selector as `labelSelector` and a metric's selector as
//! `metricLabelSelector`. Both use this grammar (apimachinery `labels.Parse`). A selector that
//! does not parse is the caller's mistake and becomes a 400, so errors say what was wrong where.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A parsed label selector: all requirements must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One `key <operator> values` term of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key, e.g. `app` or `app.kubernetes.io/name`.
    pub key: String,
    /// What the label's value must satisfy.
    pub operator: Operator,
}

/// The operators of the Kubernetes selector grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` or `key==value`.
    Equals(String),
    /// `key!=value` (also true when the label is absent).
    NotEquals(String),
    /// `key in (a,b)`.
    In(BTreeSet<String>),
    /// `key notin (a,b)` (also true when the label is absent).
    NotIn(BTreeSet<String>),
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>3`: the value parses as an integer greater than this.
    GreaterThan(i64),
    /// `key<3`: the value parses as an integer less than this.
    LessThan(i64),
}

/// Why a selector string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {input:?}: {problem}")]
pub struct SelectorError {
    input: String,
    problem: String,
}

impl Selector {
    /// The requirements, in the order given.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether the selector has no requirements (and so selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(labels.get(&r.key)))
    }
}

impl Requirement {
    fn matches(&self, value: Option<&String>) -> bool {
        match (&self.operator, value) {
            (Operator::Exists, value) => value.is_some(),
            (Operator::DoesNotExist, value) => value.is_none(),
            (Operator::Equals(wanted), Some(value)) => value == wanted,
            (Operator::In(set), Some(value)) => set.contains(value),
            (Operator::NotEquals(unwanted), value) => value != Some(unwanted),
            (Operator::NotIn(set), value) => value.is_none_or(|v| !set.contains(v)),
            (Operator::GreaterThan(bound), Some(value)) => {
                value.parse::<i64>().is_ok_and(|v| v > *bound)
            }
            (Operator::LessThan(bound), Some(value)) => {
                value.parse::<i64>().is_ok_and(|v| v < *bound)
            }
            (_, None) => false,
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| SelectorError {
            input: input.to_owned(),
            problem,
        };
        let mut requirements = Vec::new();
        for term in split_terms(input).map_err(error)? {
            requirements.push(parse_requirement(term).map_err(error)?);
        }
        Ok(Self { requirements })
    }
}

/// Splits at the commas that separate requirements (not those inside `in (a,b)`).
fn split_terms(input: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0_u32;
    let mut start = 0;
    for (at, c) in input.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("nested parentheses".into()),
            ')' if depth == 1 => depth = 0,
            ')' => return Err("unbalanced ')'".into()),
            ',' if depth == 0 => {
                terms.push(&input[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("missing ')'".into());
    }
    terms.push(&input[start..]);
    if terms.len() == 1 && terms[0].trim().is_empty() {
        return Ok(Vec::new());
    }
    Ok(terms)
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    let term = term.trim();
    if term.is_empty() {
        return Err("empty requirement (two commas in a row?)".into());
    }
    if let Some(key) = term.strip_prefix('!') {
        let key = validate_key(key.trim())?;
        return Ok(Requirement {
            key,
            operator: Operator::DoesNotExist,
        });
    }
    let key_end = term
        .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '<' | '>'))
        .unwrap_or(term.len());
    let key = validate_key(&term[..key_end])?;
    let rest = term[key_end..].trim_start();
    let operator = if rest.is_empty() {
        Operator::Exists
    } else if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        Operator::Equals(validate_value(value.trim())?)
    } else if let Some(value) = rest.strip_prefix("!=") {
        Operator::NotEquals(validate_value(value.trim())?)
    } else if let Some(value) = rest.strip_prefix('>') {
        Operator::GreaterThan(parse_integer(value.trim())?)
    } else if let Some(value) = rest.strip_prefix('<') {
        Operator::LessThan(parse_integer(value.trim())?)
    } else if let Some(set) = strip_word(rest, "notin") {
        Operator::NotIn(parse_set(set)?)
    } else if let Some(set) = strip_word(rest, "in") {
        Operator::In(parse_set(set)?)
    } else {
        return Err(format!(
            "expected one of =, ==, !=, in, notin, <, > after {key:?}, found {rest:?}"
        ));
    };
    Ok(Requirement { key, operator })
}

/// `rest` without the leading keyword `word`, if the keyword is followed by a space or `(`.
fn strip_word<'a>(rest: &'a str, word: &str) -> Option<&'a str> {
    let after = rest.strip_prefix(word)?;
    after
        .starts_with(|c: char| c.is_whitespace() || c == '(')
        .then_some(after)
}

fn parse_set(text: &str) -> Result<BTreeSet<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised list of values, found {text:?}"))?;
    let values = inner
        .split(',')
        .map(|v| validate_value(v.trim()))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if inner.trim().is_empty() {
        return Err("a set needs at least one value".into());
    }
    Ok(values)
}

fn parse_integer(text: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an integer (needed by < and >)"))
}

/// Label keys: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn validate_key(key: &str) -> Result<String, String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(is_dns_label))
    {
        return Err(format!(
            "label key prefix {prefix:?} must be a DNS subdomain"
        ));
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(format!(
            "invalid label key {key:?}: a name of at most 63 characters, alphanumeric at both \
             ends, with '-', '_' or '.' between"
        ));
    }
    Ok(key.to_owned())
}

fn validate_value(value: &str) -> Result<String, String> {
    if value.is_empty() || is_label_name(value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 characters, alphanumeric at both ends, \
             with '-', '_' or '.' between"
        ))
    }
}

fn is_label_name(text: &str) -> bool {
    text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && text.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(",");
            match &r.operator {
                Operator::Equals(v) => write!(f, "{}={v}", r.key)?,
                Operator::NotEquals(v) => write!(f, "{}!={v}", r.key)?,
                Operator::In(set) => write!(f, "{} in ({})", r.key, join(set))?,
                Operator::NotIn(set) => write!(f, "{} notin ({})", r.key, join(set))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
                Operator::GreaterThan(n) => write!(f, "{}>{n}", r.key)?,
                Operator::LessThan(n) => write!(f, "{}<{n}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    fn req(key: &str, operator: Operator) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
        }
    }

    #[test]
    fn parses_the_whole_grammar() {
        use Operator::*;
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("  ", vec![]),
            ("app=demo", vec![req("app", Equals("demo".into()))]),
            ("app == demo", vec![req("app", Equals("demo".into()))]),
            ("app!=demo", vec![req("app", NotEquals("demo".into()))]),
            ("app=", vec![req("app", Equals(String::new()))]),
            (
                "tier in (web, api)",
                vec![req("tier", In(set(&["web", "api"])))],
            ),
            ("tier notin (web)", vec![req("tier", NotIn(set(&["web"])))]),
            ("tier in(web)", vec![req("tier", In(set(&["web"])))]),
            ("canary", vec![req("canary", Exists)]),
            ("!canary", vec![req("canary", DoesNotExist)]),
            ("! canary", vec![req("canary", DoesNotExist)]),
            ("replicas>3", vec![req("replicas", GreaterThan(3))]),
            ("replicas < 10", vec![req("replicas", LessThan(10))]),
            (
                "app.kubernetes.io/name=inference",
                vec![req("app.kubernetes.io/name", Equals("inference".into()))],
            ),
            (
                "a=b,c in (x,y),!d,e",
                vec![
                    req("a", Equals("b".into())),
                    req("c", In(set(&["x", "y"]))),
                    req("d", DoesNotExist),
                    req("e", Exists),
                ],
            ),
            ("index=1", vec![req("index", Equals("1".into()))]),
            ("inx in (a)", vec![req("inx", In(set(&["a"])))]),
        ];
        for (input, expected) in cases {
            let parsed: Selector = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.requirements(), expected.as_slice(), "{input}");
        }
    }

    #[test]
    fn refuses_malformed_selectors() {
        let cases = [
            ("app=demo,", "empty requirement"),
            (",app", "empty requirement"),
            ("app in (a", "missing ')'"),
            ("app in a", "parenthesised"),
            ("app in ()", "at least one value"),
            ("app=(x)", "invalid label value"),
            ("app = has space", "invalid label value"),
            ("-app=x", "invalid label key"),
            ("Bad_Prefix/app=x", "DNS subdomain"),
            ("app ~ x", "expected one of"),
            ("count>many", "not an integer"),
            ("app)=x", "unbalanced"),
            ("app in ((a))", "nested"),
        ];
        for (input, expected) in cases {
            let error = input.parse::<Selector>().expect_err(input).to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
    }

    #[test]
    fn matches_labels() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front"), ("rank", "5")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let cases = [
            ("", true),
            ("app=web", true),
            ("app=api", false),
            ("app!=api", true),
            ("missing!=x", true),
            ("tier in (front,back)", true),
            ("tier notin (front)", false),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("rank>4", true),
            ("rank<5", false),
            ("app>1", false),
            ("app=web,tier=back", false),
        ];
        for (selector, expected) in cases {
            let selector: Selector = selector.parse().expect("valid");
            assert_eq!(selector.matches(&labels), expected, "{selector}");
        }
    }

    #[test]
    fn display_round_trips() {
        for input in [
            "a=b",
            "a!=b",
            "a in (x,y)",
            "a notin (x)",
            "a",
            "!a",
            "a>1",
            "a<2,b=c",
        ] {
            let selector: Selector = input.parse().expect("valid");
            assert_eq!(selector.to_string(), input);
            assert_eq!(selector.to_string().parse::<Selector>(), Ok(selector));
        }
    }
}
