//! `mcp-client`: connect to the gateway over any MCP transport and use it
//! from the shell. One file per command under [`cmd`]; [`connect`] picks the
//! transport (stateless → Streamable HTTP session → legacy SSE, or forced);
//! [`sse`] is the legacy HTTP+SSE transport rmcp no longer ships; [`llm`]
//! and [`a2a`] are the chat's two outside worlds.

pub mod a2a;
pub mod cmd;
pub mod connect;
pub mod llm;
pub mod sse;
