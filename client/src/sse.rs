//! The legacy HTTP+SSE transport (2024-11-05), client side: `GET /sse`
//! gives an `endpoint` event naming where to POST; server messages arrive as
//! `event: message`. Exposed to rmcp as a (Sink, Stream) pair.

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use futures::channel::mpsc as fmpsc;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use tokio_util::sync::CancellationToken;

/// One parsed SSE event.
#[derive(Debug, Default, PartialEq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf
            .extend(chunk.iter().copied().filter(|b| *b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut ev = Event::default();
            let mut data = Vec::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev.event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if !data.is_empty() {
                ev.data = data.join("\n");
                out.push(ev);
            }
        }
        out
    }
}

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
    let mut parser = Parser::default();
    let mut pending = Vec::new();
    let endpoint = 'found: loop {
        let chunk = body
            .next()
            .await
            .context("SSE stream ended before the endpoint event")??;
        let mut events = parser.push(&chunk).into_iter();
        while let Some(ev) = events.next() {
            if ev.event.as_deref() == Some("endpoint") {
                pending.extend(events);
                break 'found ev.data;
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
        let deliver = |ev: Event| serde_json::from_str::<ServerJsonRpcMessage>(&ev.data).ok();
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
            for ev in parser.push(&chunk) {
                if matches!(ev.event.as_deref(), None | Some("message"))
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
    fn parses_named_events_across_chunks() {
        let mut p = Parser::default();
        assert!(
            p.push(b"event: endpoint\ndata: /messages?sessionId=")
                .is_empty()
        );
        let evs = p.push(b"abc\n\n: keepalive\n\nevent: message\ndata: {}\n\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some("endpoint"));
        assert_eq!(evs[0].data, "/messages?sessionId=abc");
        assert_eq!(evs[1].data, "{}");
    }
}
