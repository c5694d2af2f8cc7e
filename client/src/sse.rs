//! The legacy HTTP+SSE transport (2024-11-05), client side: `GET /sse`
//! gives an `endpoint` event naming where to POST; server messages arrive as
//! `event: message`. Exposed to rmcp as a (Sink, Stream) pair.

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use futures::channel::mpsc as fmpsc;
use mcp_sse::{Event, Splitter};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio_util::sync::CancellationToken;

/// Largest event the client takes from a server; a larger one ends the stream.
pub const MAX_EVENT: usize = 16 * 1024 * 1024;

pub type Transport = (
    fmpsc::Sender<ClientJsonRpcMessage>,
    futures::stream::BoxStream<'static, ServerJsonRpcMessage>,
);

pub async fn connect(http: reqwest::Client, sse_url: &str) -> Result<Transport> {
    let base = reqwest::Url::parse(sse_url).context("SSE URL")?;
    let resp = http
        .get(base.clone())
        .header("accept", "text/event-stream")
        .send()
        .await
        .context("opening the SSE stream")?;
    if !resp.status().is_success() {
        bail!("GET {sse_url} answered {}", resp.status());
    }
    let mut body = resp.bytes_stream();
    let mut parser = Splitter::new(MAX_EVENT);
    let mut pending = Vec::new();
    let endpoint = 'found: loop {
        let chunk = body
            .next()
            .await
            .context("SSE stream ended before the endpoint event")??;
        let mut events = parser.push(&chunk)?.into_iter();
        while let Some(ev) = events.next() {
            if ev.event_type().as_deref() == Some("endpoint") {
                pending.extend(events);
                break 'found ev.data().unwrap_or_default().into_owned();
            }
        }
    };
    let endpoint = base.join(endpoint.trim()).context("endpoint URL")?;
    if endpoint.origin() != base.origin() {
        bail!("the server's endpoint {endpoint} is on another origin; refusing");
    }

    let stop = CancellationToken::new();
    let (in_tx, in_rx) = tokio::sync::mpsc::channel::<ServerJsonRpcMessage>(64);
    let reader_stop = stop.clone();
    tokio::spawn(async move {
        let deliver = |ev: Event| serde_json::from_str::<ServerJsonRpcMessage>(&ev.data()?).ok();
        for ev in pending {
            if let Some(m) = deliver(ev)
                && in_tx.send(m).await.is_err()
            {
                return;
            }
        }
        loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = reader_stop.cancelled() => return,
            };
            let Some(Ok(chunk)) = chunk else { return };
            let Ok(events) = parser.push(&chunk) else {
                tracing::warn!(
                    "legacy SSE: the server sent an event over {MAX_EVENT} bytes; closing"
                );
                return;
            };
            for ev in events {
                if matches!(ev.event_type().as_deref(), None | Some("message"))
                    && let Some(m) = deliver(ev)
                    && in_tx.send(m).await.is_err()
                {
                    return;
                }
            }
        }
    });

    let (out_tx, mut out_rx) = fmpsc::channel::<ClientJsonRpcMessage>(16);
    tokio::spawn(async move {
        while let Some(msg) = out_rx.next().await {
            let sent = http.post(endpoint.clone()).json(&msg).send().await;
            match sent {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!(status = %r.status(), "legacy SSE: message refused"),
                Err(e) => tracing::warn!(error = %e, "legacy SSE: message not sent"),
            }
        }
        stop.cancel();
    });
    let stream = tokio_stream_from(in_rx);
    Ok((out_tx, stream))
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<ServerJsonRpcMessage>,
) -> futures::stream::BoxStream<'static, ServerJsonRpcMessage> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_named_events_across_chunks() {
        let mut p = Splitter::new(MAX_EVENT);
        assert!(
            p.push(b"event: endpoint\ndata: /messages?sessionId=")
                .unwrap()
                .is_empty()
        );
        let evs = p
            .push(b"abc\n\n: keepalive\n\nevent: message\ndata: {}\n\n")
            .unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].event_type().as_deref(), Some("endpoint"));
        assert_eq!(evs[0].data().as_deref(), Some("/messages?sessionId=abc"));
        assert!(evs[1].is_comment_only());
        assert_eq!(evs[2].data().as_deref(), Some("{}"));
    }
}
