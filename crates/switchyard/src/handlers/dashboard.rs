//! `GET /dashboard`: the live web dashboard, a single page whose files are compiled into the
//! binary (`crates/switchyard/dashboard/`). The page holds no data: it signs in with the admin
//! key (kept in the tab's session storage, sent as an `Authorization` header, never in a URL
//! or a cookie, so no other site can make the browser act with it) and reads the same
//! `/admin/*` endpoints any client can call.
//!
//! The files are served without auth, with a strict Content-Security-Policy (scripts, styles
//! and connections to this origin only, no framing) and an `ETag`, so a browser revalidates
//! them cheaply.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let hash = foldhash::quality::FixedState::with_seed(0x5717_c4a2).hash_one(body);
        let etag = HeaderValue::from_str(&format!("\"{hash:016x}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
        Asset {
            body,
            content_type,
            etag,
        }
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../dashboard/index.html"),
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../dashboard/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../dashboard/app.css"),
        "text/css; charset=utf-8",
    )
});

/// What the page may load and whom it may talk to: this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /dashboard` (without the slash, relative URLs would resolve against `/`).
pub async fn redirect() -> Redirect {
    Redirect::permanent("/dashboard/")
}

/// `GET /dashboard/`.
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /dashboard/{file}`.
pub async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    match file.as_str() {
        "app.js" => serve(&SCRIPT, &headers),
        "app.css" => serve(&STYLE, &headers),
        "" | "index.html" => serve(&INDEX, &headers),
        _ => (StatusCode::NOT_FOUND, "no such dashboard file").into_response(),
    }
}

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tags| tags.as_bytes() == asset.etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::ETAG, asset.etag.clone());
    // Revalidate every time: after an upgrade the page and its script must match.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
