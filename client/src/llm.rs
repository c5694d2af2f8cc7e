//! The chat's language model: the Anthropic Messages API or any
//! OpenAI-compatible chat-completions endpoint (local models included).
//! Each provider keeps the conversation in its own wire format.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub schema: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub input: Value,
}

#[derive(Debug, Clone, Default)]
pub struct Turn {
    pub text: String,
    pub calls: Vec<ToolCall>,
}

#[derive(Debug, Clone)]
pub enum Provider {
    Anthropic {
        base_url: String,
        api_key: String,
        model: String,
    },
    OpenAi {
        base_url: String,
        api_key: Option<String>,
        model: String,
    },
}

/// Sends a request to an LLM API and returns its JSON, or its error message.
async fn call_api(req: reqwest::RequestBuilder, api: &str) -> Result<Value> {
    let resp = req
        .send()
        .await
        .with_context(|| format!("calling the {api}"))?;
    let status = resp.status();
    let v: Value = resp
        .json()
        .await
        .with_context(|| format!("{api} answered non-JSON"))?;
    if !status.is_success() {
        bail!(
            "{api} {status}: {}",
            v["error"]["message"].as_str().unwrap_or(&v.to_string())
        );
    }
    Ok(v)
}

pub struct Conversation {
    provider: Provider,
    tools: Vec<ToolSpec>,
    system: String,
    messages: Vec<Value>,
}

impl Conversation {
    pub fn new(provider: Provider, tools: Vec<ToolSpec>, system: &str) -> Self {
        let mut messages = Vec::new();
        if let Provider::OpenAi { .. } = provider {
            messages.push(json!({"role": "system", "content": system}));
        }
        Self {
            provider,
            tools,
            system: system.to_owned(),
            messages,
        }
    }

    pub fn user(&mut self, text: &str) {
        self.messages.push(json!({"role": "user", "content": text}));
    }

    /// Feeds tool results back (each with the id of the call it answers).
    pub fn tool_results(&mut self, results: &[(ToolCall, String, bool)]) {
        match self.provider {
            Provider::Anthropic { .. } => {
                let content: Vec<Value> = results
                    .iter()
                    .map(|(c, out, is_error)| json!({"type": "tool_result", "tool_use_id": c.id, "content": out, "is_error": is_error}))
                    .collect();
                self.messages
                    .push(json!({"role": "user", "content": content}));
            }
            Provider::OpenAi { .. } => {
                for (c, out, _) in results {
                    self.messages
                        .push(json!({"role": "tool", "tool_call_id": c.id, "content": out}));
                }
            }
        }
    }

    pub fn history_len(&self) -> usize {
        self.messages.len()
    }

    /// One model call: what it says and which tools it wants.
    pub async fn step(&mut self, http: &reqwest::Client) -> Result<Turn> {
        match &self.provider {
            Provider::Anthropic {
                base_url,
                api_key,
                model,
            } => {
                let tools: Vec<Value> = self
                    .tools
                    .iter()
                    .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.schema}))
                    .collect();
                let body = json!({"model": model, "max_tokens": 4096, "system": self.system, "tools": tools, "messages": self.messages});
                let req = http
                    .post(format!("{}/v1/messages", base_url.trim_end_matches('/')))
                    .header("x-api-key", api_key)
                    .header("anthropic-version", "2023-06-01")
                    .json(&body);
                let v = call_api(req, "Anthropic API").await?;
                let content = v["content"].as_array().cloned().unwrap_or_default();
                let mut turn = Turn::default();
                for block in &content {
                    match block["type"].as_str() {
                        Some("text") => turn.text.push_str(block["text"].as_str().unwrap_or("")),
                        Some("tool_use") => turn.calls.push(ToolCall {
                            id: block["id"].as_str().unwrap_or_default().to_owned(),
                            name: block["name"].as_str().unwrap_or_default().to_owned(),
                            input: block["input"].clone(),
                        }),
                        _ => {}
                    }
                }
                self.messages
                    .push(json!({"role": "assistant", "content": content}));
                Ok(turn)
            }
            Provider::OpenAi {
                base_url,
                api_key,
                model,
            } => {
                let tools: Vec<Value> = self
                    .tools
                    .iter()
                    .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.schema}}))
                    .collect();
                let body = json!({"model": model, "messages": self.messages, "tools": tools});
                let mut req = http
                    .post(format!(
                        "{}/chat/completions",
                        base_url.trim_end_matches('/')
                    ))
                    .json(&body);
                if let Some(k) = api_key {
                    req = req.bearer_auth(k);
                }
                let v = call_api(req, "chat-completions API").await?;
                let msg = v["choices"][0]["message"].clone();
                let mut turn = Turn {
                    text: msg["content"].as_str().unwrap_or("").to_owned(),
                    calls: Vec::new(),
                };
                for c in msg["tool_calls"].as_array().into_iter().flatten() {
                    let args = c["function"]["arguments"].as_str().unwrap_or("{}");
                    turn.calls.push(ToolCall {
                        id: c["id"].as_str().unwrap_or_default().to_owned(),
                        name: c["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        input: serde_json::from_str(args).unwrap_or_else(|_| json!({})),
                    });
                }
                let mut assistant = json!({"role": "assistant", "content": msg["content"].clone()});
                if let Some(calls) = msg.get("tool_calls").filter(|c| c.is_array()) {
                    assistant["tool_calls"] = calls.clone();
                }
                self.messages.push(assistant);
                Ok(turn)
            }
        }
    }
}
