//! The bytes of one upstream connection, watched: how many answer bytes it has read
//! (a request it failed with none read since got no byte of an answer; a connection
//! with none yet was never used) and the HTTP/2 peer's `SETTINGS_MAX_CONCURRENT_STREAMS`.
//!
//! Bytes an upstream sends on an idle HTTP/1.1 connection (an unsolicited or late
//! answer) are hyper's to catch: it reads an idle connection and closes it on any byte.
//! Bytes that reach the proxy before a client's next request are always seen first (the
//! same I/O driver reports both, in arrival order), so that check suffices; an answer
//! that arrives only after the next request was written can be told from that request's
//! answer by nobody.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What one connection's I/O saw, shared with the requests sent on it.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Answer bytes read so far (after TLS). A request that failed with this unchanged
    /// since it was handed over got no byte of an answer; a connection with none yet
    /// was never used.
    read: AtomicU64,
    /// HTTP/2: the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` (0: not said).
    max_streams: AtomicU32,
}

impl Watch {
    /// Answer bytes read so far.
    pub(crate) fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The upstream's stream limit, when its first `SETTINGS` named one.
    pub(crate) fn max_streams(&self) -> Option<u32> {
        Some(self.max_streams.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }
}

/// Plain TCP, TLS, or TLS inside an outbound proxy's tunnel, so all fit one connection type.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Tunnel(Box<tokio_rustls::client::TlsStream<TokioIo<hyper::upgrade::Upgraded>>>),
}

/// A connection's bytes as hyper sees them (after TLS), counted into its [`Watch`].
pub(crate) struct Io {
    stream: Stream,
    watch: Arc<Watch>,
    /// HTTP/2: the upstream's first frame (its `SETTINGS`) is still to be read.
    settings_next: bool,
}

impl Io {
    /// `stream` watched by `watch`; `h2` when HTTP/2 was negotiated.
    pub(crate) fn new(stream: Stream, watch: Arc<Watch>, h2: bool) -> Io {
        Io { stream, watch, settings_next: h2 }
    }
}

/// `SETTINGS_MAX_CONCURRENT_STREAMS` from the first bytes an HTTP/2 server sends (its
/// `SETTINGS` frame, RFC 9113 §3.4), when they hold the whole frame.
fn max_concurrent_streams(bytes: &[u8]) -> Option<u32> {
    let (head, rest) = bytes.split_at_checked(9)?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    if head[3] != 0x4 || head[4] & 0x1 != 0 {
        return None; // not SETTINGS, or an ACK
    }
    rest.get(..len)?
        .chunks_exact(6)
        .rev()
        .find_map(|s| (u16::from_be_bytes([s[0], s[1]]) == 0x3).then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Tunnel(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.watch.read.fetch_add(read.len() as u64, Ordering::Relaxed);
            if std::mem::take(&mut this.settings_next) {
                // 0 still means "no limit said" (a limit of 0 streams is treated alike).
                let max = max_concurrent_streams(read).unwrap_or(0);
                this.watch.max_streams.store(max, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Tunnel(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Tunnel(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Tunnel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Tunnel(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Tunnel(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_limit_is_read_from_the_first_settings_frame() {
        // SETTINGS: MAX_FRAME_SIZE 16384, MAX_CONCURRENT_STREAMS 1.
        let frame = [0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0x40, 0, 0, 3, 0, 0, 0, 1];
        assert_eq!(max_concurrent_streams(&frame), Some(1));
        assert_eq!(max_concurrent_streams(&frame[..15]), None, "a partial frame says nothing");
        assert_eq!(max_concurrent_streams(&[0, 0, 0, 4, 1, 0, 0, 0, 0]), None, "an ACK");
        assert_eq!(max_concurrent_streams(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0x40, 0]), None);
    }
}
