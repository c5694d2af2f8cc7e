//! Reading a request body whole, within bounds: at most `max_body_bytes`
//! (413 beyond, whether the length was declared or the body is chunked);
//! within `body_timeout` and, after its first second, at `body_min_rate`
//! bytes per second on average (408 beyond); and within the gateway-wide
//! budget of buffered bytes (503 beyond) and the client's share of it (429
//! beyond), counted as the bytes arrive — a declared length reserves
//! nothing — so neither slow nor many large bodies can exhaust memory or
//! hold the budget. Every POST body is read this way, so every one is
//! checked as JSON-RPC before a backend sees it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use tokio::time::Instant;

use crate::reject::Reject;
use crate::state::{BodyBudget, State};

/// A body read whole, holding its share of the buffer budget until dropped.
pub struct Body {
    pub bytes: Bytes,
    _budget: BodyBudget,
}

/// When the next byte of a body is due, `received` bytes in, for the
/// average to stay at `rate` bytes per second after the first second.
fn due(started: Instant, received: usize, rate: usize) -> Instant {
    let rate = rate.max(1) as f64;
    started + Duration::from_secs(1) + Duration::from_secs_f64((received + 1) as f64 / rate)
}

/// Reads the request body (POST) of `client` (its principal, or its
/// address when anonymous): declared length first, then each chunk.
pub async fn read(
    session: &mut Session,
    state: &Arc<State>,
    client: Option<Arc<str>>,
) -> Result<Body, Reject> {
    let limits = state.limits();
    let limit = limits.max_body_bytes;
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Reject::BodyTooLarge);
    }
    let mut budget = state.reserve_body(client);
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(64 * 1024));
    let started = Instant::now();
    let deadline = started + limits.body_timeout;
    loop {
        let next_due = deadline.min(due(started, body.len(), limits.body_min_rate));
        let chunk = match tokio::time::timeout_at(next_due, session.read_request_body()).await {
            Err(_) => return Err(Reject::BodyTimeout),
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "request body read failed");
                return Err(Reject::BadRequest("the request body could not be read"));
            }
        };
        if body.len() + chunk.len() > limit {
            return Err(Reject::BodyTooLarge);
        }
        if declared.is_some_and(|n| body.len() + chunk.len() > n) {
            return Err(Reject::BadRequest("body longer than its Content-Length"));
        }
        budget.grow_to(body.len() + chunk.len())?;
        body.extend_from_slice(&chunk);
    }
    Ok(Body {
        bytes: body.freeze(),
        _budget: budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_due_at_its_average_rate_after_its_first_second() {
        let t0 = Instant::now();
        assert_eq!(due(t0, 0, 1000), t0 + Duration::from_millis(1001));
        assert_eq!(due(t0, 999, 1000), t0 + Duration::from_secs(2));
        assert!(due(t0, 10, 0) > t0, "a zero rate is one byte a second");
    }
}
