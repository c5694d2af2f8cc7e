//! The client's stream (`GET /sse`): the `endpoint` event, then every
//! message for the client as an `event: message`, with keep-alives. The
//! session's worker writes to it through a `relay::Queue`, its sink:
//! bounded in events and bytes, and a client that cannot take an event
//! within `write_timeout` is given up.

use std::sync::Arc;

use pingora::proxy::Session;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{Semaphore, mpsc};

use super::Bridge;
use super::carried::StatelessPool;
use super::table::{Entry, Full, Inbound};
use crate::federation::Service;
use crate::reject::Reject;
use crate::relay::queue::{self, Queued};
use crate::relay::{Downstream, Failure, Queue};
use crate::session::Caller;

/// Messages a session's inbox holds before POSTs get 503.
pub(super) const INBOX: usize = 64;

fn new_id() -> String {
    let mut raw = [0u8; 16];
    let _ = SystemRandom::new().fill(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

impl Bridge {
    /// `GET /sse`: holds the client's stream for the life of the session.
    pub async fn serve_stream(
        self: &Arc<Self>,
        session: &mut Session,
        served: &Service,
        caller: Caller,
        client: Arc<str>,
    ) -> Result<(), Failure> {
        let id = new_id();
        // The id the client sees: sealed, naming this replica, when replicas share sessions.
        let public = match &self.advertise {
            Some(me) => self
                .sessions
                .sealer()
                .issue_legacy(me, &id)
                .ok_or(Reject::BadGateway)?,
            None => id.clone(),
        };
        let (inbox_tx, inbox_rx) = mpsc::channel::<Inbound>(INBOX);
        let entry = Entry::new(inbox_tx, &caller.principal, served.index(), client);
        match self.table.insert(&id, entry) {
            Ok(()) => {}
            Err(Full::Pool) => return Err(Reject::LegacyCapacity.into()),
            Err(Full::Client) => {
                return Err(Reject::RateLimited {
                    retry_after: 5,
                    what: "legacy sessions per client",
                }
                .into());
            }
        }
        let (out, mut out_rx) = Queue::new(self.state.limits().write_timeout);
        let concurrency = self.state.limits().legacy_session_concurrency.max(1);
        let busy = Arc::new(Semaphore::new(concurrency));
        // The worker ends once its inbox closes (the entry leaves the table
        // below); it then closes the backend session.
        let permits = Arc::clone(&busy);
        match served {
            Service::Pool(pool) if pool.stateless_only().is_some() => {
                let up = Arc::new(StatelessPool(Arc::clone(pool)));
                let worker = Arc::clone(self).worker(up, inbox_rx, out, caller, permits);
                tokio::spawn(worker);
            }
            Service::Pool(pool) => {
                let worker =
                    Arc::clone(self).worker(Arc::clone(pool), inbox_rx, out, caller, permits);
                tokio::spawn(worker);
            }
            Service::Virtual(vs) => {
                let worker =
                    Arc::clone(self).worker(Arc::clone(vs), inbox_rx, out, caller, permits);
                tokio::spawn(worker);
            }
        }
        let result = self
            .stream_to_client(
                session,
                served,
                (&id, &public),
                &mut out_rx,
                (&busy, concurrency),
            )
            .await;
        self.table.remove(&id);
        tracing::info!(legacy_session = %&id[..8], "legacy SSE session closed");
        result
    }

    async fn stream_to_client(
        &self,
        session: &mut Session,
        served: &Service,
        (id, public): (&str, &str),
        out_rx: &mut mpsc::Receiver<Queued>,
        (busy, concurrency): (&Semaphore, usize),
    ) -> Result<(), Failure> {
        let head = queue::stream_head()?;
        let mut down = Downstream::new(session, &self.state);
        let endpoint = format!("{}/messages?sessionId={public}", served.prefix());
        down.start(head, mcp_sse::format(Some("endpoint"), None, &endpoint))
            .await?;
        tracing::info!(legacy_session = %&id[..8], route = %served.name(), "legacy SSE session opened");
        // When the listeners close, the stream (and its connection) ends
        // once the session's calls under way have answered, so the client
        // opens a new one elsewhere.
        let done =
            |rx: &mpsc::Receiver<Queued>| rx.is_empty() && busy.available_permits() == concurrency;
        let keepalive = self.state.limits().sse_keepalive;
        let pumped = queue::pump(&mut down, out_rx, keepalive, done).await;
        if pumped.is_err() {
            tracing::info!(legacy_session = %&id[..8], "legacy SSE client went away or stopped reading");
        }
        pumped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_session_ids_are_random_hex() {
        assert_eq!(new_id().len(), 32);
        assert_ne!(new_id(), new_id());
    }
}
