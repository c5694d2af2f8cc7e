//! Moving a session to another backend: the backend it lived on is gone,
//! restarted, draining, or no longer knows it. The gateway opens a new
//! backend session with the client's own `initialize` parameters (sealed in
//! the client's session id, so any replica can do this alone), sends
//! `notifications/initialized`, and records where the session lives now.
//! The client's session id does not change and it sees no error; what a
//! server keeps per session (none, for the registry) starts afresh.

use std::sync::Arc;

use bytes::Bytes;

use super::{ATTEMPTS, Pinned, Sessions};
use crate::pool::outlier::Outcome;
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::upstream::{self, Forwarded, Frames, Outgoing, SESSION_HEADER, Upstream};

/// Largest `initialize` answer read while moving a session.
const MAX_INIT_ANSWER: usize = 1024 * 1024;

impl Sessions {
    /// Moves `pinned` to a live backend other than the one it was on.
    pub async fn fail_over(
        &self,
        upstream: &Upstream,
        pool: &Pool,
        pinned: &mut Pinned,
        forwarded: &Forwarded,
    ) -> Result<(), Reject> {
        if pinned.sref.init.is_empty() {
            return Err(Reject::UnknownSession(
                "its backend is gone and it cannot be moved".into(),
            ));
        }
        let lost = pinned.backend.as_ref().map(|b| b.id.clone());
        let (backend, session, _) = self
            .open_elsewhere(
                upstream,
                pool,
                &pinned.sref.init,
                lost.as_deref(),
                forwarded,
            )
            .await?;
        self.rebind(pinned, &backend.id, &session);
        tracing::info!(pool = %pool.name, from = ?lost, to = %backend.id, "session moved");
        pinned.backend = Some(backend);
        pinned.backend_session = session;
        Ok(())
    }

    /// Opens a backend session with these `initialize` params on a live
    /// backend other than `lost`; returns it, the backend's session id and
    /// the negotiated protocol version.
    pub async fn open_elsewhere(
        &self,
        upstream: &Upstream,
        pool: &Pool,
        init: &str,
        lost: Option<&str>,
        forwarded: &Forwarded,
    ) -> Result<(Arc<BackendState>, String, String), Reject> {
        for _ in 0..ATTEMPTS {
            let backend = pool.pick_except(lost).ok_or(Reject::NoBackend)?;
            match self
                .open_on(upstream, pool, &backend, init, forwarded)
                .await
            {
                Ok((session, version)) => {
                    backend.session_opened();
                    return Ok((backend, session, version));
                }
                Err(Refused(outcome)) => pool.record(&backend, outcome),
            }
        }
        Err(Reject::NoBackend)
    }

    /// Opens a backend session with the client's `initialize` params; also
    /// learns the pool's tool hints when nothing has taught them yet.
    async fn open_on(
        &self,
        upstream: &Upstream,
        pool: &Pool,
        backend: &Arc<BackendState>,
        init: &str,
        forwarded: &Forwarded,
    ) -> Result<(String, String), Refused> {
        let _load = backend.start_request();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":"gateway-move","method":"initialize","params":{init}}}"#
        );
        let (parts, frames) = upstream
            .send(backend.addr, post(Bytes::from(body), None, None, forwarded))
            .await
            .map_err(|e| Refused(Outcome::from(&e)))?;
        let answered = Outcome::Answered(parts.status.as_u16());
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answer = read_messages(&parts.headers, frames).await;
        let (Some(session), true) = (session, parts.status.is_success()) else {
            return Err(Refused(answered));
        };
        pool.record(backend, answered);
        let version = answer
            .iter()
            .find_map(|m| protocol_version(m))
            .unwrap_or_else(|| "2025-06-18".into());
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let (parts, frames) = upstream
            .send(
                backend.addr,
                post(
                    Bytes::from_static(note),
                    Some(&session),
                    Some(&version),
                    forwarded,
                ),
            )
            .await
            .map_err(|e| Refused(Outcome::from(&e)))?;
        read_messages(&parts.headers, frames).await;
        if !parts.status.is_success() {
            return Err(Refused(Outcome::Answered(parts.status.as_u16())));
        }
        let hints = self.hints(pool);
        if !hints.is_known() {
            let list = br#"{"jsonrpc":"2.0","id":"gateway-tools","method":"tools/list"}"#;
            if let Ok((parts, frames)) = upstream
                .send(
                    backend.addr,
                    post(
                        Bytes::from_static(list),
                        Some(&session),
                        Some(&version),
                        forwarded,
                    ),
                )
                .await
            {
                for message in read_messages(&parts.headers, frames).await {
                    hints.learn(&message);
                }
            }
        }
        Ok((session, version))
    }
}

/// The backend would not take the session (or could not be reached): what
/// the exchange came to, for the pool's record.
struct Refused(Outcome);

fn post<'a>(
    body: Bytes,
    session: Option<&'a str>,
    version: Option<&'a str>,
    forwarded: &'a Forwarded,
) -> Outgoing<'a> {
    Outgoing {
        method: http::Method::POST,
        path: "/mcp",
        client_headers: None,
        session,
        protocol_version: version,
        accept: Some("application/json, text/event-stream"),
        content_type: Some("application/json"),
        body,
        forwarded,
        principal: None,
        keep_credentials: false,
    }
}

/// The JSON-RPC messages of an answer (a JSON body or an SSE stream), read whole.
pub(crate) async fn read_messages(headers: &http::HeaderMap, mut frames: Frames) -> Vec<String> {
    let Ok(body) = frames.read_all(MAX_INIT_ANSWER).await else {
        return Vec::new();
    };
    if !upstream::is_event_stream(headers) {
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        return if text.is_empty() {
            Vec::new()
        } else {
            vec![text]
        };
    }
    let mut splitter = mcp_sse::Splitter::new(MAX_INIT_ANSWER);
    let mut events = splitter.push(&body).unwrap_or_default();
    // a stream that ended without a final blank line still counts
    events.extend(splitter.push(b"\n\n").unwrap_or_default());
    events
        .iter()
        .filter_map(|e| e.data().map(|d| d.into_owned()))
        .filter(|d| !d.trim().is_empty())
        .collect()
}

fn protocol_version(message: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Reply {
        result: Option<Init>,
    }
    #[derive(serde::Deserialize)]
    struct Init {
        #[serde(rename = "protocolVersion")]
        protocol_version: Option<String>,
    }
    serde_json::from_str::<Reply>(message)
        .ok()?
        .result?
        .protocol_version
}
