//! Who a client is, and where its session lives.
//!
//! A [`Binding`] is one client session as the exchange sees it: its pool,
//! the client's `initialize` parameters (to open the session again
//! elsewhere), and the backend session it lives on now ([`Link`]). A
//! Streamable HTTP request builds one from its sealed id (and this
//! replica's memory of moves); a legacy session keeps one for its whole
//! life, shared by its concurrent calls and its listener. Either way a lost
//! link is replaced once (`Sessions::relocate`, under `moving`), however
//! many requests noticed the loss, and each replacement gets a new
//! generation.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::HeaderName;
use tokio::sync::{Mutex, Notify};

use crate::asks::Tag;
use crate::policy::jsonrpc;
use crate::pool::{BackendState, Pool};
use crate::relay::Rewrite;
use crate::token::MAX_INIT;
use crate::upstream::{Forwarded, Outgoing, Upstream};

/// Who a request comes from, and how its traffic is shaped for them.
#[derive(Clone)]
pub struct Caller {
    /// The verified principal ("" when anonymous): sealed into new session
    /// ids and sent to backends, in `principal_header`, on every request of
    /// the session — those that open it again elsewhere included.
    pub principal: String,
    pub principal_header: HeaderName,
    /// How the client reached the gateway, for `X-Forwarded-*`.
    pub forwarded: Forwarded,
    /// Applied to `tools/list` answers (the filter of a restricted principal).
    pub rewrite: Option<Rewrite>,
}

impl Caller {
    /// The principal header and value for a backend request.
    pub fn principal_header(&self) -> Option<(&HeaderName, &str)> {
        Some((&self.principal_header, self.principal.as_str()))
    }
}

/// The backend session a client session lives on, as of one generation.
pub struct Link {
    pub backend: Arc<BackendState>,
    /// The backend's own session id (never shown to the client).
    pub session: String,
    /// The revision `initialize` settled on there, when the gateway saw it
    /// (sent as `MCP-Protocol-Version` when the client's own headers are not).
    pub version: Option<String>,
    pub generation: u64,
}

impl Link {
    /// Names this backend session on the server requests it sends (`asks`).
    pub fn tag(&self) -> Tag {
        Tag::of(&self.backend.id, &self.session)
    }
}

/// One client session: where it lives now, and how to move it.
pub struct Binding {
    pub pool: Arc<Pool>,
    /// The client's `initialize` params ("": the session cannot be moved).
    pub(super) init: String,
    /// The nonce of the client's sealed id (keys this replica's tables).
    pub(super) nonce: Option<[u8; 12]>,
    /// When the client's id was issued (Unix seconds; 0: unknown).
    pub(super) issued_at: u64,
    /// `None`: the backend it lived on is gone; it moves before anything is sent.
    current: ArcSwapOption<Link>,
    /// Held while a lost link is replaced, so it is replaced once.
    pub(super) moving: Mutex<()>,
    /// Woken on every move (a stored permit if nobody waits).
    moved: Notify,
    /// A session the gateway keeps alone, in its id (the version bridge:
    /// its servers speak only 2026-07-28, so there is no backend session).
    pub(super) carried: bool,
}

impl Binding {
    pub fn new(pool: Arc<Pool>, init: String, nonce: Option<[u8; 12]>, link: Option<Link>) -> Self {
        Self {
            pool,
            init,
            nonce,
            issued_at: 0,
            current: ArcSwapOption::new(link.map(Arc::new)),
            moving: Mutex::new(()),
            moved: Notify::new(),
            carried: false,
        }
    }

    /// Whether the gateway keeps this session alone (no backend session:
    /// each message goes to the servers stateless, `revisions/`).
    pub fn carried(&self) -> bool {
        self.carried
    }

    /// The client's `initialize` params, as sealed in its id.
    pub fn init(&self) -> &str {
        &self.init
    }

    /// The nonce of the client's sealed id, if it has one.
    pub fn nonce(&self) -> Option<&[u8; 12]> {
        self.nonce.as_ref()
    }

    /// The backend session it lives on now.
    pub fn current(&self) -> Option<Arc<Link>> {
        self.current.load_full()
    }

    /// The tag of the backend session it lives on now.
    pub fn tag(&self) -> Option<Tag> {
        self.current.load().as_ref().map(|l| l.tag())
    }

    /// Resolves once the session has moved (since the last call).
    pub async fn moved(&self) {
        self.moved.notified().await;
    }

    /// Ends the backend session it lives on (its client is gone): a DELETE,
    /// its answer read and dropped.
    pub async fn close(&self, upstream: &Upstream, caller: &Caller) {
        let Some(link) = self.current() else { return };
        let sent = upstream
            .send(
                link.backend.addr,
                Outgoing {
                    session: Some(&link.session),
                    protocol_version: link.version.as_deref(),
                    principal: caller.principal_header(),
                    ..Outgoing::own(http::Method::DELETE, "/mcp", &caller.forwarded)
                },
            )
            .await;
        if let Ok((_, mut frames)) = sent {
            let _ = frames.read_all(64 * 1024).await;
        }
    }

    pub(super) fn replace(&self, link: Link) {
        self.current.store(Some(Arc::new(link)));
        self.moved.notify_one();
    }
}

/// `initialize` params small enough to seal: whole if they fit, else only
/// what a new session needs (version, capabilities, the client's name and version).
pub fn trim_init(params: &str) -> String {
    if params.len() <= MAX_INIT {
        return params.to_owned();
    }
    #[derive(serde::Deserialize)]
    struct Init {
        #[serde(rename = "clientInfo")]
        client_info: Option<Info>,
    }
    #[derive(serde::Deserialize)]
    struct Info {
        name: Option<String>,
        version: Option<String>,
    }
    let info = serde_json::from_str::<Init>(params)
        .ok()
        .and_then(|i| i.client_info);
    let (name, client_version) = match info {
        Some(i) => (i.name, i.version),
        None => (None, None),
    };
    let version = jsonrpc::protocol_version(params)
        .unwrap_or_else(|| jsonrpc::ASSUMED_PROTOCOL_VERSION.to_owned());
    let short = serde_json::json!({
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": {"name": name.unwrap_or_default(), "version": client_version.unwrap_or_default()},
    })
    .to_string();
    if short.len() <= MAX_INIT {
        short
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_initialize_params_are_cut_to_what_a_new_session_needs() {
        let small = r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}"#;
        assert_eq!(trim_init(small), small);
        let big = format!(
            r#"{{"protocolVersion":"2025-03-26","capabilities":{{"x":"{}"}},"clientInfo":{{"name":"n","version":"2"}}}}"#,
            "y".repeat(5000)
        );
        let t = trim_init(&big);
        assert!(t.len() <= MAX_INIT);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["protocolVersion"], "2025-03-26");
        assert_eq!(v["clientInfo"]["name"], "n");
        assert_eq!(v["clientInfo"]["version"], "2");
    }
}
