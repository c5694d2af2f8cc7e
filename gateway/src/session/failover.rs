//! Moving a session to another backend: the backend it lived on is gone,
//! restarted, draining, or no longer knows it. The gateway opens a new
//! backend session with the client's own `initialize` parameters (sealed in
//! the client's session id, so any replica can do this alone) and the
//! client's principal, sends `notifications/initialized`, and records where
//! the session lives now. The client's session id does not change and it
//! sees no error; what a server keeps per session (none, for the registry)
//! starts afresh.

use std::sync::Arc;

use bytes::Bytes;

use super::binding::{Binding, Caller, Link};
use super::{ATTEMPTS, Sessions};
use crate::policy::jsonrpc;
use crate::pool::outlier::Outcome;
use crate::pool::{BackendState, Pool};
use crate::reject::Reject;
use crate::upstream::{self, Outgoing, SESSION_HEADER, Upstream};

/// Largest answer read while opening a session elsewhere.
const MAX_OPEN_ANSWER: usize = 1024 * 1024;

/// A backend session opened for a client elsewhere.
pub struct Opened {
    pub backend: Arc<BackendState>,
    pub session: String,
    pub version: Option<String>,
}

impl Sessions {
    /// Replaces `lost` (the link that failed; `None` when the session had no
    /// backend left) with a session on another live backend. Once per loss:
    /// a request that finds the link already replaced returns `Ok(false)`.
    pub async fn relocate(
        &self,
        upstream: &Upstream,
        binding: &Binding,
        lost: Option<&Link>,
        caller: &Caller,
    ) -> Result<bool, Reject> {
        if binding.init.is_empty() {
            return Err(Reject::UnknownSession(
                "its backend is gone and it cannot be moved".into(),
            ));
        }
        let _moving = binding.moving.lock().await;
        // Each Streamable HTTP request has a binding of its own: the
        // session's other requests (its GET stream) may be moving it now,
        // or have moved it already (one process per move, for stdio pools).
        let _session = match binding.nonce {
            Some(nonce) => Some(self.move_lock(&nonce).lock().await),
            None => None,
        };
        let now = binding.current();
        let generation = |l: Option<&Link>| l.map(|l| l.generation);
        if generation(now.as_deref()) != generation(lost) {
            return Ok(false); // another request moved it already
        }
        if let Some(link) = self.moved_already(binding, lost) {
            binding.replace(link);
            return Ok(false);
        }
        let pool = &binding.pool;
        let from = lost.map(|l| l.backend.id.as_str());
        let opened = self
            .open_elsewhere(upstream, pool, &binding.init, from, caller)
            .await?;
        if let Some(nonce) = binding.nonce {
            self.rebind(nonce, &opened.backend.id, &opened.session);
        }
        tracing::info!(pool = %pool.name, from = ?from, to = %opened.backend.id, "session moved");
        binding.replace(Link {
            backend: opened.backend,
            session: opened.session,
            version: opened.version,
            generation: generation(lost).map_or(1, |g| g + 1),
        });
        Ok(true)
    }

    /// Where another request of this session moved it, if it did since
    /// `lost` was its link.
    fn moved_already(&self, binding: &Binding, lost: Option<&Link>) -> Option<Link> {
        let moved = self.rebinds.get(&binding.nonce?)?;
        if lost.is_some_and(|l| l.backend.id == moved.backend && l.session == moved.backend_session)
        {
            return None;
        }
        Some(Link {
            backend: binding.pool.member(&moved.backend)?,
            session: moved.backend_session,
            version: None,
            generation: lost.map_or(1, |l| l.generation + 1),
        })
    }

    /// Opens a backend session with these `initialize` params on a live
    /// backend other than `lost` (trying up to [`ATTEMPTS`] backends).
    pub async fn open_elsewhere(
        &self,
        upstream: &Upstream,
        pool: &Pool,
        init: &str,
        lost: Option<&str>,
        caller: &Caller,
    ) -> Result<Opened, Reject> {
        for _ in 0..ATTEMPTS {
            let backend = pool.pick_except(lost).ok_or(Reject::NoBackend)?;
            match self.open_on(upstream, pool, &backend, init, caller).await {
                Ok((session, version)) => {
                    backend.session_opened();
                    return Ok(Opened {
                        backend,
                        session,
                        version,
                    });
                }
                Err(outcome) => pool.record(&backend, outcome),
            }
        }
        Err(Reject::NoBackend)
    }

    /// Opens a backend session with the client's `initialize` params; also
    /// learns the pool's tool hints when nothing has taught them yet.
    /// `Err`: the backend would not take it (or could not be reached), as
    /// the pool is to record it.
    async fn open_on(
        &self,
        upstream: &Upstream,
        pool: &Pool,
        backend: &Arc<BackendState>,
        init: &str,
        caller: &Caller,
    ) -> Result<(String, Option<String>), Outcome> {
        let _load = backend.start_request();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":"gateway-move","method":"initialize","params":{init}}}"#
        );
        let (parts, answer) =
            own_post(upstream, backend, Bytes::from(body), None, None, caller).await?;
        let answered = Outcome::Answered(parts.status.as_u16());
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|_| parts.status.is_success())
            .ok_or(answered)?
            .to_owned();
        pool.record(backend, answered);
        let version = answer
            .iter()
            .find_map(|m| jsonrpc::result_of(m).and_then(jsonrpc::protocol_version));
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let v = version.as_deref();
        let (parts, _) = own_post(
            upstream,
            backend,
            Bytes::from_static(note),
            Some(&session),
            v,
            caller,
        )
        .await?;
        if !parts.status.is_success() {
            return Err(Outcome::Answered(parts.status.as_u16()));
        }
        let hints = self.hints(pool);
        if !hints.is_known() {
            let list = br#"{"jsonrpc":"2.0","id":"gateway-tools","method":"tools/list"}"#;
            let listed = own_post(
                upstream,
                backend,
                Bytes::from_static(list),
                Some(&session),
                v,
                caller,
            )
            .await;
            for message in listed.map(|(_, m)| m).unwrap_or_default() {
                hints.learn(&message);
            }
        }
        Ok((session, version))
    }
}

/// A POST of the gateway's own on a client's behalf (with its principal),
/// read whole; `Err` when the exchange failed.
async fn own_post(
    upstream: &Upstream,
    backend: &BackendState,
    body: Bytes,
    session: Option<&str>,
    version: Option<&str>,
    caller: &Caller,
) -> Result<(http::response::Parts, Vec<String>), Outcome> {
    let (parts, mut frames) = upstream
        .send(
            backend.addr,
            Outgoing {
                session,
                protocol_version: version,
                accept: Some("application/json, text/event-stream"),
                content_type: Some("application/json"),
                body,
                principal: caller.principal_header(),
                ..Outgoing::own(http::Method::POST, "/mcp", &caller.forwarded)
            },
        )
        .await
        .map_err(|e| Outcome::from(&e))?;
    let messages = upstream::read_messages(&parts.headers, &mut frames, MAX_OPEN_ANSWER).await;
    Ok((parts, messages))
}
