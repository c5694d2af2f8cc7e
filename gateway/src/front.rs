//! The MCP listeners' front door, below HTTP: every connection they accept
//! passes here before pingora reads a byte of it ([`Front`], a pingora
//! `ServerApp` around the proxy). It caps the connections one client address
//! holds open (`max_connections_per_ip`), and holds each HTTP/1 request
//! header to a whole-header deadline (`header_timeout`, from its first byte)
//! and to a size bound that holds before the header ends
//! (`max_header_bytes`), where pingora alone has a per-read timeout and a
//! 1 MiB bound; a connection waiting for its next request gets
//! `idle_timeout`. What is cut is counted (`mcp_gateway_connections_cut_total`).
//!
//! HTTP/2 connections (ALPN `h2`) are only capped: their framing is the h2
//! library's, which bounds header lists itself.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::app::Gateway;
use crate::metrics::Cut;

/// A pingora application wrapped in the front door's checks.
pub struct Front<A> {
    pub app: Arc<A>,
    pub gw: Arc<Gateway>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Front<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let state = &self.gw.state;
        let limits = state.limits();
        let ip = peer_ip(&stream);
        let _open = match ip.map(|ip| state.connections.enter(ip, limits.max_connections_per_ip)) {
            Some(None) => {
                state.metrics.cut(Cut::OverCap);
                tracing::debug!(ip = ?ip, "connection refused: its address holds its cap of connections");
                return None;
            }
            Some(Some(held)) => Some(held),
            None => None,
        };
        let stream: Stream = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            stream
        } else {
            Box::new(Guarded::new(
                stream,
                Rules::from(&*limits),
                Arc::clone(state),
            ))
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet()?.ip();
    Some(addr)
}

/// The bounds one connection is held to (read when it was accepted).
#[derive(Clone, Copy, Debug)]
struct Rules {
    idle: Duration,
    header_timeout: Duration,
    max_header: usize,
}

impl From<&crate::config::Limits> for Rules {
    fn from(l: &crate::config::Limits) -> Self {
        Self {
            idle: l.idle_timeout,
            header_timeout: l.header_timeout,
            max_header: l.max_header_bytes,
        }
    }
}

/// Where a connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request (`armed`: the idle clock runs).
    Waiting { armed: bool },
    /// Reading a request header: `seen` bytes so far, `at` where the scan
    /// for the blank line ending it stands (0: in a line, 1: after LF,
    /// 2: after LF CR, 3: only line ends so far, which RFC 9112 lets a
    /// server skip before the request line).
    Head { seen: usize, at: u8 },
    /// The header has ended: the body and the answer (bounded elsewhere).
    Rest,
}

/// A client connection held to [`Rules`].
struct Guarded {
    inner: Stream,
    rules: Rules,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    state: Arc<crate::state::State>,
}

impl fmt::Debug for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, rules: Rules, state: Arc<crate::state::State>) -> Self {
        Self {
            inner,
            rules,
            phase: Phase::Waiting { armed: false },
            timer: Box::pin(tokio::time::sleep(rules.idle)),
            state,
        }
    }

    /// Takes note of bytes read; an error ends the connection.
    fn saw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (mut seen, mut at) = match self.phase {
            Phase::Rest => return Ok(()),
            Phase::Head { seen, at } => (seen, at),
            Phase::Waiting { .. } => {
                let deadline = Instant::now() + self.rules.header_timeout;
                self.timer.as_mut().reset(deadline);
                (0, 3)
            }
        };
        for (i, b) in bytes.iter().enumerate() {
            at = match (at, *b) {
                (3, b'\r' | b'\n') => 3,
                (1 | 2, b'\n') => {
                    self.phase = Phase::Rest;
                    return self.bounded(seen + i + 1);
                }
                (_, b'\n') => 1,
                (1, b'\r') => 2,
                _ => 0,
            };
        }
        seen += bytes.len();
        self.phase = Phase::Head { seen, at };
        self.bounded(seen)
    }

    fn bounded(&self, header: usize) -> io::Result<()> {
        if header <= self.rules.max_header {
            return Ok(());
        }
        self.state.metrics.cut(Cut::HeaderSize);
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request header over max_header_bytes",
        ))
    }

    /// A read is waiting: the clock of the phase runs.
    fn poll_clock(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let cut = match &mut self.phase {
            Phase::Rest => return Poll::Pending,
            Phase::Waiting { armed } => {
                if !*armed {
                    *armed = true;
                    let deadline = Instant::now() + self.rules.idle;
                    self.timer.as_mut().reset(deadline);
                }
                Cut::Idle
            }
            Phase::Head { .. } => Cut::HeaderTimeout,
        };
        match self.timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.state.metrics.cut(cut);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client too slow (idle_timeout or header_timeout)",
                )))
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(self.saw(new))
            }
            Poll::Pending => self.poll_clock(cx),
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.phase == Phase::Rest {
            // An answer: the next bytes read start the next request.
            self.phase = Phase::Waiting { armed: false };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.phase == Phase::Rest {
            self.phase = Phase::Waiting { armed: false };
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guarded connection and its client end (kept, so writes go somewhere).
    fn guarded(max_header: usize) -> (Guarded, tokio::io::DuplexStream) {
        let (a, client) = tokio::io::duplex(64);
        let rules = Rules {
            idle: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_header,
        };
        let state = crate::state::State::new(crate::config::Limits::default());
        (Guarded::new(Box::new(a), rules, state), client)
    }

    #[tokio::test]
    async fn a_header_ends_at_its_blank_line_whatever_the_line_ends_and_reads() {
        for (chunks, header) in [
            (vec!["GET / HTTP/1.1\r\nHost: x\r\n\r\nbody\r\n\r\n"], 29),
            (vec!["GET / HTTP/1.1\nHost: x\n", "\nbody"], 24),
            (vec!["\r\n\r\nGET / HTTP/1.1\r", "\n\r", "\n"], 22),
        ] {
            let (mut g, _client) = guarded(1000);
            let mut total = 0;
            for c in &chunks {
                g.saw(c.as_bytes()).unwrap();
                total += c.len();
            }
            assert_eq!(g.phase, Phase::Rest, "{chunks:?}");
            assert!(total >= header);
        }
    }

    #[tokio::test]
    async fn a_header_over_the_bound_is_refused_before_it_ends() {
        let (mut g, _client) = guarded(64);
        assert!(g.saw(b"GET / HTTP/1.1\r\n").is_ok());
        let long = format!("X-Pad: {}\r\n", "a".repeat(60));
        assert_eq!(
            g.saw(long.as_bytes()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    async fn an_answer_makes_the_next_bytes_a_new_request() {
        let (mut g, _client) = guarded(1000);
        g.saw(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(g.phase, Phase::Rest);
        let written =
            std::future::poll_fn(|cx| Pin::new(&mut g).poll_write(cx, b"HTTP/1.1 200 OK\r\n\r\n"))
                .await;
        assert!(written.is_ok());
        assert_eq!(g.phase, Phase::Waiting { armed: false });
        g.saw(b"GET").unwrap();
        assert!(matches!(g.phase, Phase::Head { seen: 3, .. }));
    }
}
