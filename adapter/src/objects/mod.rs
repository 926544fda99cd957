//! Which objects a request is about: the `labelSelector` (or the object name) resolved to
//! something a PromQL query can be restricted to.
//!
//! Two sources, chosen with `--objects-from`:
//! - `kubernetes`: object names from a watch cache (kube-rs reflector) of each resource asked
//!   about; no LIST per request, unlike prometheus-adapter. The query is restricted to those
//!   names.
//! - `prometheus`: no API server needed. The object labels are those on the series (the scrape
//!   config copies pod labels onto them), so the selector itself becomes label matchers.

mod kubernetes;

pub use kubernetes::KubeObjects;

use crate::resources::GroupResource;
use crate::selector::Selector;

/// Where object names come from.
#[derive(Debug)]
pub enum Objects {
    /// Read object labels from the series themselves.
    Prometheus,
    /// Read objects from the API server's watch cache.
    Kubernetes(KubeObjects),
}

/// The objects a request covers, in the form the query builder applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectScope {
    /// Exactly these object names (possibly none).
    Names(Vec<String>),
    /// Every object whose series labels match this selector.
    SeriesLabels(Selector),
}

/// Why objects could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// The watch cache for a resource did not fill in time (API server unreachable, RBAC).
    #[error("the object cache for {resource} is not ready: {reason}")]
    NotReady {
        /// The resource.
        resource: GroupResource,
        /// Why.
        reason: String,
    },
}

impl Objects {
    /// The objects of `resource` in `namespace` (all namespaces when `None`) selected by
    /// `selector`.
    pub async fn select(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<ObjectScope, ObjectsError> {
        match self {
            Self::Prometheus => Ok(ObjectScope::SeriesLabels(selector.clone())),
            Self::Kubernetes(kube) => kube
                .names(resource, namespace, selector)
                .await
                .map(ObjectScope::Names),
        }
    }
}
