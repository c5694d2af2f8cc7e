//! The Streamable HTTP transport (`/mcp`, sessions and stateless
//! 2026-07-28 requests): one exchange with a backend per client request,
//! through the session layer and the one upstream client.
//!
//! A request with a session id goes to its pinned backend. One without goes
//! to the least-loaded healthy backend; if that backend refuses the
//! connection (the request provably never reached it), it is ejected and the
//! request goes to another, up to `session::ATTEMPTS` backends.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::metrics::Metrics;
use crate::policy::jsonrpc::{Method, Rpc};
use crate::pool::{BackendState, LoadGuard, Pool};
use crate::reject::Reject;
use crate::relay::{self, Downstream, Failure};
use crate::session::{ATTEMPTS, Pinned, Sessions};
use crate::state::State;
use crate::upstream::{self, Forwarded, Outgoing, SESSION_HEADER, Upstream};

/// A request the policy steps let through.
pub struct Admitted {
    pub pool: Arc<Pool>,
    pub rpc: Option<Rpc>,
    pub body: Bytes,
    pub pinned: Option<Pinned>,
    pub forwarded: Forwarded,
}

pub struct Streamable {
    pub state: Arc<State>,
    pub sessions: Arc<Sessions>,
    pub upstream: Arc<Upstream>,
}

/// The backend that served a request (for the access log).
pub struct Served {
    pub backend: Arc<BackendState>,
    _load: LoadGuard,
}

impl Streamable {
    /// Sends the request to its backend and relays the answer.
    pub async fn serve(
        &self,
        session: &mut Session,
        req: &Admitted,
        served: &mut Option<Served>,
    ) -> Result<(), Failure> {
        let path = backend_path(&req.pool, session.req_header());
        let method = session.req_header().method.clone();
        let mut attempt = 0;
        let (parts, frames) = loop {
            attempt += 1;
            let backend = match &req.pinned {
                Some(p) => Arc::clone(&p.backend),
                None => self.sessions.pick(&req.pool)?,
            };
            let load = backend.start_request();
            let sent = self
                .upstream
                .send(
                    backend.addr,
                    Outgoing {
                        method: method.clone(),
                        path: &path,
                        client_headers: Some(&session.req_header().headers),
                        session: req.pinned.as_ref().map(|p| p.backend_session.as_str()),
                        protocol_version: None,
                        accept: None,
                        content_type: None,
                        body: req.body.clone(),
                        forwarded: &req.forwarded,
                    },
                )
                .await;
            *served = Some(Served {
                backend: Arc::clone(&backend),
                _load: load,
            });
            match sent {
                Ok(answer) => break answer,
                Err(e) if e.never_reached() => {
                    self.sessions.eject(&req.pool, &backend);
                    if req.pinned.is_some() {
                        return Err(
                            Reject::UnknownSession("its backend is unavailable".into()).into()
                        );
                    }
                    if attempt >= ATTEMPTS {
                        return Err(Reject::NoBackend.into());
                    }
                }
                Err(e) => {
                    Metrics::inc(&self.state.metrics.upstream_errors);
                    tracing::warn!(backend = %backend.addr, error = %e, "backend exchange failed");
                    return Err(Reject::BadGateway.into());
                }
            }
        };
        let backend = served
            .as_ref()
            .map(|s| Arc::clone(&s.backend))
            .ok_or(Reject::BadGateway)?;

        if let Some(name) = parts
            .headers
            .get(upstream::INSTANCE_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            backend.note_instance(name);
        }
        let mut status = parts.status.as_u16();
        // rmcp answers a session DELETE with 202; clients expect 200/204.
        if method == http::Method::DELETE && status == 202 {
            status = 200;
        }
        let mut head = ResponseHeader::build(status, Some(8)).map_err(Failure::Abort)?;
        for (name, value) in upstream::response_headers(&parts.headers) {
            head.append_header(name.clone(), value.clone())
                .map_err(Failure::Abort)?;
        }
        if let Some(sid) = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            let echo = req
                .pinned
                .as_ref()
                .is_some_and(|p| p.backend_session == sid);
            if !echo {
                // A new backend session: the client gets a sealed id naming it.
                let token = self
                    .sessions
                    .pin(&req.pool, &backend, sid)
                    .ok_or(Reject::BadGateway)?;
                head.insert_header(SESSION_HEADER, token)
                    .map_err(Failure::Abort)?;
                Metrics::inc(&self.state.metrics.sessions_issued);
            }
        }

        let limits = &self.state.limits;
        let mut down = Downstream {
            session,
            write_timeout: limits.write_timeout,
            keepalive: limits.sse_keepalive,
        };
        if upstream::is_event_stream(&parts.headers) {
            let answer_to = req.rpc.as_ref().filter(|r| !r.batch).and_then(Rpc::id_text);
            let seen = relay::relay_events(&mut down, head, frames, answer_to, &mut |_| {}).await?;
            if let Some(rest) = seen.rest {
                relay::drain(rest);
            }
        } else {
            relay::relay_plain(&mut down, head, frames).await?;
        }
        if let Some(Rpc {
            method: Method::ToolsCall { .. },
            ..
        }) = &req.rpc
        {
            Metrics::inc(&self.state.metrics.tool_calls);
        }
        Ok(())
    }
}

/// The request's path and query as the backend serves them (pool prefix removed).
fn backend_path(pool: &Pool, req: &pingora::http::RequestHeader) -> String {
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    pq.strip_prefix(pool.prefix.as_str())
        .unwrap_or(pq)
        .to_owned()
}
