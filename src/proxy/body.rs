//! The upstream's answer streamed back to the client, with the hop-by-hop headers
//! removed and a broken-off body counted.

use bytes::Bytes;
use http::Response;
use http_body_util::Either;
use hyper::body::Incoming;

use super::access::AccessLine;
use super::rewrite::strip_hop_by_hop;
use super::table::Route;
use super::Body;

pub(super) fn passthrough(mut res: Response<Incoming>, route: &Route) -> Response<Body> {
    strip_hop_by_hop(res.headers_mut());
    let aborted = route.aborted.clone();
    res.map(|inner| Either::Left(UpstreamStream { inner, aborted: Some(aborted), bytes_out: 0, access: None }))
}

/// The upstream's response body streamed to the client. When the upstream breaks off
/// mid-body the error reaches hyper, which aborts the client's connection (the client
/// sees a truncated answer, never a hang), and the route's `aborted` counter counts it.
pub struct UpstreamStream {
    inner: Incoming,
    /// Taken on the first error, so one broken body counts once.
    aborted: Option<prometheus::IntCounter>,
    /// Body bytes handed to the client so far.
    bytes_out: u64,
    /// The request's access log line, written when this body is done (or dropped).
    access: Option<AccessLine>,
}

impl UpstreamStream {
    /// Writes `line` once this body has been sent (or abandoned).
    pub(super) fn log_at_end(&mut self, line: AccessLine) {
        self.access = Some(line);
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        if let Some(line) = self.access.take() {
            line.emit(self.bytes_out);
        }
    }
}

impl hyper::body::Body for UpstreamStream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes_out += data.len() as u64;
            }
        }
        if let std::task::Poll::Ready(Some(Err(e))) = &polled {
            if let Some(c) = self.aborted.take() {
                c.inc();
                tracing::warn!(error = %e, "upstream broke off the response body");
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
