//! The small steps `proxy::request_filter` runs in order before a request
//! reaches a transport. Each is a pure function or a short async read that
//! returns `Result<_, Reject>` (`crate::reject`); none writes a response.
//!
//! | step | file | refuses with |
//! |---|---|---|
//! | capacity | `state.rs` (`State::enter`) | 503 + Retry-After |
//! | route | `session::Sessions::route` | 404 |
//! | client address | [`limits::Limiters::check_ip`] (before credentials) | 429 |
//! | origin | [`edge::check_origin`] | 403 |
//! | credentials | [`auth::Authenticator::authenticate`] (per pool mode) | 401 + `WWW-Authenticate` |
//! | pool access | [`auth::Grant::may_reach`] | 403 `insufficient_scope` |
//! | principal rate | [`limits::Limiters::check_request`] | 429 + `Retry-After` |
//! | method / accept | [`edge::check_method`] | 405 / 406 / 400 |
//! | body | [`body::read`] | 413, 503 (body budget), 400 |
//! | JSON-RPC | [`jsonrpc::parse`], [`jsonrpc::check_headers`] | 400 (-32700 / -32600) |
//! | tool | [`auth::Grant::may_call`], [`limits::Limiters::check_tool`] | 403 / 429 |
//! | sessions, streams | [`limits::Limiters::check_new_session`], [`limits::Limiters::open_stream`] | 429 |
//! | session | `session::Sessions::open` | 404 (-32001) |
//! | across replicas | [`shared::Shared::check`] (with `[cluster] store`) | 429 / 404 / 503 (`fail_closed`) |

pub mod auth;
pub mod body;
pub mod edge;
pub mod guard;
pub mod jsonrpc;
pub mod keyed;
pub mod limits;
pub mod shared;
