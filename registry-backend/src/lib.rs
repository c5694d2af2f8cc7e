//! The NANDA agent registry as an MCP server.
//!
//! The crate is split the way a request flows through it:
//! [`http`] owns the listener, `/health` and the drain state; [`server`] is the
//! MCP handler that maps each of the eight tools (one file each under
//! [`tools`]) onto a [`store::AgentStore`]; [`store`] hides whether agents live
//! in the embedded SQLite file or in MongoDB. [`model`] and [`validate`] hold
//! the documents and the argument rules every tool shares.

pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod tools;
pub mod validate;
