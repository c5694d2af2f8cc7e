//! The load sessions' side of server→client requests: sampling and
//! elicitation answered with the scenario's configured reply (and the
//! capability declared only for what has a reply), each answer counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rmcp::ClientHandler;
#[allow(deprecated)] // sampling is deprecated by SEP-2577, and still what servers send
use rmcp::model::{
    ClientConfig, CreateMessageRequestMethod, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, ErrorData,
};
use rmcp::service::{RequestContext, RoleClient};
use serde_json::json;

use super::scenario::RepliesFile;

#[derive(Debug, Default)]
pub struct AnswerCounts {
    pub sampling: AtomicU64,
    pub elicitation: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Clone)]
pub struct Answering {
    info: ClientConfig,
    replies: Arc<RepliesFile>,
    pub counts: Arc<AnswerCounts>,
}

impl Answering {
    /// `info`: who the sessions say they are (and the version they offer).
    pub fn new(replies: RepliesFile, mut info: ClientConfig) -> Self {
        let mut caps = json!({});
        if replies.sampling.is_some() {
            caps["sampling"] = json!({});
        }
        if replies.elicitation.is_some() {
            caps["elicitation"] = json!({"form": {}});
        }
        info.capabilities = serde_json::from_value(caps).unwrap_or_default();
        Self {
            info,
            replies: Arc::new(replies),
            counts: Arc::default(),
        }
    }
}

#[allow(deprecated)]
impl ClientHandler for Answering {
    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }

    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let Some(reply) = &self.replies.sampling else {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ErrorData::method_not_found::<CreateMessageRequestMethod>());
        };
        let result = serde_json::from_value(json!({
            "role": "assistant",
            "content": {"type": "text", "text": reply.text},
            "model": reply.model,
            "stopReason": reply.stop_reason,
        }))
        .map_err(|e| ErrorData::internal_error(format!("the sampling reply: {e}"), None))?;
        self.counts.sampling.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let Some(reply) = &self.replies.elicitation else {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            return serde_json::from_value(json!({"action": "decline"}))
                .map_err(|e| ErrorData::internal_error(e.to_string(), None));
        };
        let result =
            serde_json::from_value(json!({"action": reply.action, "content": reply.content}))
                .map_err(|e| {
                    ErrorData::internal_error(format!("the elicitation reply: {e}"), None)
                })?;
        self.counts.elicitation.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }
}
