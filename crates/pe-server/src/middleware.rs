//! Middleware run on every request: API key, declared body size, request metrics.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ServeError, Shared};

/// `Authorization: Bearer KEY` on every route but `/health` and the page at `/` (which holds
/// no data; its scripts send the key the user types); the scheme is case-insensitive
/// (RFC 7235) and the key is compared in constant time.
pub(crate) async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.cfg.api_key {
        if req.uri().path() != "/health" && req.uri().path() != "/" {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, k)| k.trim());
            if !given.is_some_and(|g| same_key(g.as_bytes(), key.as_bytes())) {
                return ServeError::Unauthorized.into_response();
            }
        }
    }
    next.run(req).await
}

/// Equality whose time does not depend on where the keys differ.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
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

/// Count every request, while in flight and once answered, and time it, by matched route. The
/// whole request (reading its body included) must finish within the request timeout (504);
/// a request whose client goes away before the answer is counted with status 499.
pub(crate) async fn record(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let in_flight = st.requests.start(&route);
    let mut unanswered = Unanswered { st: &st, route: &route, started, answered: false };
    let resp = match tokio::time::timeout(st.cfg.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ServeError::Timeout.into_response(),
    };
    unanswered.answered = true;
    drop(in_flight);
    st.requests.record(&route, resp.status().as_u16(), started.elapsed().as_secs_f64());
    resp
}

/// Records a request dropped before its answer (nginx's 499, client closed request).
struct Unanswered<'a> {
    st: &'a Shared,
    route: &'a str,
    started: std::time::Instant,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.st.requests.record(self.route, 499, self.started.elapsed().as_secs_f64());
        }
    }
}
