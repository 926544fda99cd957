//! HTTPS: the serving certificate (from files, reloaded when they change, or self-signed at
//! start) and client-certificate handling.
//!
//! Like kube-apiserver, the server *requests* a client certificate but does not require one
//! (kubelet probes come without) and accepts any chain at the TLS layer, checking only that the
//! client holds the certificate's key. Whether the chain is trusted is decided per request by
//! [`super::authn`], so an untrusted certificate gets a clean 401 `Status` instead of a failed
//! handshake, and the trusted CA can change without restarting the listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, ServerConfig, SignatureScheme};

/// The client's certificate chain (end entity first), empty when none was sent. Put into every
/// request's extensions by the server.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum ServingCert {
    /// PEM files, re-read when their content changes (cert-manager rotation).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A certificate made at start for these DNS names / IP addresses.
    SelfSigned(Vec<String>),
}

/// The crypto provider used everywhere (ring, like kube-rs here).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration; `request_client_certs` is off for `--authn=none`.
pub fn server_config(
    cert: &ServingCert,
    request_client_certs: bool,
) -> anyhow::Result<ServerConfig> {
    let provider = provider();
    let resolver = CertResolver::new(cert, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if request_client_certs {
        builder.with_client_cert_verifier(Arc::new(RequestClientCert {
            algorithms: provider.signature_verification_algorithms,
        }))
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct CertResolver {
    current: Arc<ArcSwap<CertifiedKey>>,
}

impl CertResolver {
    fn new(source: &ServingCert, provider: &Arc<CryptoProvider>) -> anyhow::Result<Self> {
        let current = match source {
            ServingCert::SelfSigned(names) => {
                let generated = rcgen::generate_simple_self_signed(names.clone())
                    .context("generating a self-signed certificate")?;
                let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
                tracing::info!(names = ?names, "serving with a self-signed certificate");
                certified_key(vec![generated.cert.der().clone()], &key, provider)?
            }
            ServingCert::Files { cert, key } => load_files(cert, key, provider)?,
        };
        let current = Arc::new(ArcSwap::from_pointee(current));
        if let ServingCert::Files { cert, key } = source {
            spawn_reloader(cert.clone(), key.clone(), provider.clone(), current.clone());
        }
        Ok(Self { current })
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load_files(
    cert: &Path,
    key: &Path,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a private key from {}", key.display()))?;
    certified_key(chain, &key, provider)
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<CertifiedKey> {
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .context("unsupported private key")?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// Re-reads the certificate files every 10 s and swaps them in when they changed and load.
fn spawn_reloader(
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Arc<ArcSwap<CertifiedKey>>,
) {
    tokio::spawn(async move {
        let read = || (std::fs::read(&cert).ok(), std::fs::read(&key).ok());
        let mut last = read();
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            let now = read();
            if now == last {
                continue;
            }
            match load_files(&cert, &key, &provider) {
                Ok(loaded) => {
                    current.store(Arc::new(loaded));
                    last = now;
                    tracing::info!(cert = %cert.display(), "reloaded the serving certificate");
                }
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "new serving certificate does not load; keeping the old one"
                    );
                }
            }
        }
    });
}

/// Asks for a client certificate, accepts any chain, and checks the handshake signature so the
/// client provably holds the key. Trust is decided later, per request.
#[derive(Debug)]
struct RequestClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
