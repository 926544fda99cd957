//! Static OpenAPI documents. The aggregator downloads `/openapi/v2` and `/openapi/v3` from
//! every APIService; anything but 200/304/404 fills kube-apiserver's log with errors
//! (kubernetes #90434), so a small valid description is served, with an ETag.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::paths::{ApiVersion, GROUP};

/// A document with its ETag.
#[derive(Debug, Clone)]
pub struct Document {
    /// The JSON body.
    pub body: bytes::Bytes,
    /// A strong ETag of the body (quoted).
    pub etag: String,
}

impl Document {
    /// The document of a JSON value.
    pub fn new(value: &Value) -> Self {
        let body = serde_json::to_vec(value).expect("JSON serialises");
        let etag = format!("\"{:x}\"", Sha256::digest(&body));
        Self {
            body: body.into(),
            etag,
        }
    }
}

/// All OpenAPI documents served.
#[derive(Debug, Clone)]
pub struct OpenApi {
    /// `/openapi/v2`.
    pub v2: Document,
    /// `/openapi/v3`.
    pub v3_index: Document,
    /// `/openapi/v3/apis/custom.metrics.k8s.io/{v1beta2, v1beta1}`.
    pub v3_versions: Vec<(ApiVersion, Document)>,
}

impl Default for OpenApi {
    fn default() -> Self {
        Self::new()
    }
}

fn paths(version: ApiVersion, ref_prefix: &str) -> Value {
    let base = format!("/apis/{GROUP}/{}", version.as_str());
    let list = json!({"$ref": format!("{ref_prefix}MetricValueList.{}", version.as_str())});
    let get = |description: &str| {
        json!({"get": {
            "description": description,
            "operationId": "getCustomMetric",
            "produces": ["application/json"],
            "responses": {"200": {"description": "OK", "schema": list}}
        }})
    };
    json!({
        format!("{base}/"): {"get": {"description": "metrics served", "responses": {"200": {"description": "OK"}}}},
        format!("{base}/{{resource}}/{{name}}/{{metric}}"): get("a metric of a cluster-scoped object, or of all selected (name *)"),
        format!("{base}/namespaces/{{namespace}}/{{resource}}/{{name}}/{{metric}}"): get("a metric of a namespaced object, or of all selected (name *)"),
        format!("{base}/namespaces/{{namespace}}/metrics/{{metric}}"): get("a metric of the namespace itself"),
    })
}

fn definitions(version: ApiVersion) -> Value {
    let item = match version {
        ApiVersion::V1beta2 => json!({
            "type": "object",
            "required": ["describedObject", "metric", "timestamp", "value"],
            "properties": {
                "describedObject": {"type": "object"},
                "metric": {"type": "object", "properties": {"name": {"type": "string"}, "selector": {"type": "object"}}},
                "timestamp": {"type": "string", "format": "date-time"},
                "windowSeconds": {"type": "integer", "format": "int64"},
                "value": {"type": "string"}
            }
        }),
        ApiVersion::V1beta1 => json!({
            "type": "object",
            "required": ["describedObject", "metricName", "timestamp", "value"],
            "properties": {
                "describedObject": {"type": "object"},
                "metricName": {"type": "string"},
                "selector": {"type": "object"},
                "timestamp": {"type": "string", "format": "date-time"},
                "window": {"type": "integer", "format": "int64"},
                "value": {"type": "string"}
            }
        }),
    };
    json!({
        format!("MetricValueList.{}", version.as_str()): {
            "type": "object",
            "required": ["items"],
            "properties": {
                "kind": {"type": "string"},
                "apiVersion": {"type": "string"},
                "metadata": {"type": "object"},
                "items": {"type": "array", "items": item}
            }
        }
    })
}

impl OpenApi {
    /// Builds every document once.
    pub fn new() -> Self {
        let info = json!({"title": "custom.metrics.k8s.io (ImageClassifier metrics adapter)", "version": env!("CARGO_PKG_VERSION")});
        let mut v2_paths = serde_json::Map::new();
        let mut v2_definitions = serde_json::Map::new();
        for version in ApiVersion::ALL {
            if let Value::Object(p) = paths(version, "#/definitions/") {
                v2_paths.extend(p);
            }
            if let Value::Object(d) = definitions(version) {
                v2_definitions.extend(d);
            }
        }
        let v2 = Document::new(&json!({
            "swagger": "2.0",
            "info": info,
            "paths": v2_paths,
            "definitions": v2_definitions,
        }));
        let v3_versions: Vec<(ApiVersion, Document)> = ApiVersion::ALL
            .into_iter()
            .map(|version| {
                let doc = Document::new(&json!({
                    "openapi": "3.0.0",
                    "info": info,
                    "paths": paths(version, "#/components/schemas/"),
                    "components": {"schemas": definitions(version)},
                }));
                (version, doc)
            })
            .collect();
        let index: serde_json::Map<String, Value> = v3_versions
            .iter()
            .map(|(version, doc)| {
                let path = format!("apis/{GROUP}/{}", version.as_str());
                let hash = doc.etag.trim_matches('"').to_owned();
                (
                    path.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
                )
            })
            .collect();
        let v3_index = Document::new(&json!({"paths": index}));
        Self {
            v2,
            v3_index,
            v3_versions,
        }
    }
}
