//! What may be sent again after a backend is lost. A request that provably
//! never reached a backend (connection refused, the backend said it does not
//! know the session, or refused it while draining) can go anywhere. One that
//! may have reached it is sent again only if running it twice is harmless:
//! the protocol's read-only methods, and tool calls the server itself marks
//! `readOnlyHint` or `idempotentHint` (learned from its `tools/list`
//! answers). Anything else gets an "outcome unknown" error — never run twice
//! silently.

use dashmap::DashMap;
use serde::Deserialize;

use crate::policy::jsonrpc::Method;

/// Most tool names remembered per pool.
const MAX_TOOLS: usize = 4096;

/// Per pool: which tools are safe to call twice, as the server said.
#[derive(Default)]
pub struct ToolHints {
    safe: DashMap<String, bool>,
}

impl ToolHints {
    /// Reads one `tools/list` answer (a JSON-RPC response) and remembers its hints.
    pub fn learn(&self, message: &str) {
        #[derive(Deserialize)]
        struct Reply {
            result: Option<Listing>,
        }
        #[derive(Deserialize)]
        struct Listing {
            #[serde(default)]
            tools: Vec<Tool>,
        }
        #[derive(Deserialize)]
        struct Tool {
            name: String,
            #[serde(default)]
            annotations: Option<Hints>,
        }
        #[derive(Deserialize, Default)]
        struct Hints {
            #[serde(rename = "readOnlyHint", default)]
            read_only: Option<bool>,
            #[serde(rename = "idempotentHint", default)]
            idempotent: Option<bool>,
        }
        let Ok(Reply {
            result: Some(listing),
        }) = serde_json::from_str::<Reply>(message)
        else {
            return;
        };
        for tool in listing.tools {
            if self.safe.len() >= MAX_TOOLS && !self.safe.contains_key(&tool.name) {
                break;
            }
            let hints = tool.annotations.unwrap_or_default();
            let safe = hints.read_only == Some(true) || hints.idempotent == Some(true);
            self.safe.insert(tool.name, safe);
        }
    }

    pub fn is_known(&self) -> bool {
        !self.safe.is_empty()
    }

    /// Whether the pool's servers named this tool in a `tools/list`.
    pub fn lists(&self, name: &str) -> bool {
        self.safe.contains_key(name)
    }

    pub fn tool_is_safe(&self, name: &str) -> bool {
        self.safe.get(name).is_some_and(|s| *s)
    }
}

/// Whether a request that may have reached a backend can be sent again.
pub fn safe_to_repeat(method: &Method, hints: &ToolHints) -> bool {
    match method {
        Method::Initialize
        | Method::Initialized
        | Method::Ping
        | Method::ToolsList
        | Method::ResourcesList
        | Method::ResourcesRead { .. }
        | Method::ResourceTemplatesList
        | Method::PromptsList
        | Method::PromptsGet { .. }
        | Method::ServerDiscover
        | Method::Cancelled => true,
        Method::ToolsCall { name } => hints.tool_is_safe(name),
        Method::Other(_) | Method::Notification(_) | Method::Response => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[
        {"name":"get_agent","annotations":{"readOnlyHint":true}},
        {"name":"update_agent","annotations":{"readOnlyHint":false,"idempotentHint":true,"destructiveHint":true}},
        {"name":"register_agent","annotations":{"readOnlyHint":false}},
        {"name":"delete_agent","annotations":{"destructiveHint":true}},
        {"name":"no_hints"}]}}"#;

    #[test]
    fn protocol_reads_are_safe_and_writes_are_not() {
        let hints = ToolHints::default();
        for m in [
            Method::Initialize,
            Method::Ping,
            Method::ToolsList,
            Method::ResourcesList,
            Method::ResourcesRead { uri: "x".into() },
        ] {
            assert!(safe_to_repeat(&m, &hints), "{m:?}");
        }
        assert!(!safe_to_repeat(&Method::Other("sampling/x".into()), &hints));
        assert!(!safe_to_repeat(&Method::Response, &hints));
        // nothing learned yet: no tool is known to be safe
        assert!(!safe_to_repeat(
            &Method::ToolsCall {
                name: "get_agent".into()
            },
            &hints
        ));
    }

    #[test]
    fn tool_calls_follow_the_servers_own_hints() {
        let hints = ToolHints::default();
        hints.learn(LISTING);
        assert!(hints.is_known());
        let call = |n: &str| Method::ToolsCall { name: n.into() };
        assert!(safe_to_repeat(&call("get_agent"), &hints), "read-only");
        assert!(safe_to_repeat(&call("update_agent"), &hints), "idempotent");
        assert!(!safe_to_repeat(&call("register_agent"), &hints));
        assert!(!safe_to_repeat(&call("delete_agent"), &hints));
        assert!(!safe_to_repeat(&call("no_hints"), &hints));
        assert!(!safe_to_repeat(&call("never_listed"), &hints));
    }

    #[test]
    fn garbage_listings_teach_nothing() {
        let hints = ToolHints::default();
        hints.learn("not json");
        hints.learn(r#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#);
        assert!(!hints.is_known());
    }
}
