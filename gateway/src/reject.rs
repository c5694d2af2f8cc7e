//! Every way the gateway refuses a request, as one type. A policy step
//! returns `Err(Reject)`; [`Reject::status`], [`Reject::code`],
//! [`Reject::retry_after`] and [`Reject::reason`] say how it is answered and
//! counted, and `relay::refuse` writes it (through the client's sink, in
//! the forms of `respond.rs`) — the only place that does.

use crate::metrics::Reason;

/// JSON-RPC code for "session not found / gone" (the MCP SDKs use -32001).
pub const SESSION_NOT_FOUND: i64 = -32001;
/// JSON-RPC code for gateway-side server errors (capacity, no backend).
pub const SERVER_ERROR: i64 = -32000;
/// JSON-RPC code for "the backend went away while it had this request; it
/// may or may not have run it". Outside -32020…-32099, which 2026-07-28
/// reserves for codes the spec defines.
pub const OUTCOME_UNKNOWN: i64 = -32003;
/// JSON-RPC code for missing or invalid credentials.
pub const UNAUTHORIZED: i64 = -32004;
/// JSON-RPC code for credentials that may not do this.
pub const FORBIDDEN: i64 = -32005;
/// JSON-RPC code for "rate limited": `-32023` (`RateLimited`) as SEP-3304
/// proposes for MCP, with `data.retryAfterSeconds`.
pub const RATE_LIMITED: i64 = -32023;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("gateway at capacity; retry shortly")]
    Capacity,
    #[error("not an MCP endpoint; use /mcp (Streamable HTTP) or /sse (legacy)")]
    NoRoute,
    #[error("Origin not allowed")]
    Origin,
    #[error("method not allowed; use {allow}")]
    Method { allow: &'static str },
    #[error("{0}")]
    NotAcceptable(&'static str),
    /// A well-formed HTTP request the endpoint cannot take (missing session id, …).
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request body too large")]
    BodyTooLarge,
    /// The body did not arrive within `body_timeout`, or too slowly.
    #[error("request body too slow")]
    BodyTimeout,
    /// Not JSON (-32700).
    #[error("{0}")]
    Parse(String),
    /// JSON, but not an acceptable JSON-RPC message (-32600).
    #[error("{0}")]
    Invalid(String),
    #[error("Session not found ({0}); start a new session")]
    UnknownSession(String),
    #[error("Session not found; open a new /sse stream")]
    UnknownLegacySession,
    #[error("too many legacy SSE sessions; retry later")]
    LegacyCapacity,
    #[error("session is busy; retry")]
    SessionBusy,
    #[error("no backend could be reached; retry shortly")]
    NoBackend,
    #[error("backend failed to answer")]
    BadGateway,
    /// A backend answer the legacy bridge cannot turn into a message.
    #[error("backend answered HTTP {0} without a JSON-RPC message")]
    BackendAnswer(u16),
    #[error(
        "the backend handling this request went away before answering; it may or may not have run, and it is not safe to repeat automatically"
    )]
    OutcomeUnknown,
    /// A client's answer to a server→client request (sampling, elicitation)
    /// whose backend is gone: the request died with it, and no other backend
    /// may receive the answer.
    #[error(
        "the server request this answers was lost with its backend; the answer was not passed to another backend"
    )]
    AnswerUndeliverable,
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// The principal may not reach this pool.
    #[error("forbidden: these credentials may not use this endpoint")]
    Forbidden { scope: Option<String> },
    #[error("forbidden: these credentials may not call the tool '{tool}'")]
    ToolDenied { tool: String, scope: Option<String> },
    #[error("rate limited ({what}); retry after {retry_after} s")]
    RateLimited {
        retry_after: u64,
        what: &'static str,
    },
    /// A virtual server's member failed the request: the cause, naming it.
    #[error("member {member}: {cause}")]
    Member { member: String, cause: Box<Reject> },
    /// Nothing on a virtual server has this name (or URI).
    #[error("{0}")]
    NotFound(String),
    /// A method a virtual server does not serve.
    #[error("method {0} is not served here")]
    NoMethod(String),
    /// What one MCP revision asks that the other cannot give (the version
    /// bridge): the message names both revisions.
    #[error("{0}")]
    Revisions(String),
    /// The store the replicas share is down and `on_store_down = "fail_closed"`.
    #[error("the gateway cannot check its shared limits now; retry shortly")]
    StoreUnavailable,
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            // The virtual server answers; one member's trouble is not the endpoint's.
            Reject::Member { .. }
            | Reject::NotFound(_)
            | Reject::NoMethod(_)
            | Reject::Revisions(_) => 200,
            Reject::Capacity
            | Reject::LegacyCapacity
            | Reject::SessionBusy
            | Reject::NoBackend
            | Reject::StoreUnavailable => 503,
            Reject::NoRoute | Reject::UnknownSession(_) | Reject::UnknownLegacySession => 404,
            Reject::Origin => 403,
            Reject::Method { .. } => 405,
            Reject::NotAcceptable(_) => 406,
            Reject::BodyTooLarge => 413,
            Reject::BodyTimeout => 408,
            Reject::BadRequest(_) | Reject::Parse(_) | Reject::Invalid(_) => 400,
            Reject::BadGateway | Reject::BackendAnswer(_) | Reject::AnswerUndeliverable => 502,
            // An answer, not a refusal: the JSON-RPC error says what happened.
            Reject::OutcomeUnknown => 200,
            Reject::Unauthorized(_) => 401,
            Reject::Forbidden { .. } | Reject::ToolDenied { .. } => 403,
            Reject::RateLimited { .. } => 429,
        }
    }

    pub fn code(&self) -> i64 {
        match self {
            Reject::Member { cause, .. } => cause.code(),
            // As a server answers a name it has not got.
            Reject::NotFound(_) => -32602,
            Reject::NoMethod(_) | Reject::Revisions(_) => -32601,
            Reject::Parse(_) => -32700,
            Reject::UnknownSession(_) | Reject::UnknownLegacySession => SESSION_NOT_FOUND,
            Reject::Capacity
            | Reject::LegacyCapacity
            | Reject::SessionBusy
            | Reject::NoBackend
            | Reject::StoreUnavailable => SERVER_ERROR,
            Reject::BadGateway | Reject::BackendAnswer(_) => -32603,
            Reject::AnswerUndeliverable => SERVER_ERROR,
            Reject::OutcomeUnknown => OUTCOME_UNKNOWN,
            Reject::Unauthorized(_) => UNAUTHORIZED,
            Reject::Forbidden { .. } | Reject::ToolDenied { .. } => FORBIDDEN,
            Reject::RateLimited { .. } => RATE_LIMITED,
            _ => -32600,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Reject::Member { cause, .. } => cause.retry_after(),
            Reject::Capacity | Reject::SessionBusy | Reject::NoBackend => Some(1),
            Reject::StoreUnavailable => Some(1),
            Reject::LegacyCapacity => Some(5),
            Reject::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The JSON-RPC error's `data`, when there is more to say.
    pub fn data(&self) -> Option<serde_json::Value> {
        match self {
            Reject::Member { member, cause } => {
                let mut data = match cause.data() {
                    Some(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                data.insert("member".into(), member.clone().into());
                let may_have_run = **cause == Reject::OutcomeUnknown;
                data.insert("mayHaveRun".into(), may_have_run.into());
                Some(serde_json::Value::Object(data))
            }
            Reject::RateLimited { retry_after, what } => Some(serde_json::json!({
                "retryAfterSeconds": retry_after,
                "limit": what,
            })),
            Reject::ToolDenied { tool, .. } => Some(serde_json::json!({ "tool": tool })),
            _ => None,
        }
    }

    pub fn allow(&self) -> Option<&'static str> {
        match self {
            Reject::Method { allow } => Some(allow),
            _ => None,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Reject::Member { cause, .. } => cause.reason(),
            Reject::NotFound(_) | Reject::NoMethod(_) | Reject::Revisions(_) => Reason::Malformed,
            Reject::Capacity | Reject::LegacyCapacity => Reason::Capacity,
            Reject::NoRoute => Reason::Route,
            Reject::Origin => Reason::Origin,
            Reject::Method { .. } | Reject::NotAcceptable(_) | Reject::BadRequest(_) => {
                Reason::Method
            }
            Reject::BodyTooLarge | Reject::BodyTimeout => Reason::Body,
            Reject::Parse(_) | Reject::Invalid(_) => Reason::Malformed,
            Reject::UnknownSession(_) | Reject::UnknownLegacySession => Reason::Session,
            Reject::SessionBusy => Reason::Busy,
            Reject::NoBackend => Reason::NoBackend,
            Reject::BadGateway
            | Reject::BackendAnswer(_)
            | Reject::OutcomeUnknown
            | Reject::AnswerUndeliverable => Reason::Upstream,
            Reject::Unauthorized(_) => Reason::Auth,
            Reject::Forbidden { .. } | Reject::ToolDenied { .. } => Reason::Policy,
            Reject::RateLimited { .. } => Reason::Limit,
            Reject::StoreUnavailable => Reason::Store,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rejection_knows_its_answer() {
        assert_eq!(Reject::Parse("x".into()).code(), -32700);
        assert_eq!(Reject::Invalid("x".into()).status(), 400);
        assert_eq!(Reject::UnknownSession("gone".into()).status(), 404);
        assert_eq!(Reject::UnknownSession("gone".into()).code(), -32001);
        assert_eq!(Reject::Capacity.retry_after(), Some(1));
        let limited = Reject::RateLimited {
            retry_after: 7,
            what: "requests per principal",
        };
        assert_eq!((limited.status(), limited.code()), (429, -32023));
        assert_eq!(limited.data().unwrap()["retryAfterSeconds"], 7);
        assert_eq!(Reject::Method { allow: "GET" }.allow(), Some("GET"));
        let closed = Reject::StoreUnavailable;
        assert_eq!((closed.status(), closed.retry_after()), (503, Some(1)));
        assert_eq!(closed.reason(), Reason::Store);
        assert_eq!(Reject::BodyTooLarge.reason(), Reason::Body);
        assert!(
            Reject::UnknownSession("session id expired".into())
                .to_string()
                .contains("expired")
        );
    }
}
