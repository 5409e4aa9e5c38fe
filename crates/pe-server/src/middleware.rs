//! Middleware run on every request: API key, declared body size, request metrics.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ServeError, Shared};

pub(crate) async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        if req.uri().path() != "/health" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
                return ServeError::Unauthorized.into_response();
            }
        }
    }
    next.run(req).await
}

/// Refuse a body whose declared `Content-Length` is over the limit before reading any of it (a
/// client that sent `Expect: 100-continue` then never uploads it). Bodies without a length are
/// still cut off at the limit while being read.
pub(crate) async fn declared_size(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.cfg.max_body_bytes as u64) {
        return ServeError::TooLarge(format!(
            "request body of {} bytes exceeds the size limit of {} bytes",
            declared.unwrap_or_default(),
            st.cfg.max_body_bytes
        ))
        .into_response();
    }
    next.run(req).await
}

/// Count every request, while in flight and once answered, and time it, by matched route.
pub(crate) async fn record(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let in_flight = st.requests.start(&route);
    let resp = next.run(req).await;
    drop(in_flight);
    st.requests.record(&route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}
