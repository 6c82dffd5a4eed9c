//! The accept loop. Each connection is served by hyper with three bounds a slow or hostile client
//! cannot get around: the request head must arrive within `header_timeout` (counted from when the
//! connection is ready for a request, so it also closes idle keep-alive connections), a response
//! write that makes no progress for `idle_timeout` (a client that stopped reading) closes the
//! connection, and on shutdown open responses get `shutdown_grace` before streams are ended and
//! the remaining connections dropped. Request bodies are bounded by [`super::request_body`].
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::shutdown::Shutdown;

/// After streams are told to end, how long their last events get to reach the clients.
const FLUSH_AFTER_CLOSE: Duration = Duration::from_secs(2);

/// Timeouts of client connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Longest time to receive a request head (`--header-timeout`).
    pub header_timeout: Duration,
    /// Longest silence from the client while the server waits on it: between request body
    /// chunks, and for a response write to make progress (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// After a shutdown signal, how long accepted responses (streams included) may still run.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    /// 10 s for headers, 60 s idle, 30 s grace.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `signal` resolves, then shuts down through `shutdown`'s
/// phases; returns once every connection has closed or been dropped.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: Shutdown,
    signal: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout)
        .keep_alive_timeout(limits.idle_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = StallGuard::new(stream, limits.idle_timeout);
                    let sniffed = guard.sniffed.clone();
                    let io = TokioIo::new(guard);
                    let service = TowerToHyperService::new(app.clone());
                    let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
                    let connection = graceful.watch(connection);
                    let header_timeout = limits.header_timeout;
                    connections.spawn(async move {
                        // The HTTP/1-or-2 sniffing ahead of hyper waits for bytes with no timer of
                        // its own: a client that sends nothing, or a slow prefix of the HTTP/2
                        // preface, is bounded here; past the sniffing hyper's own timers apply.
                        tokio::pin!(connection);
                        let result = match tokio::time::timeout(header_timeout, &mut connection).await {
                            Ok(result) => result,
                            Err(_) if !sniffed.load(Ordering::Relaxed) => {
                                tracing::debug!(%peer, "no request within the header timeout");
                                return;
                            }
                            Err(_) => connection.await,
                        };
                        if let Err(err) = result {
                            tracing::debug!(%peer, error = %err, "connection closed with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut signal => break,
        }
    }
    drop(listener);
    shutdown.begin_drain();
    tracing::info!(
        open = connections.len(),
        grace_s = limits.shutdown_grace.as_secs_f64(),
        "shutting down: no new connections; open responses may finish"
    );
    let all_closed = graceful.shutdown();
    tokio::pin!(all_closed);
    if tokio::time::timeout(limits.shutdown_grace, &mut all_closed)
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        open = connections.len(),
        "shutdown grace period over: ending open streams"
    );
    shutdown.close_streams();
    if tokio::time::timeout(FLUSH_AFTER_CLOSE, &mut all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "dropping connections still open after the grace period"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// The HTTP/2 connection preface hyper-util's protocol sniffing compares the first bytes with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A socket whose writes fail with `TimedOut` when one makes no progress for `limit` (the peer
/// stopped reading and the send buffer is full): hyper then closes the connection. It also
/// records when the first bytes settled the protocol (they left, or completed, the HTTP/2 preface).
struct StallGuard<T> {
    inner: T,
    limit: Duration,
    stalled_since: Option<Pin<Box<Sleep>>>,
    /// Bytes of the HTTP/2 preface matched so far.
    preface_matched: usize,
    sniffed: Arc<AtomicBool>,
}

impl<T> StallGuard<T> {
    fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled_since: None,
            preface_matched: 0,
            sniffed: Arc::default(),
        }
    }

    /// Follows the first bytes against the HTTP/2 preface until they settle the protocol.
    fn sniff(&mut self, bytes: &[u8]) {
        if self.sniffed.load(Ordering::Relaxed) {
            return;
        }
        for &byte in bytes {
            if H2_PREFACE.get(self.preface_matched) != Some(&byte) {
                self.sniffed.store(true, Ordering::Relaxed);
                return;
            }
            self.preface_matched += 1;
            if self.preface_matched == H2_PREFACE.len() {
                self.sniffed.store(true, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Called when a write is pending: arms the deadline, fails once it passed.
    fn poll_stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let limit = self.limit;
        let deadline = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {:.1} s (--idle-timeout)",
                    limit.as_secs_f64()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<R>(
        &mut self,
        result: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        match result {
            Poll::Pending => self.poll_stall(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let this = &mut *self;
        this.sniff(&buf.filled()[before..]);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_times_out() {
        let (near, _far) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(near, Duration::from_millis(100));
        let start = std::time::Instant::now();
        let err = guarded
            .write_all(&[0u8; 4096])
            .await
            .expect_err("the peer reads nothing");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("--idle-timeout"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn writes_that_progress_do_not_time_out() {
        let (near, mut far) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut far, &mut sink)
                .await
                .map(|_| sink.len())
        });
        let mut guarded = StallGuard::new(near, Duration::from_millis(200));
        for _ in 0..10 {
            guarded.write_all(&[1u8; 100]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        guarded.shutdown().await.unwrap();
        drop(guarded);
        assert_eq!(reader.await.unwrap().unwrap(), 1000);
    }

    #[test]
    fn the_protocol_is_settled_by_a_mismatch_or_the_whole_preface() {
        let (near, _far) = tokio::io::duplex(64);
        let mut guard = StallGuard::new(near, Duration::from_secs(1));
        guard.sniff(b"PRI * HT");
        assert!(
            !guard.sniffed.load(Ordering::Relaxed),
            "a slow HTTP/2 preface is not settled"
        );
        guard.sniff(b"TP/2.0\r\n\r\nSM\r\n\r\n");
        assert!(guard.sniffed.load(Ordering::Relaxed));
        let (near, _far) = tokio::io::duplex(64);
        let mut guard = StallGuard::new(near, Duration::from_secs(1));
        guard.sniff(b"G");
        assert!(
            guard.sniffed.load(Ordering::Relaxed),
            "HTTP/1 from its first byte"
        );
    }
}
