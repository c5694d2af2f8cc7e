//! A2A: find an agent's card and send it a text message, speaking whichever
//! protocol the card declares — v1.0 (`SendMessage`, `A2A-Version: 1.0`) or
//! v0.3 (`message/send`).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V03,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub url: String,
    pub version: Version,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub agent_name: String,
    pub text: String,
    pub context_id: Option<String>,
}

fn origin(url: &str) -> Result<String> {
    let u = reqwest::Url::parse(url).with_context(|| format!("agent URL {url}"))?;
    Ok(u.origin().ascii_serialization())
}

/// The agent's card: `/.well-known/agent-card.json`, else the older `agent.json`.
pub async fn fetch_card(http: &reqwest::Client, agent_url: &str) -> Result<Value> {
    let base = origin(agent_url)?;
    let mut last = None;
    for path in ["/.well-known/agent-card.json", "/.well-known/agent.json"] {
        match http.get(format!("{base}{path}")).send().await {
            Ok(r) if r.status().is_success() => return Ok(r.json().await?),
            Ok(r) => last = Some(anyhow::anyhow!("{path}: {}", r.status())),
            Err(e) => last = Some(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no agent card")))
}

/// Where to send and in which protocol version, from a card.
pub fn endpoint(card: &Value, agent_url: &str) -> Endpoint {
    let name = card["name"].as_str().unwrap_or("agent").to_owned();
    if let Some(iface) = card["supportedInterfaces"].as_array().and_then(|list| {
        list.iter().find(|i| {
            i["protocolBinding"]
                .as_str()
                .is_none_or(|b| b.eq_ignore_ascii_case("JSONRPC"))
                && i["protocolVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with('1'))
        })
    }) {
        return Endpoint {
            url: iface["url"].as_str().unwrap_or(agent_url).to_owned(),
            version: Version::V1,
            name,
        };
    }
    Endpoint {
        url: card["url"].as_str().unwrap_or(agent_url).to_owned(),
        version: Version::V03,
        name,
    }
}

/// The seed's fallback when an agent has no card: POST to `<url>/a2a`, v0.3.
pub fn fallback_endpoint(agent_url: &str) -> Endpoint {
    let url = if agent_url.trim_end_matches('/').ends_with("/a2a") {
        agent_url.to_owned()
    } else {
        format!("{}/a2a", agent_url.trim_end_matches('/'))
    };
    Endpoint {
        url,
        version: Version::V03,
        name: "agent".into(),
    }
}

fn message_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("mcp-client-{nanos:x}-{}", std::process::id())
}

pub fn request_body(ep: &Endpoint, text: &str, context_id: Option<&str>) -> Value {
    let mut message = match ep.version {
        Version::V1 => {
            json!({"role": "ROLE_USER", "parts": [{"text": text}], "messageId": message_id()})
        }
        Version::V03 => {
            json!({"role": "user", "kind": "message", "parts": [{"kind": "text", "text": text}], "messageId": message_id()})
        }
    };
    if let Some(c) = context_id {
        message["contextId"] = json!(c);
    }
    let method = match ep.version {
        Version::V1 => "SendMessage",
        Version::V03 => "message/send",
    };
    json!({"jsonrpc": "2.0", "id": message_id(), "method": method, "params": {"message": message}})
}

fn parts_text(parts: &Value) -> Vec<String> {
    parts
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["text"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The reply text of a `SendMessage` / `message/send` result: a message, or a
/// task (its status message and artifacts).
pub fn reply_text(result: &Value) -> (String, Option<String>) {
    let (msg, task) = match (result.get("message"), result.get("task")) {
        (Some(m), _) => (Some(m), None),
        (None, Some(t)) => (None, Some(t)),
        _ if result["kind"] == "task" => (None, Some(result)),
        _ => (Some(result), None),
    };
    let mut texts = Vec::new();
    let mut context = None;
    if let Some(m) = msg {
        texts.extend(parts_text(&m["parts"]));
        context = m["contextId"].as_str().map(str::to_owned);
    }
    if let Some(t) = task {
        texts.extend(parts_text(&t["status"]["message"]["parts"]));
        for a in t["artifacts"].as_array().into_iter().flatten() {
            texts.extend(parts_text(&a["parts"]));
        }
        context = t["contextId"].as_str().map(str::to_owned);
    }
    (texts.join("\n"), context)
}

pub async fn send(
    http: &reqwest::Client,
    agent_url: &str,
    text: &str,
    context_id: Option<&str>,
) -> Result<Reply> {
    let ep = match fetch_card(http, agent_url).await {
        Ok(card) => endpoint(&card, agent_url),
        Err(e) => {
            tracing::debug!(error = %e, "no agent card; using the seed's /a2a convention");
            fallback_endpoint(agent_url)
        }
    };
    let mut req = http
        .post(&ep.url)
        .json(&request_body(&ep, text, context_id));
    if ep.version == Version::V1 {
        req = req.header("A2A-Version", "1.0");
    }
    let resp: Value = req
        .send()
        .await
        .with_context(|| format!("sending to {}", ep.url))?
        .json()
        .await?;
    if let Some(err) = resp.get("error") {
        bail!("agent {} answered an error: {}", ep.name, err);
    }
    let (text, context) = reply_text(&resp["result"]);
    Ok(Reply {
        agent_name: ep.name,
        text,
        context_id: context,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_protocol_the_card_declares() {
        let v1 = json!({"name": "e", "supportedInterfaces": [{"url": "http://a/x", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}]});
        assert_eq!(endpoint(&v1, "http://a").version, Version::V1);
        assert_eq!(endpoint(&v1, "http://a").url, "http://a/x");
        let v03 = json!({"name": "e", "url": "http://a/rpc", "protocolVersion": "0.3.0"});
        assert_eq!(endpoint(&v03, "http://a").version, Version::V03);
        assert_eq!(fallback_endpoint("http://a:6000").url, "http://a:6000/a2a");
        assert_eq!(
            fallback_endpoint("http://a:6000/a2a").url,
            "http://a:6000/a2a"
        );
    }

    #[test]
    fn reads_replies_from_messages_and_tasks() {
        let m = json!({"message": {"contextId": "c1", "parts": [{"text": "hi"}]}});
        assert_eq!(reply_text(&m), ("hi".into(), Some("c1".into())));
        let t = json!({"kind": "task", "contextId": "c2", "status": {"message": {"parts": [{"kind": "text", "text": "done"}]}}, "artifacts": [{"parts": [{"text": "art"}]}]});
        assert_eq!(reply_text(&t), ("done\nart".into(), Some("c2".into())));
    }
}
