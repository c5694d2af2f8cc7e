//! Server streams over shared HTTP/2 connections. A session's `GET` stream
//! is long-lived and mostly idle; over HTTP/1.1 each holds a backend
//! connection of its own (a socket on both sides, hyper's connection task
//! and buffers: ~15 KiB of the gateway's memory per idle session). To a
//! pool whose backends speak HTTP/2 without TLS (h2c with prior knowledge;
//! the pool's `http2_streams = true`), those streams share a few HTTP/2
//! connections per backend instead: up to [`STREAMS_PER_CONN`] each.
//!
//! Bounds: at most [`CONNS_PER_BACKEND`] connections per backend address
//! (a stream beyond them goes over HTTP/1.1 as before), addresses kept in a
//! table of [`ADDRESSES`] that forgets one unused for [`FORGET`]; a
//! connection's flow-control window is small enough that a stalled client's
//! stream buffers at most [`STREAM_WINDOW`] bytes and cannot starve the
//! others. A backend's lock is held only to pick a connection (once per
//! stream, never per call, never across an await).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::UpstreamError;

/// Streams per connection: the least a server should allow (RFC 9113 §6.5.2).
pub const STREAMS_PER_CONN: usize = 100;
/// Connections per backend address before streams go over HTTP/1.1.
pub const CONNS_PER_BACKEND: usize = 64;
/// Backend addresses remembered at once.
const ADDRESSES: u64 = 4096;
/// An address with no new stream for this long is forgotten (its idle
/// connections close; busy ones close when their last stream ends).
const FORGET: Duration = Duration::from_secs(120);
/// What a stream may have in flight before the backend must wait.
const STREAM_WINDOW: u32 = 64 * 1024;

/// One backend's connections, and the turn to open another (one opens
/// at a time, so a burst of new streams fills one connection instead of
/// opening one each).
#[derive(Default)]
struct Conns {
    held: Mutex<Vec<Arc<Conn>>>,
    opening: tokio::sync::Mutex<()>,
}

pub struct SharedStreams {
    by_addr: moka::sync::Cache<SocketAddr, Arc<Conns>>,
    connect_timeout: Duration,
}

struct Conn {
    send: SendRequest<Full<Bytes>>,
    streams: AtomicUsize,
}

/// One stream's hold on its connection, for as long as its response body
/// is read: the connection counts it, and stays open while it lives.
pub struct Lease {
    conn: Arc<Conn>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease {
    fn new(conn: Arc<Conn>) -> Self {
        conn.streams.fetch_add(1, Ordering::Relaxed);
        Self { conn }
    }

    /// Sends the request on the leased connection.
    pub async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let mut send = self.conn.send.clone();
        send.ready()
            .await
            .map_err(|e| UpstreamError::Failed(format!("shared HTTP/2 connection: {e}")))?;
        send.send_request(req)
            .await
            .map_err(|e| UpstreamError::Failed(e.to_string()))
    }
}

impl SharedStreams {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            by_addr: moka::sync::Cache::builder()
                .max_capacity(ADDRESSES)
                .time_to_idle(FORGET)
                .build(),
            connect_timeout,
        }
    }

    /// A stream on a connection to `addr` with room for it (opened if
    /// none has); `None` when the backend has all its connections full.
    pub async fn lease(&self, addr: SocketAddr) -> Result<Option<Lease>, UpstreamError> {
        let conns = self.by_addr.get_with(addr, Default::default);
        if let Some(lease) = conns.pick() {
            return Ok(Some(lease));
        }
        let _turn = conns.opening.lock().await;
        // whoever opened before this turn may have made room
        if let Some(lease) = conns.pick() {
            return Ok(Some(lease));
        }
        if conns.lock().len() >= CONNS_PER_BACKEND {
            return Ok(None);
        }
        let conn = Arc::new(self.connect(addr).await?);
        let lease = Lease::new(Arc::clone(&conn));
        conns.lock().push(conn);
        Ok(Some(lease))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        let tcp = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::Connect(format!("{addr}: connect timed out")))?
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
        tcp.set_nodelay(true).ok();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(STREAM_WINDOW * STREAMS_PER_CONN as u32)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(format!("{addr}: HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "shared HTTP/2 backend connection ended");
            }
        });
        Ok(Conn {
            send,
            streams: AtomicUsize::new(0),
        })
    }
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Conn>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection with room: the first that is open and not full. Closed
    /// connections leave the list, and of those carrying no stream one stays.
    fn pick(&self) -> Option<Lease> {
        let mut held = self.lock();
        let mut idle_kept = false;
        held.retain(|c| {
            if c.send.is_closed() {
                return false;
            }
            if c.streams.load(Ordering::Relaxed) == 0 {
                let keep = !idle_kept;
                idle_kept = true;
                return keep;
            }
            true
        });
        held.iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < STREAMS_PER_CONN)
            .map(|c| Lease::new(Arc::clone(c)))
    }
}
