//! Every object the manifests render to is valid for every Kubernetes release README names as
//! supported (the list in `e2e/kubernetes-versions`): checked against each release's own
//! OpenAPI schema, fetched by `e2e/k8s-schemas.sh` (`make schemas`; `make test` runs it).
//!
//! The check is what `kubectl apply`'s strict field validation refuses: a field the release does
//! not know (`lifecycle.preStop.sleep` before 1.30), a value of the wrong type, a missing
//! required field, a kind the release does not serve.

mod common;

use common::{ROOT, render};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The releases, as `e2e/kubernetes-versions` lists them.
fn versions() -> Vec<String> {
    std::fs::read_to_string(format!("{ROOT}/e2e/kubernetes-versions"))
        .expect("e2e/kubernetes-versions")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Where `make schemas` put them: `K8S_SCHEMAS` (the Makefile exports it), else the Makefile's
/// default for root, else for other users.
fn schema_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("K8S_SCHEMAS") {
        return dir.into();
    }
    let system = PathBuf::from("/var/cache/imageclassifier/k8s-schemas");
    match std::env::var_os("HOME") {
        Some(home) if !system.exists() => {
            PathBuf::from(home).join(".cache/imageclassifier/k8s-schemas")
        }
        _ => system,
    }
}

/// One release's OpenAPI (swagger 2.0) definitions.
struct Schema {
    version: String,
    definitions: Map<String, Value>,
}

impl Schema {
    fn load(version: &str) -> Self {
        let path = schema_dir().join(format!("{version}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: fetch the schemas first with `make schemas` (e2e/k8s-schemas.sh)",
                path.display()
            )
        });
        let mut document: Value = serde_json::from_str(&text).expect("swagger.json is JSON");
        let Value::Object(definitions) = document["definitions"].take() else {
            panic!("{}: no definitions", path.display());
        };
        Self {
            version: version.to_owned(),
            definitions,
        }
    }

    /// The definition of `apiVersion`/`kind`, if this release serves it.
    fn root(&self, api_version: &str, kind: &str) -> Option<&Value> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.definitions.values().find(|definition| {
            definition["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|gvks| {
                    gvks.iter().any(|gvk| {
                        gvk["group"] == group && gvk["version"] == version && gvk["kind"] == kind
                    })
                })
        })
    }

    /// Every way `object` breaks the release's schema, as `path: problem`.
    fn problems(&self, object: &Value) -> Vec<String> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let mut problems = Vec::new();
        match self.root(api_version, kind) {
            Some(schema) => self.check(object, schema, "", &mut problems),
            None => problems.push(format!("{api_version} {kind} is not served")),
        }
        problems
    }

    fn check(&self, value: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
        if value.is_null() {
            return; // Go's decoder takes null for any field
        }
        if let Some(reference) = schema["$ref"].as_str() {
            let name = reference.trim_start_matches("#/definitions/");
            match self.definitions.get(name) {
                Some(definition) => self.check(value, definition, path, problems),
                None => problems.push(format!("{path}: unknown definition {name}")),
            }
            return;
        }
        let is_integer = value.is_i64() || value.is_u64();
        let expected = match (schema["type"].as_str(), schema["format"].as_str()) {
            (_, Some("int-or-string")) => {
                (!(value.is_string() || is_integer)).then_some("an integer or a string")
            }
            // resource.Quantity: a string in the schema, and numbers are decoded too.
            (Some("string"), _) if schema["description"].as_str().is_some_and(is_quantity) => {
                (!(value.is_string() || value.is_number())).then_some("a quantity")
            }
            (Some("string"), _) => (!value.is_string()).then_some("a string"),
            (Some("integer"), _) => (!is_integer).then_some("an integer"),
            (Some("number"), _) => (!value.is_number()).then_some("a number"),
            (Some("boolean"), _) => (!value.is_boolean()).then_some("a boolean"),
            (Some("array"), _) => match value.as_array() {
                Some(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, &schema["items"], &format!("{path}[{i}]"), problems);
                    }
                    None
                }
                None => Some("a list"),
            },
            (Some("object"), _) => {
                self.check_object(value, schema, path, problems);
                None
            }
            _ => None,
        };
        if let Some(expected) = expected {
            let at = if path.is_empty() { "(object)" } else { path };
            problems.push(format!("{at}: expected {expected}, got {value}"));
        }
    }

    fn check_object(&self, value: &Value, schema: &Value, path: &str, problems: &mut Vec<String>) {
        let Some(fields) = value.as_object() else {
            problems.push(format!("{path}: expected an object, got {value}"));
            return;
        };
        let properties = schema["properties"].as_object();
        let additional = &schema["additionalProperties"];
        if properties.is_none() && additional.is_null() {
            return; // free-form (e.g. RawExtension)
        }
        for (name, field) in fields {
            let field_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => self.check(field, field_schema, &field_path, problems),
                None if additional.is_object() => {
                    self.check(field, additional, &field_path, problems);
                }
                None => problems.push(format!("{field_path}: unknown field")),
            }
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !fields.contains_key(name) {
                problems.push(format!("{path}.{name}: required field missing"));
            }
        }
    }
}

fn is_quantity(description: &str) -> bool {
    description.starts_with("Quantity is a fixed-point representation of a number.")
}

/// The kustomizations that get applied: the system, and its overlay for the local cluster.
const APPLIED: [&str; 2] = ["manifests", "e2e/cluster/manifests"];

#[test]
fn the_manifests_are_valid_for_every_supported_kubernetes_release() {
    let versions = versions();
    assert!(
        versions.len() >= 7,
        "at least 1.28 to 1.34, as README says: {versions:?}"
    );
    let mut rendered = Vec::new();
    for dir in APPLIED {
        rendered.extend(render(dir).into_iter().map(|object| (dir, object)));
    }
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for version in &versions {
        let schema = Schema::load(version);
        for (dir, object) in &rendered {
            for problem in schema.problems(object) {
                let name = format!("{dir}: {} {}", object["kind"], object["metadata"]["name"]);
                problems
                    .entry(format!("{name}: {problem}"))
                    .or_default()
                    .push(schema.version.clone());
            }
        }
    }
    let report: Vec<String> = problems
        .iter()
        .map(|(problem, versions)| format!("{problem} (in {})", versions.join(", ")))
        .collect();
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// The checker itself: what 1.28 refuses and 1.30 takes, and the usual mistakes.
#[test]
fn the_schema_check_finds_what_a_release_refuses() {
    let versions = versions();
    let oldest = Schema::load(&versions[0]);
    let pod = |pre_stop: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{
                "name": "c", "image": "i",
                "lifecycle": {"preStop": pre_stop},
                "resources": {"requests": {"cpu": 2, "memory": "512Mi"}},
                "ports": [{"containerPort": 8080}]
            }]}
        })
    };
    let sleep = pod(json!({"sleep": {"seconds": 5}}));
    assert_eq!(
        oldest.problems(&sleep),
        ["spec.containers[0].lifecycle.preStop.sleep: unknown field"]
    );
    let v1_30 = versions
        .iter()
        .find(|v| v.starts_with("v1.30."))
        .expect("1.30");
    assert!(Schema::load(v1_30).problems(&sleep).is_empty());
    assert!(
        oldest
            .problems(&pod(json!({"exec": {"command": ["sleep", "5"]}})))
            .is_empty()
    );

    let mut broken = pod(json!({"exec": {"command": "sleep 5"}}));
    broken["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("8080");
    broken["spec"]["containers"][0]
        .as_object_mut()
        .expect("object")
        .remove("name");
    assert_eq!(
        oldest.problems(&broken),
        [
            "spec.containers[0].lifecycle.preStop.exec.command: expected a list, got \"sleep 5\"",
            "spec.containers[0].ports[0].containerPort: expected an integer, got \"8080\"",
            "spec.containers[0].name: required field missing",
        ]
    );
    let unserved = json!({"apiVersion": "autoscaling/v9", "kind": "HorizontalPodAutoscaler"});
    assert_eq!(
        oldest.problems(&unserved),
        ["autoscaling/v9 HorizontalPodAutoscaler is not served"]
    );
}
