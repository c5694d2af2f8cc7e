//! `mcp-gateway`: the public front door for MCP servers, on pingora.
//!
//! Floors, each using only those below it (ARCHITECTURE.md has the map):
//! - top: [`proxy`] (pingora's phases: policy steps, then a transport),
//!   [`admin`], [`ctl`] (operator commands), [`app`] (the parts, assembled once);
//! - transports: [`streamable`] (`/mcp`) and [`legacy`] (`/sse` + `/messages`);
//! - sessions: [`session`] (routing, pinning, sealed ids, ejection);
//! - shared: [`relay`] (writing a response to the client), [`upstream`]
//!   (the one way to reach a backend), [`policy`] (the steps), [`state`] (budgets);
//! - ground: [`reject`] (every refusal, typed), [`metrics`], [`pool`], [`token`],
//!   [`config`], [`tls`].

pub mod admin;
pub mod app;
pub mod asks;
pub mod config;
pub mod ctl;
pub mod front;
pub mod legacy;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod reject;
pub mod relay;
pub mod respond;
pub mod session;
pub mod state;
pub mod streamable;
pub mod tls;
pub mod token;
pub mod trace;
pub mod upstream;
