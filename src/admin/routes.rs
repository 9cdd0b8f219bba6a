//! The admin server's routes: which path answers which method, who must
//! show the token, and each endpoint's answer.
//!
//! An unknown path is 404, a known path with another method 405 (with
//! `Allow`), a request with a body 413; hyper itself answers a malformed
//! request 400 and an oversized head 431. With a token set, every endpoint
//! but `/healthz` and `/readyz` needs it (401 without it), and `DELETE`
//! needs one whatever: without `--admin-token-file` it is 403.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::metrics::{self, Scrape};
use super::{AdminState, process};
use crate::messages::{AdminRequest, ClientId, ClientInfo, OperatorClose, RegistryStats};
use crate::rt::{spawn_blocking, within};

/// How long `/healthz` and `/readyz` wait for the registry before calling
/// the server unhealthy: it answers in microseconds unless it is stuck.
const REGISTRY_PATIENCE: Duration = Duration::from_secs(1);

/// Clients on a `/clients` page when `?limit=` is not given.
const PAGE_DEFAULT: usize = 100;
/// The most clients one `/clients` page may hold: the default
/// `--max-clients`, so one page can list them all.
const PAGE_MAX: usize = 10_000;

type Answer = Response<Full<Bytes>>;

/// What a request's path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
    Clients,
    Client(ClientId),
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        Some(match path {
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/readyz" => Route::Readyz,
            "/clients" => Route::Clients,
            _ => {
                let id = path.strip_prefix("/clients/")?.parse().ok()?;
                Route::Client(ClientId(id))
            }
        })
    }

    /// Whether it answers `method`.
    fn takes(self, method: &Method) -> bool {
        *method == Method::GET
            || *method == Method::HEAD
            || (*method == Method::DELETE && matches!(self, Route::Client(_)))
    }

    /// The methods it answers, as an `Allow` header lists them.
    fn allowed(self) -> &'static str {
        match self {
            Route::Client(_) => "GET, HEAD, DELETE",
            _ => "GET, HEAD",
        }
    }

    /// Whether a token, when set, must be shown.
    fn guarded(self) -> bool {
        !matches!(self, Route::Healthz | Route::Readyz)
    }
}

/// Answers one request.
pub(super) async fn respond(state: &AdminState, request: Request<Incoming>) -> Answer {
    let Some(route) = Route::parse(request.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "error: no such endpoint\n");
    };
    let deleting = request.method() == Method::DELETE;
    if !route.takes(request.method()) {
        let refused = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "error: method not allowed\n",
        );
        return with(refused, header::ALLOW, route.allowed());
    }
    if !request.body().is_end_stream() {
        let refused = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "error: no request takes a body\n",
        );
        return with(refused, header::CONNECTION, "close");
    }
    let presented = request.headers().get(header::AUTHORIZATION);
    match &state.token {
        None if deleting => {
            return text(
                StatusCode::FORBIDDEN,
                "error: DELETE needs --admin-token-file\n",
            );
        }
        Some(token) if route.guarded() && !token.admits(presented.map(HeaderValue::as_bytes)) => {
            let refused = text(
                StatusCode::UNAUTHORIZED,
                "error: a bearer token is needed\n",
            );
            return with(refused, header::WWW_AUTHENTICATE, "Bearer");
        }
        _ => {}
    }
    match route {
        Route::Metrics => metrics(state, &request).await,
        Route::Healthz => healthz(state).await,
        Route::Readyz => readyz(state).await,
        Route::Clients => clients(state, request.uri().query()).await,
        Route::Client(id) if deleting => close(state, id).await,
        Route::Client(id) => client(state, id).await,
    }
}

/// `answer` with one more header.
fn with(mut answer: Answer, name: header::HeaderName, value: &'static str) -> Answer {
    (answer.headers_mut()).insert(name, HeaderValue::from_static(value));
    answer
}

fn text(status: StatusCode, body: &'static str) -> Answer {
    answer(status, "text/plain; charset=utf-8", body.into())
}

fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
    answer(status, "application/json", format!("{value}\n").into())
}

fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> Answer {
    let mut answer = Response::new(Full::new(body));
    *answer.status_mut() = status;
    let content_type = HeaderValue::from_static(content_type);
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    answer
}

/// The registry's counts, or `None` when it does not answer in time.
async fn stats(state: &AdminState) -> Option<RegistryStats> {
    let ask = state
        .registry
        .admin(|respond_to| AdminRequest::Stats { respond_to });
    within(REGISTRY_PATIENCE, ask).await.flatten()
}

fn registry_gone() -> Answer {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "error: the registry does not answer\n",
    )
}

async fn metrics(state: &AdminState, request: &Request<Incoming>) -> Answer {
    let Some(stats) = stats(state).await else {
        return registry_gone();
    };
    let draining = state.draining.is_draining();
    let certificate_expiry = state.tls.as_ref().map(|tls| tls.dates().1.timestamp());
    let accept = request.headers().get(header::ACCEPT);
    let openmetrics = accept.is_some_and(|accept| {
        (accept.as_bytes().windows(28)).any(|w| w == b"application/openmetrics-text")
    });
    // Off the executor: /proc/self/fd lists every client's descriptor.
    let body = spawn_blocking(move || {
        let scrape = Scrape {
            stats,
            draining,
            certificate_expiry,
            log_lines_dropped: crate::logging::lines_dropped(),
            process: process::read(),
        };
        metrics::render(scrape, openmetrics)
    })
    .await;
    let content_type = match openmetrics {
        true => metrics::OPENMETRICS,
        false => metrics::PROMETHEUS_TEXT,
    };
    answer(StatusCode::OK, content_type, body.into())
}

/// 200 while the registry answers.
async fn healthz(state: &AdminState) -> Answer {
    match stats(state).await {
        Some(_) => text(StatusCode::OK, "ok\n"),
        None => registry_gone(),
    }
}

/// 200 while accepting: not draining, not full, the certificate valid.
async fn readyz(state: &AdminState) -> Answer {
    let Some(stats) = stats(state).await else {
        return registry_gone();
    };
    let now = chrono::Utc::now();
    let certificate_valid =
        (state.tls.as_ref()).is_none_or(|tls| (tls.dates().0..=tls.dates().1).contains(&now));
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    if state.draining.is_draining() {
        text(unavailable, "not ready: draining\n")
    } else if stats.connections >= stats.max_clients {
        text(unavailable, "not ready: full\n")
    } else if !certificate_valid {
        text(
            unavailable,
            "not ready: the TLS certificate is out of date\n",
        )
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

/// A client as JSON: the fields of its `registry client` log line.
fn client_json(client: &ClientInfo) -> serde_json::Value {
    let mut object = serde_json::json!({
        "client_id": client.id.0,
        "peer": client.peer.to_string(),
        "connected_for_ms": u64::try_from(client.connected_for.as_millis()).unwrap_or(u64::MAX),
        "messages_in": client.counts.messages_in,
        "messages_out": client.counts.messages_out,
    });
    if let Some(via) = client.via {
        object["via"] = via.to_string().into();
    }
    object
}

/// `?offset=&limit=`, each a whole number; a bad one is an error to show.
fn paging(query: Option<&str>) -> Result<(usize, usize), String> {
    let (mut offset, mut limit) = (0, PAGE_DEFAULT);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("error: {key} must be a whole number\n"))
        };
        match key {
            "offset" => offset = number()?,
            "limit" => limit = number()?,
            _ => {
                return Err(format!(
                    "error: unknown parameter {key:?}; use offset and limit\n"
                ));
            }
        }
    }
    if limit > PAGE_MAX {
        return Err(format!("error: limit is at most {PAGE_MAX}\n"));
    }
    Ok((offset, limit))
}

async fn clients(state: &AdminState, query: Option<&str>) -> Answer {
    let (offset, limit) = match paging(query) {
        Ok(paging) => paging,
        Err(why) => {
            return answer(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                why.into(),
            );
        }
    };
    let ask = state.registry.admin(|respond_to| AdminRequest::Page {
        offset,
        limit,
        respond_to,
    });
    let Some(page) = ask.await else {
        return registry_gone();
    };
    // Off the executor: a page of 10 000 clients takes milliseconds.
    let body = spawn_blocking(move || {
        let listed: Vec<_> = page.clients.iter().map(client_json).collect();
        let body = serde_json::json!({
            "clients": page.total,
            "offset": offset,
            "limit": limit,
            "items": listed,
        });
        format!("{body}\n")
    })
    .await;
    answer(StatusCode::OK, "application/json", body.into())
}

async fn client(state: &AdminState, id: ClientId) -> Answer {
    match state
        .registry
        .admin(|respond_to| AdminRequest::Client { id, respond_to })
        .await
    {
        Some(Some(client)) => json(StatusCode::OK, &client_json(&client)),
        Some(None) => text(StatusCode::NOT_FOUND, "error: no such client\n"),
        None => registry_gone(),
    }
}

async fn close(state: &AdminState, id: ClientId) -> Answer {
    let asked = state
        .registry
        .admin(|respond_to| AdminRequest::Close { id, respond_to })
        .await;
    match asked {
        // The registry logs it, and the client's leave says why.
        Some(OperatorClose::Closing) => json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "client_id": id.0, "closing": true }),
        ),
        Some(OperatorClose::AlreadyClosing) => text(
            StatusCode::CONFLICT,
            "error: that client is already closing\n",
        ),
        Some(OperatorClose::NotFound) => text(StatusCode::NOT_FOUND, "error: no such client\n"),
        None => registry_gone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_routes_and_ids() {
        assert_eq!(Route::parse("/metrics"), Some(Route::Metrics));
        assert_eq!(
            Route::parse("/clients/42"),
            Some(Route::Client(ClientId(42)))
        );
        for unknown in [
            "/",
            "/clients/",
            "/clients/x",
            "/clients/1/2",
            "/metrics/",
            "/readyz?x",
        ] {
            assert_eq!(Route::parse(unknown), None, "{unknown}");
        }
        assert!(!Route::Readyz.guarded() && Route::Clients.guarded());
    }

    #[test]
    fn paging_takes_offset_and_limit_and_refuses_the_rest() {
        assert_eq!(paging(None), Ok((0, PAGE_DEFAULT)));
        assert_eq!(paging(Some("offset=5&limit=2")), Ok((5, 2)));
        for bad in ["limit=-1", "limit=10001", "offset=x", "page=2"] {
            assert!(paging(Some(bad)).is_err(), "{bad}");
        }
    }
}
