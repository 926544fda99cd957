//! The ImageClassifier metrics adapter: a `custom.metrics.k8s.io` API server (v1beta1 and
//! v1beta2) that answers the HorizontalPodAutoscaler from Prometheus series.
//!
//! Request flow: [`api`] parses the path into a metric request, [`registry`] finds the rule
//! that serves the metric, [`objects`] turns the label selector into the objects asked about,
//! [`provider`] renders the rule's PromQL and queries [`prom`], and [`api`] writes the
//! `MetricValueList`. [`auth`] guards all of it; [`server`] wires it up.

pub mod api;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod objects;
pub mod prom;
pub mod promql;
pub mod provider;
pub mod quantity;
pub mod registry;
pub mod resources;
pub mod rules;
pub mod selector;
pub mod server;
