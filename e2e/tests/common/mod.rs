//! What the e2e crate's tests share.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The repository's root.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Every object of `kubectl kustomize DIR` (relative to the root), as JSON.
pub fn render(dir: &str) -> Vec<Value> {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .expect("run kubectl kustomize");
    assert!(
        output.status.success(),
        "{dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("YAML object"))
        .collect()
}
