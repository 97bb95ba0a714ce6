//! One upstream call from arrival to answer: journal it, count it, pick a fault, run the
//! provider's handler and turn its reply (or the fault) into what goes on the wire.

use std::io;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::conn::ConnHandle;
use crate::faults::{FaultKind, FaultSpecFired};
use crate::journal::{JournalEntry, headers_for_journal};
use crate::provider::{AuthInfo, Call, Handler, Outcome, Provider, Reply};
use crate::route::Route;
use crate::state::AppState;

/// Bodies beyond this are refused with 413; upstream requests here are a few hundred bytes.
const BODY_LIMIT: usize = 1024 * 1024;
/// Hung calls are released after this even if nobody stops the sandbox.
const MAX_HANG: Duration = Duration::from_secs(600);
/// How much more body a truncated answer announces than it sends.
const TRUNCATE_SHORTFALL: usize = 64;

/// Serves one call of a known route of `provider`.
pub(crate) async fn serve(
    state: AppState,
    provider: &dyn Provider,
    route: Route,
    req: Request,
    handler: Handler,
) -> Response {
    serve_inner(state, Some((provider, route)), req, handler).await
}

/// A known path with a method the upstream does not serve there.
pub(crate) async fn wrong_method(State(state): State<AppState>, req: Request) -> Response {
    serve_unmatched(state, req, StatusCode::METHOD_NOT_ALLOWED).await
}

/// Serves (and journals) a call no upstream route matches: the real APIs answer those with an
/// empty, non-JSON body.
pub(crate) async fn serve_unmatched(state: AppState, req: Request, status: StatusCode) -> Response {
    let handler: Handler = Box::new(move |_, _, _| Outcome::read(Reply::empty(status)));
    serve_inner(state, None, req, handler).await
}

async fn serve_inner(
    state: AppState,
    known: Option<(&dyn Provider, Route)>,
    req: Request,
    handler: Handler,
) -> Response {
    let route = known.map(|(_, route)| route);
    let conn = req
        .extensions()
        .get::<ConnectInfo<ConnHandle>>()
        .map(|c| c.0.clone());
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let body = axum::body::to_bytes(body, BODY_LIMIT).await;
    let auth = match known {
        Some((provider, _)) => provider.check_auth(&state.creds, &parts.headers),
        None => AuthInfo {
            principal: None,
            ok: false,
        },
    };

    let (seq, fault) = {
        let mut inner = state.lock();
        let fault = route.and_then(|r| inner.faults.take(r));
        if let Some(r) = route {
            let counter = inner.counter(r);
            counter.calls += 1;
            counter.faults += u64::from(fault.is_some());
        }
        let seq = inner.journal.open(JournalEntry {
            seq: 0,
            route: route.map(|r| r.name().to_owned()),
            method: parts.method.to_string(),
            path,
            headers: headers_for_journal(&parts.headers),
            auth_principal: auth.principal.clone(),
            auth_ok: auth.ok,
            body: body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
            status: None,
            fault: fault.as_ref().map(FaultSpecFired::summary),
        });
        (seq, fault)
    };

    let after_apply = fault.as_ref().is_some_and(|f| f.spec.after_apply);
    let delay = fault.as_ref().and_then(|f| f.spec.latency_ms);
    if let Some(ms) = delay
        && !after_apply
    {
        sleep_unless_stopping(&state, Duration::from_millis(ms)).await;
    }

    // A fault that acts before the handler means the upstream never saw the call.
    let preempted = fault
        .as_ref()
        .is_some_and(|f| !f.spec.after_apply && f.spec.kind != FaultKind::Latency);
    let reply = if preempted {
        None
    } else {
        let reply = match body {
            Err(_) => Reply::empty(StatusCode::PAYLOAD_TOO_LARGE),
            Ok(body) => {
                let call = Call {
                    headers: parts.headers,
                    body,
                    auth,
                };
                let mut inner = state.lock();
                let outcome = handler(&mut inner, &state.creds, &call);
                if let Some(r) = route
                    && outcome.applied
                {
                    inner.counter(r).applied += 1;
                }
                outcome.reply
            }
        };
        Some(reply)
    };

    if let Some(ms) = delay
        && after_apply
    {
        sleep_unless_stopping(&state, Duration::from_millis(ms)).await;
    }

    match fault {
        Some(f) => apply_fault(&state, seq, conn, f, reply).await,
        None => answer(&state, seq, reply),
    }
}

fn answer(state: &AppState, seq: u64, reply: Option<Reply>) -> Response {
    // Only a preempting fault leaves no reply, and those never come here.
    let reply = reply.unwrap_or_else(|| Reply::empty(StatusCode::INTERNAL_SERVER_ERROR));
    state.lock().journal.set_status(seq, reply.status.as_u16());
    reply.into_response()
}

async fn apply_fault(
    state: &AppState,
    seq: u64,
    conn: Option<ConnHandle>,
    fault: FaultSpecFired,
    reply: Option<Reply>,
) -> Response {
    let spec = fault.spec;
    match spec.kind {
        FaultKind::Latency => answer(state, seq, reply),
        FaultKind::Status => {
            let reply = Reply {
                status: spec
                    .status
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                content_type: spec.content_type,
                body: spec.body.unwrap_or_default().into(),
            };
            answer(state, seq, Some(reply))
        }
        FaultKind::Reset => drop_connection(conn),
        FaultKind::Hang => {
            let mut stopping = state.shutdown.clone();
            let _ = tokio::time::timeout(MAX_HANG, stopping.wait_for(|s| *s)).await;
            drop_connection(conn)
        }
        FaultKind::Truncate => {
            let mut reply = match (spec.body, reply) {
                (Some(body), _) => Reply {
                    status: StatusCode::OK,
                    content_type: spec.content_type,
                    body: body.into(),
                },
                (None, Some(reply)) => reply,
                (None, None) => Reply {
                    status: StatusCode::OK,
                    content_type: Some("application/json".into()),
                    body: Bytes::from_static(br#"{"id":"truncated","object":"sandbox_fault"}"#),
                },
            };
            if let Some(status) = spec.status.and_then(|s| StatusCode::from_u16(s).ok()) {
                reply.status = status;
            }
            state.lock().journal.set_status(seq, reply.status.as_u16());
            truncated(reply)
        }
    }
}

fn drop_connection(conn: Option<ConnHandle>) -> Response {
    match conn {
        Some(conn) => {
            conn.reset();
            // Never written: the connection fails first.
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        // Without a connection handle (router served elsewhere), a body that fails at once
        // makes hyper abort the connection, which the client also sees as a broken call.
        None => Response::new(Body::from_stream(futures_util::stream::once(async {
            Err::<Bytes, _>(io::Error::other("sandbox fault: reset"))
        }))),
    }
}

/// Announces more body than it sends, then fails the body so hyper closes the connection.
fn truncated(reply: Reply) -> Response {
    let announced = reply.body.len() + TRUNCATE_SHORTFALL;
    let sent = reply.body.slice(..reply.body.len() / 2);
    let stream = futures_util::stream::iter([Ok::<Bytes, io::Error>(sent)]).chain(
        futures_util::stream::once(async {
            // Pausing lets hyper flush the headers and partial body before the abort.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(io::Error::other("sandbox fault: truncate"))
        }),
    );
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
    if let Some(ct) = reply
        .content_type
        .and_then(|ct| HeaderValue::from_str(&ct).ok())
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    response
}

async fn sleep_unless_stopping(state: &AppState, duration: Duration) {
    let mut stopping = state.shutdown.clone();
    let _ = tokio::time::timeout(duration, stopping.wait_for(|s| *s)).await;
}
