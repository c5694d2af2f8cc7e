//! Operator commands: `mcp-gateway rollout` asks a running gateway's admin
//! listener to roll a managed pool out and prints its progress until done.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::upstream::{Forwarded, Outgoing, Upstream};

async fn call(
    up: &Upstream,
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    let fwd = Forwarded::default();
    let mut headers = http::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the admin token is not a valid header value")?,
        );
    }
    let (parts, mut frames) = up
        .send(
            admin,
            Outgoing {
                client_headers: Some(&headers),
                accept: Some("application/json"),
                keep_credentials: true,
                ..Outgoing::own(method, path, &fwd)
            },
        )
        .await
        .with_context(|| format!("the admin listener at {admin}"))?;
    let body = frames.read_all(1024 * 1024).await?;
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((parts.status.as_u16(), value))
}

/// Starts (or joins) a rollout and prints each line of progress; Ok(true) if it succeeded.
pub async fn rollout(admin: SocketAddr, pool: &str, token: Option<&str>) -> Result<bool> {
    let up = Upstream::new(Duration::from_secs(2), Duration::from_secs(60));
    let path = format!("/pools/{pool}/rollout");
    let (status, body) = call(&up, admin, http::Method::POST, &path, token).await?;
    if status != 202 {
        bail!(
            "{}",
            body["error"]
                .as_str()
                .unwrap_or("the gateway refused the rollout")
        );
    }
    let mut seen = 0;
    loop {
        let (_, body) = call(
            &up,
            admin,
            http::Method::GET,
            &format!("{path}?from={seen}"),
            token,
        )
        .await?;
        for line in body["lines"].as_array().into_iter().flatten() {
            println!("{}", line.as_str().unwrap_or_default());
            seen += 1;
        }
        if body["done"] == true {
            return Ok(body["ok"] == true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
