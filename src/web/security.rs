//! Every request passes here before a handler: host, authorization, CSRF, and the security
//! headers of every response.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};

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
    // The API's clients parse its errors: refusals there are JSON too.
    let api = request.uri().path().starts_with("/api/");
    let mut response = match check(&shared, request).await {
        Ok((request, new_token)) => {
            let base = request
                .extensions()
                .get::<Base>()
                .map(|b| b.0.clone())
                .unwrap_or_default();
            let (parts, body) = request.into_parts();
            let https = over_https(&parts);
            let request = Request::from_parts(parts, body);
            // On a task of its own, so a client that goes away cannot drop a handler midway:
            // a dropped `begin()` can leave the application's pooled connection inside a
            // transaction nobody ends (see `db::begin`). A handler that panics is a 500.
            let mut response = tokio::spawn(next.run(request))
                .await
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
            // Pages only: their forms carry the token (an asset, which caches may keep, or
            // an API answer never sets it).
            let page = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
            if let Some(token) = new_token.filter(|_| page) {
                let cookie = csrf_cookie(&token, &base, https);
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().append(header::SET_COOKIE, value);
                }
            }
            response
        }
        Err(refusal) => refusal.respond(api),
    };
    secure_headers(response.headers_mut());
    response
}

/// The request, ready for its handler (with [`Base`], [`Csrf`] and [`Granted`]), and a new
/// CSRF token to set as a cookie; or the response refusing it.
async fn check(shared: &Shared, request: Request) -> Result<(Request, Option<String>), Refusal> {
    let (mut parts, body) = request.into_parts();
    if let Some(hosts) = &shared.allowed_hosts {
        let host = request_authority(&parts)
            .and_then(|authority| split_authority(&authority))
            .map(|(host, _)| host);
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
            same_origin(&parts)?;
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

/// The CSRF cookie for `token`, for the router nested at `base` (empty at the root):
/// `Secure` when the request came over HTTPS, and a path no character of which can end the
/// attribute (the prefix comes from the request's path, which a nest with a `{param}` lets
/// anyone choose).
fn csrf_cookie(token: &str, base: &str, https: bool) -> String {
    // `/admin/jobs` path-matches `/admin/jobs` and `/admin/jobs/…` only.
    let path = if base.is_empty() {
        "/".to_owned()
    } else {
        cookie_path(base)
    };
    let secure = if https { "; Secure" } else { "" };
    format!("{CSRF_COOKIE}={token}; Path={path}; HttpOnly; SameSite=Strict{secure}")
}

/// `path` with every byte a cookie's `Path` attribute may not hold as is (`;`, controls,
/// spaces, non-ASCII) percent-encoded. A browser then matches it against the encoded path
/// it requests: at worst the cookie is not sent, never a forged attribute.
fn cookie_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        let keep = byte.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@%".contains(&byte);
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Refuses a request whose `Sec-Fetch-Site` is not `same-origin`, or whose `Origin` is not
/// the scheme, host and port it was sent to: the host and port must be the request's
/// authority ([`request_authority`]; a missing port is the scheme's default), and the scheme
/// `http` or `https`, the request's own when it is known ([`request_scheme`]).
fn same_origin(parts: &Parts) -> Result<(), Refusal> {
    let cross = || refuse(StatusCode::FORBIDDEN, "cross-site request refused");
    let headers = &parts.headers;
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes() != b"same-origin")
    {
        return Err(cross());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| cross())?;
        let (scheme, authority) = origin.split_once("://").ok_or_else(cross)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(cross()),
        };
        if request_scheme(parts).is_some_and(|known| known != scheme) {
            return Err(cross());
        }
        let (origin_host, origin_port) = split_authority(authority).ok_or_else(cross)?;
        let (host, port) = request_authority(parts)
            .and_then(|authority| split_authority(&authority))
            .ok_or_else(cross)?;
        if origin_host != host
            || origin_port.unwrap_or(default_port) != port.unwrap_or(default_port)
        {
            return Err(cross());
        }
    }
    Ok(())
}

/// Where the request was sent: its `Host` header, or in HTTP/2 (which has none) the
/// `:authority` the URI carries.
fn request_authority(parts: &Parts) -> Option<String> {
    if let Some(host) = parts.headers.get(header::HOST) {
        return host.to_str().ok().map(str::to_owned);
    }
    let original = parts.extensions.get::<OriginalUri>().map(|o| &o.0);
    parts
        .uri
        .authority()
        .or_else(|| original.and_then(|uri| uri.authority()))
        .map(|authority| authority.as_str().to_owned())
}

/// The request's scheme, when it says (HTTP/2's `:scheme`, or an absolute URI), lowercase.
fn request_scheme(parts: &Parts) -> Option<String> {
    let original = parts.extensions.get::<OriginalUri>().map(|o| &o.0);
    parts
        .uri
        .scheme_str()
        .or_else(|| original.and_then(|uri| uri.scheme_str()))
        .map(str::to_ascii_lowercase)
}

/// Whether the request is known to have come over HTTPS: its scheme says so, or its
/// `Origin` does (a same-origin request's origin is the page's). `X-Forwarded-Proto` is not
/// believed: anyone can send it.
fn over_https(parts: &Parts) -> bool {
    request_scheme(parts).is_some_and(|scheme| scheme == "https")
        || parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|origin| {
                origin
                    .get(..8)
                    .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
            })
}

/// A host and its port, if given, from `host[:port]` (`[v6][:port]`); the host lowercase.
/// `None` for what is not one (user info, a path, an empty or non-numeric port).
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() || authority.contains(['@', '/', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        let port = match rest {
            "" => None,
            rest => Some(rest.strip_prefix(':')?.parse().ok()?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port.parse().ok()?)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
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

impl Refusal {
    /// The answer: `{"error": "…"}` for the API (`json`), plain text for pages and assets.
    fn respond(self, json: bool) -> Response {
        let mut response = if json {
            (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
        } else {
            (
                self.0,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                self.1,
            )
                .into_response()
        };
        let headers = response.headers_mut();
        if self.0 == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"skiplock\", charset=\"UTF-8\""),
            );
        }
        if self.0 == StatusCode::METHOD_NOT_ALLOWED {
            // The only methods the dashboard answers at all (each path allows some of them).
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
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
    fn authorities_split_into_host_and_port() {
        let split = |a: &str| split_authority(a);
        assert_eq!(
            split("LocalHost:8080"),
            Some(("localhost".into(), Some(8080)))
        );
        assert_eq!(split("dash.test"), Some(("dash.test".into(), None)));
        assert_eq!(split("[::1]:8080"), Some(("[::1]".into(), Some(8080))));
        assert_eq!(split("[::1]"), Some(("[::1]".into(), None)));
        for bad in ["", ":80", "a:", "a:x", "u@a", "a/b", "[::1]x", "a:1:2"] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

    #[test]
    fn cookie_paths_cannot_end_the_attribute() {
        assert_eq!(cookie_path("/admin/jobs"), "/admin/jobs");
        assert_eq!(
            cookie_path("/t/x;Domain=evil.test"),
            "/t/x%3BDomain=evil.test"
        );
        assert_eq!(cookie_path("/a b\"\u{e9}"), "/a%20b%22%C3%A9");
        let cookie = csrf_cookie("ab", "/t/x;Secure=0", true);
        assert_eq!(
            cookie,
            "skiplock_csrf=ab; Path=/t/x%3BSecure=0; HttpOnly; SameSite=Strict; Secure"
        );
        assert_eq!(
            csrf_cookie("ab", "", false),
            "skiplock_csrf=ab; Path=/; HttpOnly; SameSite=Strict"
        );
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
