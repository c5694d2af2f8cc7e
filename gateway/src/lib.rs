//! `mcp-gateway`: the public front door for MCP servers, on pingora.
//!
//! [`proxy`] is the request path (pingora phases); [`legacy`] bridges the
//! 2024-11-05 HTTP+SSE transport onto Streamable HTTP; [`token`] seals
//! gateway session ids; [`pool`] holds backend pools, discovery and managed
//! processes; [`admin`] is the operator's listener; [`config`] and [`tls`]
//! set it all up. See ARCHITECTURE.md for the invariants.

pub mod admin;
pub mod config;
pub mod legacy;
pub mod pool;
pub mod proxy;
pub mod tls;
pub mod token;
