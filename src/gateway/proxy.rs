//! The data plane: one request in, the route table decides, one upstream answers.
//!
//! - The table is loaded once per request (`ArcSwap`): a request keeps the table it
//!   started with while a new one is swapped in.
//! - A body up to [`BUFFER_MAX`] with a known length is read first, so the request can be
//!   retried on another endpoint of the same unit and copied to a mirror; longer or
//!   streamed bodies go through as they arrive (no retry, no mirror), limited to
//!   `max_body_bytes`.
//! - Retries: a connect failure is retried for any method (nothing was sent); other
//!   failures (reset, timeout) only for idempotent methods. Every failure, and every
//!   502-504 answer, counts towards passive ejection (`table::EndpointStates`).
//! - An endpoint counts as in flight until its answer's body has been sent on, which is
//!   what draining waits for.

mod headers;
mod metrics;
mod upgrade;
mod upstream;

use super::table::{pick, Decision, EndpointState, EndpointStates, RequestView, RouteTable};
use arc_swap::ArcSwap;
use bytes::Bytes;
use headers::{
    is_hop_by_hop, own, strip_hop_by_hop, upstream_headers, upstream_uri, X_UNIT, X_ZONE,
};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
pub use metrics::GatewayMetrics;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = UnsyncBoxBody<Bytes, BoxError>;
pub type RespBody = Either<Tracked<upstream::UpstreamBody>, Full<Bytes>>;

/// Bodies up to this size with a known length are read before forwarding (retry, mirror).
pub const BUFFER_MAX: u64 = 64 << 10;
/// Mirror copies in flight at most; beyond, a sampled request is not copied.
const MIRRORS_IN_FLIGHT: usize = 64;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

/// Shared state of the gateway's data plane.
pub struct Gateway {
    pub table: ArcSwap<RouteTable>,
    pub states: Arc<EndpointStates>,
    /// For mirror copies and protocol-switch tunnels; requests go through `upstreams`.
    client: Client<HttpConnector, UpBody>,
    pub upstreams: Arc<upstream::Upstreams>,
    pub metrics: GatewayMetrics,
    access_log: bool,
    max_body: u64,
    mirrors: Arc<Semaphore>,
}

/// Decrements an endpoint's in-flight count when dropped.
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    fn new(s: &Arc<EndpointState>) -> InFlight {
        s.inflight.fetch_add(1, Ordering::Relaxed);
        s.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(s.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream body that holds its endpoint's in-flight count until it is done.
pub struct Tracked<B> {
    body: B,
    _guard: InFlight,
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn full(b: Bytes) -> UpBody {
    Full::new(b)
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed_unsync()
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Moves an empty read buffer's start back to the beginning of its allocation, when no
/// request's bytes still point into it.
///
/// Each request is cut from the front of the buffer, so without this the next one is read
/// behind it, into memory not touched for a while: over a few hundred connections that
/// is a cache miss or two for every request the kernel copies in. Rewound, a
/// connection reads into the same few cache lines every time. Costs nothing when the
/// buffer is shared or already at its start (`try_reclaim` then does not allocate).
pub fn rewind(buf: &mut bytes::BytesMut) {
    if buf.is_empty() {
        let _ = buf.try_reclaim(buf.capacity() + 1);
    }
}

/// How one upstream attempt failed.
enum Failed {
    Connect(String),
    Timeout,
    Other(String),
}

impl Gateway {
    pub fn new(
        metrics: GatewayMetrics,
        access_log: bool,
        max_body: u64,
        max_head: usize,
    ) -> Gateway {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        http.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(512)
            .retry_canceled_requests(true)
            .build(http);
        Gateway {
            table: ArcSwap::from_pointee(RouteTable::default()),
            states: Arc::new(EndpointStates::default()),
            client,
            upstreams: Arc::new(upstream::Upstreams::new(max_head)),
            metrics,
            access_log,
            max_body,
            mirrors: Arc::new(Semaphore::new(MIRRORS_IN_FLIGHT)),
        }
    }

    /// Swaps in a new table; requests in flight keep theirs.
    pub fn install(&self, table: RouteTable) {
        let rev = table.revision;
        let now = self.states.now_ms();
        let (mut up, mut draining, mut down) = (0, 0, 0);
        for e in &table.endpoints {
            if e.draining {
                draining += 1;
            } else if e.state.unhealthy.load(Ordering::Relaxed)
                || e.state.ejected_until_ms.load(Ordering::Relaxed) > now
            {
                down += 1;
            } else {
                up += 1;
            }
        }
        let addrs: std::collections::HashSet<SocketAddr> =
            table.endpoints.iter().map(|e| e.addr).collect();
        self.table.store(Arc::new(table));
        self.states.retain(&|a| addrs.contains(a));
        self.upstreams.sweep(&|a| addrs.contains(a));
        self.metrics.table_revision.set(rev as i64);
        self.metrics.table_swaps.inc();
        self.metrics.endpoints.with_label_values(&["up"]).set(up);
        self.metrics
            .endpoints
            .with_label_values(&["draining"])
            .set(draining);
        self.metrics
            .endpoints
            .with_label_values(&["down"])
            .set(down);
    }

    /// Serves one request (from hyper, `Incoming` bodies, or from the HTTP/1.1 loop in
    /// `h1.rs`, bodies read in full).
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
        client: SocketAddr,
        secure: bool,
    ) -> Result<Response<RespBody>, Infallible>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError> + std::fmt::Display,
    {
        let start = Instant::now();
        let table = self.table.load_full();
        let (parts, body) = req.into_parts();
        let host = {
            let raw = parts
                .uri
                .host()
                .or_else(|| {
                    parts
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                })
                .unwrap_or("");
            let h = match raw.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => raw,
            };
            // Hosts are nearly always sent in lower case already: no copy then.
            if h.bytes().any(|b| b.is_ascii_uppercase()) {
                std::borrow::Cow::Owned(h.to_ascii_lowercase())
            } else {
                std::borrow::Cow::Borrowed(h)
            }
        };
        let decision = {
            let view = RequestView {
                method: &parts.method,
                host: &host,
                path: parts.uri.path(),
                query: parts.uri.query(),
                headers: &parts.headers,
            };
            table.decide(&view, &self.states)
        };
        let route = match decision {
            Decision::Refuse {
                status,
                reason,
                message,
                rule,
            } => {
                let name = rule.map_or("-", |r| &r.name);
                self.finish(
                    None,
                    &parts.method,
                    &host,
                    parts.uri.path(),
                    name,
                    "-",
                    "-",
                    None,
                    status,
                    reason,
                    start,
                    0,
                    client,
                );
                return Ok(own(status, reason, &message, &[]));
            }
            Decision::Route(r) => r,
        };
        // A protocol switch (WebSocket): a tunnel to one endpoint, no retries.
        if let Some(protocol) = upgrade::requested(&parts) {
            // Boxed: the tunnel's state would otherwise make every request's future
            // larger (it is moved into hyper's dispatcher per request).
            let host = host.into_owned();
            return Ok(
                Box::pin(self.tunnel(parts, protocol, route, host, client, secure, start)).await,
            );
        }
        // The body: read it now if small, else stream it.
        let refuse = |status: u16, reason: &'static str, message: String| {
            self.finish(
                Some(&route),
                &parts.method,
                &host,
                parts.uri.path(),
                &route.rule.name,
                &route.unit,
                &route.zone,
                None,
                status,
                reason,
                start,
                0,
                client,
            );
            own(status, reason, &message, &[])
        };
        let hint = body.size_hint();
        if hint.lower() > self.max_body {
            let m = format!("the request body exceeds {} bytes", self.max_body);
            return Ok(refuse(413, "body-too-large", m));
        }
        let declared = hint.exact();
        let (buffered, mut streamed) = match declared {
            Some(n) if n <= BUFFER_MAX => match body.collect().await {
                Ok(c) => (Some(c.to_bytes()), None),
                Err(e) => {
                    let m = format!("reading the request body: {e}");
                    return Ok(refuse(400, "bad-body", m));
                }
            },
            _ => (
                None,
                Some(Limited::new(body, self.max_body as usize).boxed_unsync()),
            ),
        };
        if let (Some(shadow), Some(b)) = (&route.shadow, &buffered) {
            let pq = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            let mut headers = parts.headers.clone();
            upstream_headers(&mut headers, &parts.uri, client, secure, &route);
            self.mirror(
                shadow.authority.clone(),
                &parts.method,
                &pq,
                headers,
                b.clone(),
            );
        }
        let head = upstream::RequestHead {
            method: &parts.method,
            target: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            headers: &parts.headers,
            authority: parts.uri.authority().map(|a| a.as_str()),
            client: client.ip(),
            secure,
            unit: &route.unit,
            zone: &route.zone,
            slot: route.slot,
        }
        .encode(match (&buffered, declared) {
            (Some(b), _) => upstream::Framed::Length(b.len() as u64),
            (None, Some(n)) => upstream::Framed::Length(n),
            (None, None) => upstream::Framed::Chunked,
        });
        let can_retry_sent = buffered.is_some() && idempotent(&parts.method);
        let attempts = if buffered.is_some() {
            1 + usize::from(route.rule.retries)
        } else {
            1
        };
        // At most 1 + 5 attempts (specs check `retries` <= 5): no allocation per request.
        let mut tried_buf = [SocketAddr::from(([0, 0, 0, 0], 0)); 6];
        let mut n_tried = 0;
        let mut last_failure = Failed::Other("no endpoint".into());
        for attempt in 0..attempts {
            let Some(ep) = pick(&route.candidates, &tried_buf[..n_tried]) else {
                break;
            };
            if n_tried == tried_buf.len() {
                break;
            }
            tried_buf[n_tried] = ep.addr;
            n_tried += 1;
            let body = match (&buffered, streamed.take()) {
                (Some(b), _) => upstream::OutBody::Full(b.clone()),
                (None, Some(s)) => upstream::OutBody::Stream(s, declared),
                (None, None) => break,
            };
            let guard = InFlight::new(&ep.state);
            // A first attempt without a body reuses `start` (a clock read per request
            // fewer) for its deadline and the pool's idle accounting: nothing was waited
            // for since. After reading a body, and for each retry, the timeout starts now.
            let t0 = if attempt == 0 && declared == Some(0) {
                start
            } else {
                Instant::now()
            };
            let deadline = tokio::time::Instant::from_std(t0) + route.rule.timeout;
            let sent = self
                .upstreams
                .send_at(ep.addr, &parts.method, &head, body, t0, deadline)
                .await;
            let failure = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if matches!(status, 502..=504) {
                        self.metrics
                            .upstream_failures
                            .with_label_values(&["5xx"])
                            .inc();
                        if self.states.failure(&ep.state) {
                            self.metrics.ejections.inc();
                            tracing::warn!(endpoint = %ep.addr, unit = %ep.unit, "Ejected an endpoint after consecutive failures");
                        }
                    } else {
                        self.states.success(&ep.state);
                    }
                    let (mut rp, rb) = resp.into_parts();
                    rp.headers.insert(X_UNIT, route.unit_hv.clone());
                    rp.headers.insert(X_ZONE, route.zone_hv.clone());
                    self.finish(
                        Some(&route),
                        &parts.method,
                        &host,
                        parts.uri.path(),
                        &route.rule.name,
                        &route.unit,
                        &route.zone,
                        Some(&ep.addr),
                        status,
                        "",
                        start,
                        attempt + 1,
                        client,
                    );
                    return Ok(Response::from_parts(
                        rp,
                        Either::Left(Tracked {
                            body: rb,
                            _guard: guard,
                        }),
                    ));
                }
                Err(upstream::UpError::Connect(e)) => Failed::Connect(e),
                Err(upstream::UpError::Failed(e)) => Failed::Other(e),
                Err(upstream::UpError::Timeout) => Failed::Timeout,
            };
            drop(guard);
            let kind = match &failure {
                Failed::Connect(_) => "connect",
                Failed::Timeout => "timeout",
                Failed::Other(_) => "reset",
            };
            self.metrics
                .upstream_failures
                .with_label_values(&[kind])
                .inc();
            if self.states.failure(&ep.state) {
                self.metrics.ejections.inc();
                tracing::warn!(endpoint = %ep.addr, unit = %ep.unit, "Ejected an endpoint after consecutive failures");
            }
            tracing::debug!(endpoint = %ep.addr, attempt, kind, "Upstream attempt failed");
            let retry = matches!(failure, Failed::Connect(_)) || can_retry_sent;
            last_failure = failure;
            if !retry {
                break;
            }
        }
        let (status, reason, message) = match last_failure {
            Failed::Timeout => (
                504,
                "upstream-timeout",
                format!(
                    "unit {} did not answer within {:?}",
                    route.unit, route.rule.timeout
                ),
            ),
            Failed::Connect(e) => (
                502,
                "upstream-unreachable",
                format!("no endpoint of unit {} could be reached: {e}", route.unit),
            ),
            Failed::Other(e) => (502, "upstream-error", format!("unit {}: {e}", route.unit)),
        };
        self.finish(
            Some(&route),
            &parts.method,
            &host,
            parts.uri.path(),
            &route.rule.name,
            &route.unit,
            &route.zone,
            tried_buf[..n_tried].last(),
            status,
            reason,
            start,
            n_tried,
            client,
        );
        Ok(own(
            status,
            reason,
            &message,
            &[
                ("x-tessera-unit", &route.unit),
                ("x-tessera-zone", &route.zone),
            ],
        ))
    }

    /// Sends a copy to `shadow` in the background; its answer is discarded. Never waits:
    /// when too many copies are in flight, this one is dropped.
    fn mirror(
        &self,
        shadow: http::uri::Authority,
        method: &Method,
        pq: &http::uri::PathAndQuery,
        headers: HeaderMap,
        body: Bytes,
    ) {
        let Ok(permit) = self.mirrors.clone().try_acquire_owned() else {
            self.metrics.mirrors.with_label_values(&["dropped"]).inc();
            return;
        };
        let uri = upstream_uri(&shadow, pq);
        let mut req = Request::new(full(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req.headers_mut()
            .insert("x-tessera-mirror", HeaderValue::from_static("1"));
        let client = self.client.clone();
        let counter = self.metrics.mirrors.clone();
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(MIRROR_TIMEOUT, async {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            })
            .await
            {
                Ok(Ok(())) => "sent",
                _ => "failed",
            };
            counter.with_label_values(&[outcome]).inc();
            drop(permit);
        });
    }
}
