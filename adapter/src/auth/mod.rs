//! Authentication and authorization of API requests, as an extension API server does them.
//! Health endpoints are never guarded (kubelet probes carry no credentials).

pub mod authn;
pub mod authz;
pub mod tls;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::metrics::Metrics;
use authn::{RequestHeaderAuth, TokenReviewer, UserInfo};
use authz::{Attributes, Authorizer};
use tls::PeerCertificates;

/// The request guard: who is calling, and may they.
#[derive(Debug)]
pub struct Guard {
    /// Front-proxy settings; swapped when the ConfigMap changes.
    pub request_header: ArcSwapOption<RequestHeaderAuth>,
    /// Bearer tokens, when an API server is reachable.
    pub tokens: Option<TokenReviewer>,
    /// Authorization; `None` allows every authenticated caller.
    pub authorizer: Option<Authorizer>,
    /// Counts refusals.
    pub metrics: Arc<Metrics>,
}

impl Guard {
    /// The caller, in the groups the API server would give it.
    async fn authenticate(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'static>],
        headers: &axum::http::HeaderMap,
    ) -> Result<UserInfo, String> {
        self.identify(chain, headers)
            .await
            .map(UserInfo::with_authenticated_group)
    }

    /// The caller as the credentials name it.
    async fn identify(
        &self,
        chain: &[rustls::pki_types::CertificateDer<'static>],
        headers: &axum::http::HeaderMap,
    ) -> Result<UserInfo, String> {
        let mut reasons = Vec::new();
        if let Some(request_header) = self.request_header.load().as_deref() {
            match request_header.authenticate(chain, headers) {
                Ok(Some(user)) => return Ok(user),
                Ok(None) => {}
                Err(reason) => reasons.push(reason),
            }
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if let (Some(tokens), Some(token)) = (&self.tokens, bearer) {
            match tokens.review(token).await {
                Ok(Some(user)) => return Ok(user),
                Ok(None) => reasons.push("bearer token rejected by TokenReview".into()),
                Err(reason) => reasons.push(reason),
            }
        }
        if reasons.is_empty() {
            reasons.push("no client certificate and no bearer token".into());
        }
        Err(reasons.join("; "))
    }

    /// Removes the identity headers so nothing downstream can mistake them for verified ones.
    fn strip_identity_headers(&self, request: &mut Request) {
        let Some(request_header) = self.request_header.load_full() else {
            return;
        };
        let headers = request.headers_mut();
        for name in request_header.header_names() {
            headers.remove(name.as_str());
        }
        let extras: Vec<_> = headers
            .keys()
            .filter(|k| request_header.is_extra_header(k.as_str()))
            .cloned()
            .collect();
        for name in extras {
            headers.remove(name);
        }
    }
}

/// The axum middleware.
pub async fn guard(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let chain = request
        .extensions()
        .get::<PeerCertificates>()
        .map(|c| c.0.clone())
        .unwrap_or_default();
    let user = match guard.authenticate(&chain, request.headers()).await {
        Ok(user) => user,
        Err(reason) => {
            tracing::info!(path = %request.uri().path(), %reason, "unauthenticated request refused");
            guard
                .metrics
                .auth_failures
                .with_label_values(&["unauthenticated"])
                .inc();
            return ApiError::Unauthorized("Unauthorized".into()).into_response();
        }
    };
    guard.strip_identity_headers(&mut request);
    if let Some(authorizer) = &guard.authorizer {
        let attributes = Attributes::for_path(request.uri().path());
        let user = &user;
        match authorizer.allowed(user, &attributes).await {
            Ok(true) => {}
            Ok(false) => {
                guard
                    .metrics
                    .auth_failures
                    .with_label_values(&["forbidden"])
                    .inc();
                return ApiError::Forbidden(format!(
                    "user {:?} cannot get {}",
                    user.name,
                    describe(&attributes)
                ))
                .into_response();
            }
            Err(reason) => {
                tracing::warn!(%reason, "authorization check failed");
                guard
                    .metrics
                    .auth_failures
                    .with_label_values(&["authorizer_error"])
                    .inc();
                return ApiError::Internal("authorization check failed".into()).into_response();
            }
        }
    }
    request.extensions_mut().insert(user);
    next.run(request).await
}

fn describe(attributes: &Attributes) -> String {
    match attributes {
        Attributes::Resource {
            namespace,
            resource,
            subresource,
            name,
            ..
        } => format!(
            "resource {resource:?}{} in API group \"custom.metrics.k8s.io\" (name {name:?}, namespace {namespace:?})",
            if subresource.is_empty() {
                String::new()
            } else {
                format!("/{subresource}")
            }
        ),
        Attributes::NonResource { path } => format!("path {path:?}"),
    }
}
