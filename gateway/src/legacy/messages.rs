//! `POST /messages`: finding the session a message is for (here, or on the
//! replica holding its stream), and queueing it for the session's worker.

use bytes::Bytes;

use super::Bridge;
use super::table::QueueError;
use crate::metrics::Metrics;
use crate::policy::edge;
use crate::policy::jsonrpc::Rpc;
use crate::reject::Reject;
use crate::upstream::{Forwarded, Outgoing};

/// Marks a `POST /messages` relayed from another replica (never relayed again).
const RELAYED: &str = "x-mcp-gateway-relayed";
/// Largest answer read from the replica a message was relayed to.
const MAX_RELAY_ANSWER: usize = 64 * 1024;

/// Where a legacy message goes.
pub enum Located {
    Here(String),
    Elsewhere { owner: String },
}

impl Bridge {
    /// Where a `POST /messages` goes: this replica's table, or the replica
    /// that holds the stream.
    pub fn locate(&self, query: Option<&str>) -> Result<Located, Reject> {
        let raw = edge::query_param(query, &["sessionId", "session_id"])
            .ok_or(Reject::BadRequest("missing sessionId"))?;
        if self.advertise.is_none() {
            return Ok(Located::Here(raw.to_owned()));
        }
        let sealed = self
            .sessions
            .sealer()
            .open_legacy(raw)
            .map_err(|_| Reject::UnknownLegacySession)?;
        if Some(&sealed.owner) == self.advertise.as_ref() {
            Ok(Located::Here(sealed.id))
        } else {
            Ok(Located::Elsewhere {
                owner: sealed.owner,
            })
        }
    }

    /// Queues a (checked) message for a session of this replica, from the
    /// principal that opened it, on the route it was opened on (anything
    /// else is an unknown session).
    pub fn accept_message(
        &self,
        id: &str,
        pool: u16,
        body: Bytes,
        rpc: Rpc,
        principal: &str,
    ) -> Result<(), Reject> {
        let entry = self
            .table
            .get(id)
            .filter(|e| e.principal() == principal && e.pool() == pool)
            .ok_or(Reject::UnknownLegacySession)?;
        // The worker relays it after this POST's 202: it takes the POST's
        // trace position along, not its span (which ends with the POST).
        let trace = telemetry::exporting().then(|| telemetry::parent_of(&tracing::Span::current()));
        let limit = self.state.limits().legacy_inbox_bytes;
        match entry.queue(body, rpc, trace, limit) {
            Ok(()) => Ok(()),
            Err(QueueError::Full) => Err(Reject::SessionBusy),
            Err(QueueError::Closed) => Err(Reject::UnknownLegacySession),
        }
    }

    /// Tells a legacy session's stream that its client's message was refused
    /// (the POST itself is answered with the refusal's status).
    pub fn refuse_message(
        &self,
        query: Option<&str>,
        pool: u16,
        rpc: &Rpc,
        reject: &Reject,
        principal: &str,
    ) {
        if rpc.id.is_none() {
            return;
        }
        if let Ok(Located::Here(id)) = self.locate(query)
            && let Some(entry) = self
                .table
                .get(&id)
                .filter(|e| e.principal() == principal && e.pool() == pool)
        {
            entry.queue_refusal(rpc.clone(), reject.clone());
        }
    }

    /// Relays a message to the replica holding its stream; returns that
    /// replica's status. A replica that cannot be reached means the stream is
    /// gone with it: the client must open a new one.
    pub async fn relay_to_owner(
        &self,
        owner: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<u16, Reject> {
        if headers.contains_key(RELAYED) {
            return Err(Reject::UnknownLegacySession); // relayed once already
        }
        let addr = owner.parse().map_err(|_| Reject::UnknownLegacySession)?;
        // The client's credentials go along: the owner checks them itself.
        let mut relayed = http::HeaderMap::new();
        for name in [
            http::header::AUTHORIZATION,
            http::HeaderName::from_static("x-api-key"),
        ] {
            if let Some(v) = headers.get(&name) {
                relayed.insert(name, v.clone());
            }
        }
        relayed.insert(RELAYED, http::HeaderValue::from_static("1"));
        let forwarded = Forwarded::default();
        let sent = self
            .upstream
            .send(
                addr,
                Outgoing {
                    client_headers: Some(&relayed),
                    accept: Some("application/json"),
                    content_type: Some("application/json"),
                    body,
                    keep_credentials: true,
                    ..Outgoing::own(http::Method::POST, path_and_query, &forwarded)
                },
            )
            .await;
        let (parts, mut frames) = sent.map_err(|e| {
            tracing::info!(%owner, error = %e, "the replica holding a legacy stream is gone");
            Reject::UnknownLegacySession
        })?;
        let _ = frames.read_all(MAX_RELAY_ANSWER).await;
        match parts.status.as_u16() {
            s @ 200..=299 => {
                Metrics::inc(&self.state.metrics.legacy_relayed);
                Ok(s)
            }
            404 => Err(Reject::UnknownLegacySession),
            503 => Err(Reject::SessionBusy),
            _ => Err(Reject::BadGateway),
        }
    }
}
