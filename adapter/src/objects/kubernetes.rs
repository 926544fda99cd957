//! Object names from the API server, through one metadata-only watch cache per resource.
//!
//! A cache starts the first time a resource is asked about and is kept for the life of the
//! process, so the steady-state cost of a request is a scan of an in-memory store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Mutex;

use super::ObjectsError;
use crate::resources::GroupResource;
use crate::selector::Selector;

type Meta = PartialObjectMeta<DynamicObject>;

/// Watch caches of object metadata, one per resource.
#[derive(Clone)]
pub struct KubeObjects {
    client: Client,
    stores: Arc<Mutex<HashMap<GroupResource, Store<Meta>>>>,
    ready_timeout: Duration,
}

impl std::fmt::Debug for KubeObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeObjects").finish_non_exhaustive()
    }
}

impl KubeObjects {
    /// Caches filled from `client`; a request waits at most `ready_timeout` for a new cache.
    pub fn new(client: Client, ready_timeout: Duration) -> Self {
        Self {
            client,
            stores: Arc::default(),
            ready_timeout,
        }
    }

    /// Names of the selected objects, sorted.
    pub async fn names(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<String>, ObjectsError> {
        let store = self.store(resource).await;
        tokio::time::timeout(self.ready_timeout, store.wait_until_ready())
            .await
            .map_err(|_| ObjectsError::NotReady {
                resource: resource.clone(),
                reason: format!(
                    "no complete list within {:?} (is the API server reachable, and may this \
                     service account list {resource}?)",
                    self.ready_timeout
                ),
            })?
            .map_err(|e| ObjectsError::NotReady {
                resource: resource.clone(),
                reason: e.to_string(),
            })?;
        let mut names: Vec<String> = store
            .state()
            .iter()
            .filter(|object| {
                namespace.is_none() || object.metadata.namespace.as_deref() == namespace
            })
            .filter(|object| {
                let labels: BTreeMap<String, String> =
                    object.metadata.labels.clone().unwrap_or_default();
                selector.matches(&labels)
            })
            .filter_map(|object| object.metadata.name.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn store(&self, resource: &GroupResource) -> Store<Meta> {
        let mut stores = self.stores.lock().await;
        if let Some(store) = stores.get(resource) {
            return store.clone();
        }
        let api_version = resource.api_version();
        let version = api_version.rsplit('/').next().unwrap_or("v1");
        let gvk = GroupVersionKind::gvk(&resource.group, version, &resource.kind());
        let api_resource = ApiResource::from_gvk_with_plural(&gvk, &resource.resource);
        let api: Api<Meta> = Api::all_with(self.client.clone(), &api_resource);
        let writer = reflector::store::Writer::new(api_resource);
        let reader = writer.as_reader();
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        let name = resource.to_string();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(error) = event {
                    tracing::warn!(resource = %name, %error, "object watch failed; retrying");
                }
            }
        });
        tracing::info!(resource = %resource, "started object watch cache");
        stores.insert(resource.clone(), reader.clone());
        reader
    }
}
