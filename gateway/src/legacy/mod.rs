//! The legacy HTTP+SSE transport (2024-11-05), bridged onto Streamable HTTP
//! sessions so backends only ever serve `/mcp`.
//!
//! `GET /sse` opens a stream whose first event names a gateway-relative
//! `/messages?sessionId=…`; each POST there (already checked by the policy
//! steps) is answered 202 at once and queued for the session's worker,
//! which sends it to the session's backend through the one upstream client
//! and turns whatever comes back (JSON or SSE) into `event: message` events
//! on the client's stream.
//!
//! Bounds: the session table is capped ([`table`]); each session's inbox is
//! bounded in messages and in bytes (503 when full); its calls to the backend
//! run at most `legacy_session_concurrency` at a time and each takes a unit
//! of the gateway's in-flight budget; its outbound queue is bounded, and a
//! client that cannot take an event within `write_timeout` is dropped.

pub mod bridge;
pub mod table;

pub use bridge::Bridge;
