//! The try-it page at `/`: HTML, CSS, JS and the bundled test photos,
//! embedded in the binary at build time (nothing fetched from elsewhere, no
//! CDN, no web fonts). Its live panel reads `GET /v1/live`.

use crate::error::ServeError;
use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("page/index.html");

/// Assets under `/page/`: (file, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("page/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("page/app.css"),
    ),
    (
        "chelsea.png",
        "image/png",
        include_bytes!("../../models/testdata/chelsea.png"),
    ),
    (
        "coffee.png",
        "image/png",
        include_bytes!("../../models/testdata/coffee.png"),
    ),
    (
        "rocket.jpg",
        "image/jpeg",
        include_bytes!("../../models/testdata/rocket.jpg"),
    ),
];

/// The page may load only this server's own resources.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_headers(content_type: &'static str, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[utoipa::path(get, path = "/", operation_id = "page", tag = "page",
    summary = "The try-it page (HTML): upload an image, choose a budget or pin a variant, see the answer and the live panel",
    responses((status = 200, description = "HTML page", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    let mut r = with_headers("text/html; charset=utf-8", INDEX);
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    r
}

#[utoipa::path(get, path = "/page/{file}", operation_id = "page_asset", tag = "page",
    summary = "The page's script, stylesheet and bundled test photos",
    params(("file" = String, Path, description = "app.js, app.css, chelsea.png, coffee.png or rocket.jpg")),
    responses((status = 200, description = "The asset", content_type = "application/octet-stream", body = String),
        (status = 404, description = "`no_such_endpoint`", body = super::openapi::ErrorBody)))]
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, ctype, bytes)) => with_headers(ctype, *bytes),
        None => ServeError::NoSuchEndpoint.into_response(),
    }
}

/// The asset names, for tests.
pub fn asset_names() -> Vec<&'static str> {
    ASSETS.iter().map(|a| a.0).collect()
}
