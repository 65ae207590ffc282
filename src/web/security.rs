//! Every request passes here before a handler: host, authorization, CSRF, and the security
//! headers of every response.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use super::{Access, Shared};

/// The cookie that carries the CSRF token (double submit).
const CSRF_COOKIE: &str = "skiplock_csrf";
/// The header that carries it on API requests from a browser.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// The form field that carries it on form posts.
pub(crate) const CSRF_FIELD: &str = "csrf";
/// The largest form a mutation may post: 64 KiB.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// No script or style but the dashboard's own files; no framing, no plugin, no foreign form
/// target, no `<base>`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The path the router is nested under (empty at the root), for links and cookies.
#[derive(Clone, Debug)]
pub(crate) struct Base(pub(crate) String);

/// The request's CSRF token, for the forms a page renders.
#[derive(Clone, Debug)]
pub(crate) struct Csrf(pub(crate) String);

/// What the authorizer granted, for pages to show or hide actions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Granted(pub(crate) Access);

/// Wraps `routes` in the guard.
pub(crate) fn layer(routes: Router<Arc<Shared>>, shared: Arc<Shared>) -> Router<Arc<Shared>> {
    routes.layer(middleware::from_fn_with_state(shared, guard))
}

async fn guard(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = match check(&shared, request).await {
        Ok((request, new_token)) => {
            let base = request
                .extensions()
                .get::<Base>()
                .map(|b| b.0.clone())
                .unwrap_or_default();
            let mut response = next.run(request).await;
            // Pages only: their forms carry the token (an asset, which caches may keep, or
            // an API answer never sets it).
            let page = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
            if let Some(token) = new_token.filter(|_| page) {
                // `/admin/jobs` path-matches `/admin/jobs` and `/admin/jobs/…` only.
                let path = if base.is_empty() { "/" } else { base.as_str() };
                let cookie =
                    format!("{CSRF_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict");
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(header::SET_COOKIE, value);
                }
            }
            response
        }
        Err(refusal) => refusal.into_response(),
    };
    secure_headers(response.headers_mut());
    response
}

/// The request, ready for its handler (with [`Base`], [`Csrf`] and [`Granted`]), and a new
/// CSRF token to set as a cookie; or the response refusing it.
async fn check(shared: &Shared, request: Request) -> Result<(Request, Option<String>), Refusal> {
    let (mut parts, body) = request.into_parts();
    if let Some(hosts) = &shared.allowed_hosts {
        let host = host_name(&parts.headers);
        if !host.is_some_and(|host| hosts.contains(&host)) {
            return Err(refuse(StatusCode::MISDIRECTED_REQUEST, "unknown host"));
        }
    }
    let access = shared.access(&parts);
    match access {
        Access::Full | Access::ReadOnly => {}
        Access::Unauthenticated => {
            return Err(refuse(StatusCode::UNAUTHORIZED, "credentials required"));
        }
        Access::Forbidden => return Err(refuse(StatusCode::FORBIDDEN, "forbidden")),
    }
    let base = parts
        .extensions
        .get::<OriginalUri>()
        .map(|original| nest_prefix(original.0.path(), parts.uri.path()))
        .unwrap_or_default();
    let cookie = cookie_token(&parts.headers);
    let body = match parts.method {
        Method::GET | Method::HEAD => body,
        Method::POST => {
            if access != Access::Full {
                return Err(refuse(StatusCode::FORBIDDEN, "this dashboard is read-only"));
            }
            same_origin(&parts.headers)?;
            let browser = parts.headers.contains_key(header::ORIGIN)
                || parts.headers.contains_key("sec-fetch-site");
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase();
            let form = content_type.starts_with("application/x-www-form-urlencoded");
            let json = content_type.starts_with("application/json");
            let (sent, body) = if form {
                let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
                    .await
                    .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, "form too large"))?;
                let token = form_urlencoded::parse(&bytes)
                    .find(|(key, _)| key == CSRF_FIELD)
                    .map(|(_, value)| value.into_owned());
                (token, Body::from(bytes))
            } else if json {
                let token = parts
                    .headers
                    .get(CSRF_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                (token, body)
            } else {
                return Err(refuse(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "send a form (with its csrf field) or JSON",
                ));
            };
            // A browser (it says where the request comes from) must prove the page it
            // posts from came from here; a script sending JSON cannot be a cross-site form.
            if browser || form {
                let valid = match (&cookie, &sent) {
                    (Some(cookie), Some(sent)) => {
                        constant_time_eq(cookie.as_bytes(), sent.as_bytes())
                    }
                    _ => false,
                };
                if !valid {
                    return Err(refuse(
                        StatusCode::FORBIDDEN,
                        "missing or wrong CSRF token: reload the page and try again",
                    ));
                }
            }
            body
        }
        _ => return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    };
    let (token, new) = match cookie {
        Some(token) => (token, None),
        None => {
            let token = new_token().map_err(|_| {
                refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no randomness for a CSRF token",
                )
            })?;
            (token.clone(), Some(token))
        }
    };
    parts.extensions.insert(Base(base));
    parts.extensions.insert(Csrf(token));
    parts.extensions.insert(Granted(access));
    Ok((Request::from_parts(parts, body), new))
}

/// The path a router is nested under, from the request's full path and the path the router
/// sees: `/admin/jobs/jobs/7` and `/jobs/7` give `/admin/jobs`; `/admin/jobs` and `/` (the
/// nested root) give `/admin/jobs`; at the root, the empty string.
fn nest_prefix(full: &str, seen: &str) -> String {
    let prefix = match full.strip_suffix(seen) {
        Some(prefix) => prefix,
        None if seen == "/" => full,
        None => "",
    };
    prefix.trim_end_matches('/').to_owned()
}

/// Refuses a request whose `Sec-Fetch-Site` is not `same-origin` or whose `Origin` is not
/// the host it was sent to.
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let cross = || Refusal(StatusCode::FORBIDDEN, "cross-site request refused");
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() != b"same-origin")
    {
        return Err(cross());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| cross())?;
        let authority = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .ok_or_else(cross)?;
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(cross)?;
        if !authority.eq_ignore_ascii_case(host) {
            return Err(cross());
        }
    }
    Ok(())
}

/// The `Host` header's name, lowercase, without its port.
fn host_name(headers: &HeaderMap) -> Option<String> {
    let host = headers
        .get(header::HOST)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(&host).to_owned()
    } else {
        host.split(':').next().unwrap_or(&host).to_owned()
    };
    Some(name)
}

/// The CSRF cookie's value, when it looks like one of ours.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// 32 random bytes from the operating system, as hex.
fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only (for tokens and
/// passwords).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request was refused, and its status.
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.1,
        )
            .into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"skiplock\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

fn refuse(status: StatusCode, message: &'static str) -> Refusal {
    Refusal(status, message)
}

fn secure_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "same-origin");
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nest_prefixes() {
        assert_eq!(nest_prefix("/admin/jobs/jobs/7", "/jobs/7"), "/admin/jobs");
        assert_eq!(nest_prefix("/admin/jobs", "/"), "/admin/jobs");
        assert_eq!(nest_prefix("/jobs/7", "/jobs/7"), "");
        assert_eq!(nest_prefix("/", "/"), "");
    }

    #[test]
    fn host_names_drop_their_port() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("LocalHost:8080"));
        assert_eq!(host_name(&headers).as_deref(), Some("localhost"));
        headers.insert(header::HOST, HeaderValue::from_static("[::1]:8080"));
        assert_eq!(host_name(&headers).as_deref(), Some("[::1]"));
    }

    #[test]
    fn only_well_formed_cookies_count() {
        let token = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        let cookie = format!("other=1; {CSRF_COOKIE}={token}");
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&cookie).expect("header"),
        );
        assert_eq!(cookie_token(&headers), Some(token));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("skiplock_csrf=x\"><"),
        );
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn tokens_compare_by_value() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
