//! `tessera demo-app`: a small HTTP echo server. `GET /healthz` answers `ok`; every other
//! request answers JSON naming the app, unit, zone, version and instance that served it,
//! with the request's method, path, host and the `x-tessera-*` headers it arrived with.
//! `?status=N` answers with that status, `?delay_ms=N` waits first (tests use both).
//! The JSON also reports the request body's length and SHA-256 (`bodyBytes`,
//! `bodySha256`; bodies up to 64 MiB). `?bytes=N` answers N bytes of `x` instead of JSON,
//! with a length, or streamed in 16 KiB chunks of unknown length with `&chunked=1`.
//! Prints `listening on ADDR` once bound; stops on SIGINT/SIGTERM.

use super::args::DemoAppArgs;
use super::EXIT_BAD_INPUT;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

struct Identity {
    app: String,
    unit: String,
    zone: String,
    version: String,
    instance: String,
}

/// Started by an agent that stops its instances with itself (`tessera up`): die with it,
/// even when it is killed outright.
fn die_with_parent() {
    let Some(parent) = std::env::var("TESSERA_PARENT_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // The parent may have died before the line above: then nobody would signal us.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        std::process::exit(0);
    }
}

pub fn run(a: DemoAppArgs) -> ExitCode {
    die_with_parent();
    let listen = a.listen.clone().unwrap_or_else(|| {
        format!(
            "127.0.0.1:{}",
            std::env::var("PORT").unwrap_or_else(|_| "9000".into())
        )
    });
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(_) => {
            eprintln!("error: --listen (or PORT): `{listen}` is not IP:PORT");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let id = Arc::new(Identity {
        app: a.app,
        unit: a.unit,
        zone: a.zone,
        version: a.version,
        instance: a.instance.unwrap_or_else(|| std::process::id().to_string()),
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(super::EXIT_FAILED);
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: listening on {addr}: {e}");
                return ExitCode::from(super::EXIT_FAILED);
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        println!("listening on {bound}");
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .fallback(echo)
            .with_state(id);
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        match axum::serve(listener, router).with_graceful_shutdown(stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: serving: {e}");
                ExitCode::from(super::EXIT_FAILED)
            }
        }
    })
}

async fn echo(State(id): State<Arc<Identity>>, req: Request) -> Response {
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    if let Some(ms) = param("delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let status = param("status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if let Some(n) = param("bytes") {
        let n = n.min(1 << 30);
        if param("chunked") == Some(1) {
            let chunks = futures_util::stream::iter((0..n.div_ceil(16 << 10)).map(move |i| {
                let len = (n - i * (16 << 10)).min(16 << 10) as usize;
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![b'x'; len]))
            }));
            return (status, axum::body::Body::from_stream(chunks)).into_response();
        }
        return (status, vec![b'x'; n as usize]).into_response();
    }
    let mut seen = Map::new();
    for (k, v) in req.headers() {
        if k.as_str().starts_with("x-tessera-") || k.as_str().starts_with("x-forwarded-") {
            seen.insert(
                k.as_str().to_string(),
                Value::from(v.to_str().unwrap_or("")),
            );
        }
    }
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let received = match axum::body::to_bytes(req.into_body(), 64 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")).into_response()
        }
    };
    let digest = {
        use sha2::Digest;
        crate::util::hex(&sha2::Sha256::digest(&received))
    };
    let body = json!({
        "app": id.app,
        "unit": id.unit,
        "zone": id.zone,
        "version": id.version,
        "instance": id.instance,
        "method": method,
        "path": path,
        "host": host,
        "headers": seen,
        "bodyBytes": received.len(),
        "bodySha256": digest,
    });
    (status, Json(body)).into_response()
}
