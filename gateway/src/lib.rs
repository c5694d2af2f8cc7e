//! `mcp-gateway`: the public front door for MCP servers, on pingora.
//!
//! Its modules stand on floors, each using only those on its own floor or
//! below: the table is in ARCHITECTURE.md, and `tests/structure.rs` holds
//! the code to it (no import up a floor, no import circle).

pub mod admin;
pub mod app;
pub mod asks;
pub mod cluster;
pub mod config;
pub mod ctl;
pub mod federation;
pub mod front;
pub mod legacy;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod reject;
pub mod relay;
pub mod respond;
pub mod revisions;
pub mod session;
pub mod state;
pub mod stdio;
pub mod streamable;
pub mod tls;
pub mod token;
pub mod trace;
pub mod upstream;
