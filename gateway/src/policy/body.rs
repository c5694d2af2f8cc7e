//! Reading a request body whole, within bounds: at most `max_body_bytes`
//! (413 beyond, whether the length was declared or the body is chunked),
//! and within the gateway-wide budget of buffered bytes (503 beyond), so
//! many large bodies at once cannot exhaust memory. Every POST body is read
//! this way, so every one is checked as JSON-RPC before a backend sees it.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use crate::reject::Reject;
use crate::state::{BodyBudget, State};

/// A body read whole, holding its share of the buffer budget until dropped.
pub struct Body {
    pub bytes: Bytes,
    _budget: BodyBudget,
}

/// Reads the request body (POST): declared length first, then each chunk.
pub async fn read(session: &mut Session, state: &std::sync::Arc<State>) -> Result<Body, Reject> {
    let limit = state.limits().max_body_bytes;
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Reject::BodyTooLarge);
    }
    // Reserve what was declared (or a first slice of the limit) and grow as chunks arrive.
    let mut budget = state.reserve_body(declared.unwrap_or(0))?;
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(64 * 1024));
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
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
