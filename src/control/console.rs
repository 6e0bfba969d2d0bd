//! The web console: the single-page app built from `ui/` (build.rs), embedded in the
//! binary with rust-embed and served by every control node at `/`, or served from a
//! directory on disk for development (`control.console_dir`).
//!
//! - Paths that name no file and have no extension are the app's own routes: they get
//!   `index.html` (SPA fallback). A missing file with an extension is a 404.
//! - Hashed assets (`/assets/...`) are cached as immutable; everything else is
//!   revalidated (`no-cache`, with an ETag from the file's SHA-256).
//! - Precompressed siblings (`.br`, `.gz`, written by the UI build) are sent when the
//!   browser accepts them.
//! - Every answer carries a strict Content-Security-Policy: the console talks to its own
//!   origin only, with no inline script or style.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(rust_embed::Embed)]
#[folder = "$TESSERA_UI_EMBED"]
struct Assets;

/// The console's Content-Security-Policy: only this origin, nothing inline, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Where the console's files come from.
#[derive(Clone, Default)]
pub struct Console {
    /// `None`: the files embedded at build time.
    dir: Option<Arc<PathBuf>>,
}

struct File {
    data: Cow<'static, [u8]>,
    etag: Option<String>,
}

impl Console {
    pub fn new(dir: Option<PathBuf>) -> Console {
        Console {
            dir: dir.map(Arc::new),
        }
    }

    async fn file(&self, rel: &str) -> Option<File> {
        match &self.dir {
            None => Assets::get(rel).map(|f| File {
                etag: Some(format!(
                    "\"{}\"",
                    crate::util::hex(&f.metadata.sha256_hash()[..12])
                )),
                data: f.data,
            }),
            Some(dir) => tokio::fs::read(dir.join(rel)).await.ok().map(|data| File {
                data: Cow::Owned(data),
                etag: None,
            }),
        }
    }

    /// Answers a request for `uri` (any path outside `/api/`).
    pub async fn serve(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
        if method != Method::GET && method != Method::HEAD {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "the console's files are read with GET or HEAD",
            );
        }
        let Some(rel) = relative(uri.path()) else {
            return plain(StatusCode::BAD_REQUEST, "malformed path");
        };
        let (rel, file) = match self.file(&rel).await {
            Some(file) => (rel, file),
            None if looks_like_file(&rel) => {
                return plain(StatusCode::NOT_FOUND, "no such file in the console");
            }
            None => match self.file("index.html").await {
                Some(file) => ("index.html".to_string(), file),
                None => {
                    return plain(
                        StatusCode::NOT_FOUND,
                        "the console is not built into this binary",
                    );
                }
            },
        };
        let immutable = rel.starts_with("assets/");
        let accepted = accepted_encodings(headers);
        let mut body = file.data;
        let mut encoding = None;
        for (enc, ext) in [("br", "br"), ("gzip", "gz")] {
            if accepted.contains(&enc) {
                if let Some(z) = self.file(&format!("{rel}.{ext}")).await {
                    body = z.data;
                    encoding = Some(enc);
                    break;
                }
            }
        }
        let mut resp = Response::builder().status(StatusCode::OK);
        let h = resp.headers_mut().expect("a fresh builder has headers");
        common_headers(h);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(&rel)),
        );
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Some(enc) = encoding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(enc));
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(if immutable {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            }),
        );
        if let Some(etag) = &file.etag {
            // One ETag per representation: the compressed bytes differ from the plain.
            let etag = match encoding {
                Some(enc) => format!("{}-{enc}\"", etag.trim_end_matches('"')),
                None => etag.clone(),
            };
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            if matches {
                return resp
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Body::empty())
                    .unwrap_or_else(|_| StatusCode::NOT_MODIFIED.into_response());
            }
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            match body {
                Cow::Borrowed(b) => Body::from(bytes::Bytes::from_static(b)),
                Cow::Owned(v) => Body::from(v),
            }
        };
        resp.body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

fn common_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn plain(status: StatusCode, message: &'static str) -> Response {
    let mut resp = (status, message).into_response();
    common_headers(resp.headers_mut());
    resp
}

/// The path relative to the console's root (`index.html` for `/`), or `None` when it
/// could climb out of it or is not plain text.
fn relative(path: &str) -> Option<String> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return Some("index.html".into());
    }
    let ok = rel.split('/').all(|seg| {
        // No dot files either: the build's manifest (`.vite/`) is not for browsers.
        !seg.is_empty() && !seg.starts_with('.') && !seg.contains(['\\', '\0', '%'])
    });
    ok.then(|| rel.to_string())
}

/// A path whose last segment has an extension names a file; anything else is a route
/// of the app.
fn looks_like_file(rel: &str) -> bool {
    rel.starts_with("assets/") || rel.rsplit('/').next().is_some_and(|s| s.contains('.'))
}

/// The content codings the client accepts (q=0 excluded).
fn accepted_encodings(headers: &HeaderMap) -> Vec<&'static str> {
    let Some(v) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for part in v.split(',') {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = it.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        match name.as_str() {
            "br" => out.push("br"),
            "gzip" => out.push("gzip"),
            _ => {}
        }
    }
    out
}

fn content_type(rel: &str) -> &'static str {
    let ext = rel.rsplit('.').next().unwrap_or("");
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_climb_out() {
        assert_eq!(relative("/").as_deref(), Some("index.html"));
        assert_eq!(relative("/assets/a.js").as_deref(), Some("assets/a.js"));
        assert_eq!(relative("/topology").as_deref(), Some("topology"));
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/a//b",
            "/a/./b",
            "/%2e%2e/x",
            "/a\\b",
        ] {
            assert_eq!(relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn files_and_routes_are_told_apart() {
        assert!(looks_like_file("assets/index-abc.js"));
        assert!(looks_like_file("favicon.ico"));
        assert!(looks_like_file("assets/missing"));
        assert!(!looks_like_file("topology"));
        assert!(!looks_like_file("apps/echo"));
    }

    #[test]
    fn encodings_honour_q_zero() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br;q=0"),
        );
        assert_eq!(accepted_encodings(&h), vec!["gzip"]);
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br;q=1.0, GZIP"),
        );
        assert_eq!(accepted_encodings(&h), vec!["br", "gzip"]);
        assert!(accepted_encodings(&HeaderMap::new()).is_empty());
    }
}
