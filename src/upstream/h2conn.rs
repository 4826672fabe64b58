//! The HTTP/2 connections to one upstream, watched rather than trusted: hyper PINGs
//! each while in use and while idle (an unanswered PING closes it), a request that timed
//! out on one makes it suspect, and a connection that refused or abandoned a stream is
//! retired for new requests. Requests share a connection while it has a free stream (the
//! upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`) and, for a request with a body, while no
//! upload of unknown length is in flight on it (such an upload may hold the whole send
//! window); otherwise another connection opens, up to [`MAX_H2`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http2, TrySendError};

use super::io::Watch;
use super::{Target, UpstreamBody};

/// A PING goes out after this long without a frame from the upstream (in use or idle).
pub(super) const PING_EVERY: Duration = Duration::from_secs(5);
/// A PING unanswered this long closes the connection.
pub(super) const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 connections kept open to one upstream at most.
pub(super) const MAX_H2: usize = 4;

/// One shared HTTP/2 connection and what is in flight on it.
pub(crate) struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    watch: Arc<Watch>,
    /// Requests sent whose answer's head has not arrived.
    streams: AtomicUsize,
    /// Of those, requests whose body streams (length unknown or beyond what is held).
    uploads: AtomicUsize,
    /// Taken out of use: it refused or abandoned a stream, or a request timed out on it.
    retired: AtomicBool,
    /// When an answer's head last arrived on it (since `opened`), in milliseconds.
    answered_ms: AtomicU64,
    opened: Instant,
}

impl H2Conn {
    pub(super) fn new(sender: http2::SendRequest<UpstreamBody>, watch: Arc<Watch>) -> H2Conn {
        H2Conn {
            sender,
            watch,
            streams: AtomicUsize::new(0),
            uploads: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            answered_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    /// Still open and not retired.
    pub(super) fn usable(&self) -> bool {
        !self.retired.load(Ordering::Relaxed) && !self.sender.is_closed()
    }

    /// Room for one more stream, and (for a request with a body) no upload that may
    /// hold the send window.
    pub(super) fn has_room(&self, with_body: bool) -> bool {
        let streams = self.streams.load(Ordering::Relaxed);
        let free = self.watch.max_streams().is_none_or(|max| streams < max as usize);
        free && (!with_body || self.uploads.load(Ordering::Relaxed) == 0)
    }

    pub(super) fn busy(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// No new request goes to it; those in flight finish.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Sends `req`, its head in HTTP/2 form, counted in flight until its answer's head.
    pub(super) async fn send(
        self: &Arc<Self>,
        target: &Target,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        target.h2_form(&mut req);
        let upload = matches!(req.body(), http_body_util::Either::Right(_));
        let _flight = Flight::start(self, upload);
        let mut sender = self.sender.clone();
        let res = sender.try_send_request(req).await;
        if res.is_ok() {
            self.answered_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        res
    }

    /// A request sent at `since` timed out: when no answer at all arrived on this
    /// connection since then while requests were in flight, it is suspect and retired
    /// (a network may have dropped it silently; the PINGs will tell, but new requests
    /// need not wait for that).
    pub(super) fn timed_out(&self, since: Instant) {
        let since_ms = since.saturating_duration_since(self.opened).as_millis() as u64;
        if self.busy() > 0 && self.answered_ms.load(Ordering::Relaxed) <= since_ms {
            self.retire();
        }
    }
}

/// A request in flight on a connection, from its send until its answer's head (or its end).
struct Flight<'a> {
    conn: &'a H2Conn,
    upload: bool,
}

impl<'a> Flight<'a> {
    fn start(conn: &'a H2Conn, upload: bool) -> Flight<'a> {
        conn.streams.fetch_add(1, Ordering::Relaxed);
        if upload {
            conn.uploads.fetch_add(1, Ordering::Relaxed);
        }
        Flight { conn, upload }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.conn.streams.fetch_sub(1, Ordering::Relaxed);
        if self.upload {
            self.conn.uploads.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Why a failed HTTP/2 request may be sent again (its stream was never processed), as the
/// `reason` of `goto_auth_proxy_upstream_retries_total`: the upstream refused the stream,
/// or announced with `GOAWAY` that it would not process it.
pub(super) fn resend_reason(e: &hyper::Error) -> Option<&'static str> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some("refused_stream");
            }
            if h2.is_go_away() && h2.is_remote() {
                return Some("goaway");
            }
            return None;
        }
        source = s.source();
    }
    None
}

impl Target {
    /// Whether this upstream's connections are HTTP/2 (ALPN chose it).
    pub(super) fn speaks_h2(&self) -> bool {
        self.h2_offered.load(Ordering::Relaxed)
    }

    /// Records whether the upstream chose HTTP/2.
    pub(super) fn h2_offered(&self, yes: bool) {
        self.h2_offered.store(yes, Ordering::Relaxed);
    }

    /// A usable connection with room for the request: one atomic load of the list, no
    /// lock (every request to an HTTP/2 upstream comes here).
    pub(super) fn pick_h2(&self, with_body: bool) -> Option<Arc<H2Conn>> {
        self.h2.load().iter().find(|c| c.usable() && c.has_room(with_body)).cloned()
    }

    /// The usable connection with the fewest requests in flight.
    pub(super) fn least_busy_h2(&self) -> Option<Arc<H2Conn>> {
        self.h2.load().iter().filter(|c| c.usable()).min_by_key(|c| c.busy()).cloned()
    }

    pub(super) fn h2_count(&self) -> usize {
        self.h2.load().iter().filter(|c| c.usable()).count()
    }

    /// Adds a new connection, letting go of the ones no longer usable (rare: only when a
    /// connection opens, one at a time).
    pub(super) fn add_h2(&self, conn: Arc<H2Conn>) {
        self.h2_offered(true);
        self.h2.rcu(|list| {
            let mut kept: Vec<Arc<H2Conn>> = list.iter().filter(|c| c.usable()).cloned().collect();
            kept.push(conn.clone());
            kept
        });
    }

    /// A request sent at `since` got no answer within `request_timeout`.
    pub(super) fn h2_timed_out(&self, since: Instant) {
        for c in self.h2.load().iter() {
            c.timed_out(since);
        }
    }
}
