//! The small steps `proxy::request_filter` runs in order before a request
//! reaches a transport. Each is a pure function or a short async read that
//! returns `Result<_, Reject>` (`crate::reject`); none writes a response.
//!
//! | step | file | refuses with |
//! |---|---|---|
//! | capacity | `state.rs` (`State::enter`) | 503 + Retry-After |
//! | route | `session::Sessions::route` | 404 |
//! | origin | [`edge::check_origin`] | 403 |
//! | method / accept | [`edge::check_method`] | 405 / 406 / 400 |
//! | body | [`body::read`] | 413, 503 (body budget), 400 |
//! | JSON-RPC | [`jsonrpc::parse`], [`jsonrpc::check_headers`] | 400 (-32700 / -32600) |
//! | session | `session::Sessions::open` | 404 (-32001) |

pub mod body;
pub mod edge;
pub mod jsonrpc;
