//! Who is calling: the aggregator's front-proxy identity, or a bearer token.
//!
//! The kube-apiserver aggregator proxies requests with its front-proxy client certificate and
//! names the real user in `X-Remote-User`, `X-Remote-Group` and `X-Remote-Extra-*`. Those
//! headers are believed only when the certificate chains to the request-header CA (from
//! ConfigMap `kube-system/extension-apiserver-authentication` or `--requestheader-client-ca-file`)
//! and, if allowed names are set, its common name is one of them. Otherwise a bearer token is
//! checked with a `TokenReview`. Anyone else gets 401.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UserInfo {
    /// User name, e.g. `system:serviceaccount:kube-system:horizontal-pod-autoscaler`.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (`X-Remote-Extra-<key>`), keys lower-cased.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The group every authenticated user is in. Cluster roles for discovery (`system:discovery`,
/// `system:public-info-viewer`) are bound to it, and the aggregator's own requests (discovery as
/// `system:kube-aggregator`, OpenAPI as `system:aggregator`) arrive with no group at all: without
/// it their SubjectAccessReview is denied and the group disappears from the cluster's discovery.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The user of unauthenticated requests in Kubernetes; never given [`AUTHENTICATED_GROUP`].
const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of unauthenticated requests; a user in it is never given [`AUTHENTICATED_GROUP`].
const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

impl UserInfo {
    /// The user with [`AUTHENTICATED_GROUP`] among its groups, as k8s.io/apiserver's
    /// authenticated-group adder does after every successful authentication (not for the
    /// anonymous user, nor for one already in either group).
    #[must_use]
    pub fn with_authenticated_group(mut self) -> Self {
        let in_group = |wanted: &str| self.groups.iter().any(|g| g == wanted);
        if self.name != ANONYMOUS_USER
            && !in_group(AUTHENTICATED_GROUP)
            && !in_group(UNAUTHENTICATED_GROUP)
        {
            self.groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        self
    }
}

/// Request-header authentication settings, as the ConfigMap spells them.
pub struct RequestHeaderAuth {
    verifier: Arc<dyn ClientCertVerifier>,
    allowed_names: Vec<String>,
    username_headers: Vec<String>,
    group_headers: Vec<String>,
    extra_prefixes: Vec<String>,
}

impl std::fmt::Debug for RequestHeaderAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHeaderAuth")
            .field("allowed_names", &self.allowed_names)
            .field("username_headers", &self.username_headers)
            .finish_non_exhaustive()
    }
}

/// Header names used when the ConfigMap does not say.
pub const DEFAULT_USERNAME_HEADERS: &[&str] = &["X-Remote-User"];
/// See [`DEFAULT_USERNAME_HEADERS`].
pub const DEFAULT_GROUP_HEADERS: &[&str] = &["X-Remote-Group"];
/// See [`DEFAULT_USERNAME_HEADERS`].
pub const DEFAULT_EXTRA_PREFIXES: &[&str] = &["X-Remote-Extra-"];

/// The ConfigMap kube-apiserver publishes for extension API servers.
pub const AUTH_CONFIGMAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

impl RequestHeaderAuth {
    /// Settings from a PEM CA bundle and header names.
    pub fn new(
        ca_pem: &[u8],
        allowed_names: Vec<String>,
        username_headers: Vec<String>,
        group_headers: Vec<String>,
        extra_prefixes: Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.context("request-header CA bundle is not valid PEM")?)
                .context("request-header CA certificate is not usable")?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "the request-header CA bundle holds no certificate"
        );
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::tls::provider())
                .build()
                .context("building the request-header certificate verifier")?;
        Ok(Self {
            verifier,
            allowed_names,
            username_headers,
            group_headers,
            extra_prefixes,
        })
    }

    /// Settings from the data of `kube-system/extension-apiserver-authentication`, whose list
    /// values are JSON arrays of strings.
    pub fn from_configmap(data: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let ca = data.get("requestheader-client-ca-file").context(
            "ConfigMap kube-system/extension-apiserver-authentication has no \
             requestheader-client-ca-file (is the aggregation layer enabled?)",
        )?;
        let list = |key: &str, default: &[&str]| -> anyhow::Result<Vec<String>> {
            match data.get(key) {
                Some(text) if !text.trim().is_empty() => serde_json::from_str(text)
                    .with_context(|| format!("{key} is not a JSON list of strings")),
                _ => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
            }
        };
        Self::new(
            ca.as_bytes(),
            list("requestheader-allowed-names", &[])?,
            list("requestheader-username-headers", DEFAULT_USERNAME_HEADERS)?,
            list("requestheader-group-headers", DEFAULT_GROUP_HEADERS)?,
            list("requestheader-extra-headers-prefix", DEFAULT_EXTRA_PREFIXES)?,
        )
    }

    /// Every header this scheme reads; removed from requests after authentication.
    pub fn header_names(&self) -> impl Iterator<Item = &String> {
        self.username_headers.iter().chain(&self.group_headers)
    }

    /// Whether `name` starts with an extra-header prefix.
    pub fn is_extra_header(&self, name: &str) -> bool {
        self.extra_prefixes
            .iter()
            .any(|p| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p))
    }

    /// The front-proxy identity: `Ok(None)` when no certificate was sent, `Err` with the reason
    /// when one was sent but is not trusted for request headers.
    pub fn authenticate(
        &self,
        chain: &[CertificateDer<'static>],
        headers: &HeaderMap,
    ) -> Result<Option<UserInfo>, String> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Ok(None);
        };
        self.verifier
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|e| format!("client certificate not signed by the request-header CA: {e}"))?;
        let common_name = common_name(end_entity);
        if !self.allowed_names.is_empty()
            && !common_name
                .as_ref()
                .is_some_and(|cn| self.allowed_names.contains(cn))
        {
            return Err(format!(
                "client certificate common name {common_name:?} is not in \
                 requestheader-allowed-names {:?}",
                self.allowed_names
            ));
        }
        let name = self
            .username_headers
            .iter()
            .find_map(|h| {
                header_values(headers, h)
                    .into_iter()
                    .find(|v| !v.is_empty())
            })
            .ok_or("front-proxy request without a user name header")?;
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| header_values(headers, h))
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            let header = header.as_str();
            if let Some(prefix) = self
                .extra_prefixes
                .iter()
                .find(|p| header.len() > p.len() && header[..p.len()].eq_ignore_ascii_case(p))
            {
                let key = percent_encoding::percent_decode_str(&header[prefix.len()..])
                    .decode_utf8_lossy()
                    .to_lowercase();
                if let Ok(value) = value.to_str() {
                    extra.entry(key).or_default().push(value.to_owned());
                }
            }
        }
        Ok(Some(UserInfo {
            name,
            groups,
            extra,
        }))
    }
}

fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect()
}

fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Bearer-token authentication through the API server's `TokenReview`, cached for 10 s as
/// kube-apiserver's delegating authenticator does.
pub struct TokenReviewer {
    client: kube::Client,
    cache: Mutex<HashMap<TokenHash, (Instant, Option<UserInfo>)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer").finish_non_exhaustive()
    }
}

/// SHA-256 of a token: the cache never holds tokens themselves.
type TokenHash = [u8; 32];

const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);

impl TokenReviewer {
    /// Reviews tokens with `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The token's user, or `None` when the API server says it is not valid.
    pub async fn review(&self, token: &str) -> Result<Option<UserInfo>, String> {
        let key: TokenHash = Sha256::digest(token.as_bytes()).into();
        {
            let mut cache = self.cache.lock().await;
            cache.retain(|_, (at, _)| at.elapsed() < TOKEN_CACHE_TTL);
            if let Some((_, user)) = cache.get(&key) {
                return Ok(user.clone());
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("TokenReview failed: {e}"))?;
        let status = answer.status.unwrap_or_default();
        let user = (status.authenticated == Some(true)).then(|| {
            let user = status.user.unwrap_or_default();
            UserInfo {
                name: user.username.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default().into_iter().collect(),
            }
        });
        self.cache
            .lock()
            .await
            .insert(key, (Instant::now(), user.clone()));
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn every_authenticated_user_is_in_system_authenticated_once() {
        let groupless = user("system:kube-aggregator", &[]).with_authenticated_group();
        assert_eq!(groupless.groups, [AUTHENTICATED_GROUP]);
        let hpa = user("hpa", &["system:serviceaccounts", AUTHENTICATED_GROUP]);
        assert_eq!(hpa.clone().with_authenticated_group(), hpa, "no duplicate");
        let anonymous = user(ANONYMOUS_USER, &[]);
        assert_eq!(anonymous.clone().with_authenticated_group(), anonymous);
        let unauthenticated = user("someone", &[UNAUTHENTICATED_GROUP]);
        assert_eq!(
            unauthenticated.clone().with_authenticated_group(),
            unauthenticated
        );
    }
}
