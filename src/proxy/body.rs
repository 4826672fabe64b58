//! The upstream's answer streamed back to the client, with the hop-by-hop headers
//! removed, a body that stops moving broken off (`body_idle_timeout`), and a broken-off
//! body counted and written into the access line's `error`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Either;
use hyper::body::{Frame, Incoming, SizeHint};

use super::access::AccessLine;
use super::rewrite::strip_hop_by_hop;
use super::table::Route;
use super::Body;
use crate::upstream::{BodyIdle, IdleBody};

pub(super) fn passthrough(res: Response<Incoming>, route: &Route) -> Response<Body> {
    passthrough_after(res, route, None)
}

/// [`passthrough`], its body starting with `prefix` (bytes already read from it).
pub(super) fn passthrough_after(mut res: Response<Incoming>, route: &Route, prefix: Option<Bytes>) -> Response<Body> {
    strip_hop_by_hop(res.headers_mut());
    let (aborted, idle_counter, idle_after) = (route.aborted.clone(), route.body_idle.clone(), route.body_idle_timeout);
    res.map(|inner| {
        Either::Left(UpstreamStream {
            inner: IdleBody::new(inner, idle_after),
            prefix,
            aborted: Some(aborted),
            idle_counter,
            bytes_out: 0,
            access: None,
            failed: None,
        })
    })
}

/// Why an answer's body ended before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The upstream broke it off.
    #[error("upstream broke off the answer: {0}")]
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    /// No byte moved for `body_idle_timeout`.
    #[error("the answer moved no byte for {}", humantime::format_duration(*.0))]
    Idle(Duration),
}

/// The upstream's response body streamed to the client. When the upstream breaks off
/// mid-body, or the body moves no byte for `body_idle_timeout`, the error reaches hyper,
/// which aborts the client's connection (the client sees a truncated answer, never a
/// hang), the route's counter counts it and the access line records it.
pub(crate) struct UpstreamStream {
    /// The upstream's body, broken off after `body_idle_timeout` without a byte.
    inner: IdleBody<Incoming>,
    /// Bytes read from `inner` already (a 403 inspected for `InvalidToken`), sent first.
    prefix: Option<Bytes>,
    /// Taken on the first error, so one broken body counts once.
    aborted: Option<prometheus::IntCounter>,
    /// `upstream_errors{kind="body_idle"}`.
    idle_counter: prometheus::IntCounter,
    /// Body bytes handed to the client so far.
    bytes_out: u64,
    /// The request's access log line, written when this body is done (or dropped).
    access: Option<AccessLine>,
    /// The access line's `error` when the body did not end cleanly.
    failed: Option<&'static str>,
}

impl UpstreamStream {
    /// Writes `line` once this body has been sent (or abandoned).
    pub(super) fn log_at_end(&mut self, line: AccessLine) {
        self.access = Some(line);
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        if let Some(mut line) = self.access.take() {
            line.error = line.error.or(self.failed);
            line.emit(self.bytes_out);
        }
    }
}

impl hyper::body::Body for UpstreamStream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(prefix) = self.prefix.take().filter(|p| !p.is_empty()) {
            self.bytes_out += prefix.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = match e.downcast::<BodyIdle>() {
                    Ok(idle) => BodyError::Idle(idle.0),
                    Err(e) => BodyError::Upstream(e),
                };
                // Counted and logged once per body.
                if let Some(aborted) = self.aborted.take() {
                    if let BodyError::Idle(_) = e {
                        self.idle_counter.inc();
                        self.failed = Some(IDLE);
                        tracing::warn!(error = %e, "the upstream's answer body broken off (body_idle_timeout)");
                    } else {
                        aborted.inc();
                        self.failed = Some(ABORTED);
                        tracing::warn!(error = %e, "upstream broke off the response body");
                    }
                }
                Poll::Ready(Some(Err(e)))
            }
            other => other.map(|o| o.map(|r| r.map_err(BodyError::Upstream))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let Some(extra) = self.prefix.as_ref().map(|p| p.len() as u64) else {
            return hint;
        };
        let mut sum = SizeHint::new();
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper + extra);
        }
        sum.set_lower(hint.lower() + extra);
        sum
    }
}

/// The access line's `error` for an answer the upstream broke off.
pub(super) const ABORTED: &str = "upstream_aborted";
/// The access line's `error` for a body that moved no byte for `body_idle_timeout`.
pub(super) const IDLE: &str = "body_idle_timeout";
