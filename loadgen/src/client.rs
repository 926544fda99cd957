//! Sending one request and classifying how it ended.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::payload::Payload;

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A complete response with this status.
    Status(u16),
    /// No complete response within the timeout.
    Timeout,
    /// No connection, or the connection broke.
    ConnectionError,
    /// Never sent: no free connection before its deadline (open loop only).
    Dropped,
}

impl Outcome {
    /// 2xx.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Status(s) if (200..300).contains(&s))
    }

    /// Key in the by-status table.
    pub fn label(self) -> String {
        match self {
            Self::Status(s) => s.to_string(),
            Self::Timeout => "timeout".into(),
            Self::ConnectionError => "connection error".into(),
            Self::Dropped => "dropped".into(),
        }
    }
}

/// A pooled HTTP/1.1 client for one target.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    target: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

impl Client {
    /// Keep-alive unless `keepalive` is false.
    pub fn new(
        target: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
        keepalive: bool,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let mut builder = HyperClient::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90));
        if !keepalive {
            builder.pool_max_idle_per_host(0);
        }
        Self {
            inner: builder.build(connector),
            target,
            headers,
            timeout,
        }
    }

    /// POSTs `payload` and reads the whole response.
    pub async fn send(&self, payload: Payload) -> Outcome {
        let mut request = Request::post(self.target.clone())
            .header(header::CONTENT_TYPE, payload.content_type)
            .body(Full::new(payload.body))
            .expect("a valid URI and static header always build a request");
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|_| Outcome::ConnectionError)?;
            let status = response.status().as_u16();
            response
                .into_body()
                .collect()
                .await
                .map_err(|_| Outcome::ConnectionError)?;
            Ok::<_, Outcome>(Outcome::Status(status))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(outcome) | Err(outcome)) => outcome,
            Err(_) => Outcome::Timeout,
        }
    }
}
