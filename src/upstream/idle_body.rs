//! The client's request body as it streams upstream, broken off when it stalls.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// The client's body as it streams upstream, broken off when it moves no byte for
/// `body_idle_timeout` (a client that stops sending must not hold an upstream
/// connection forever). The timer is armed only once the body has to wait.
pub(crate) struct IdleBody<B> {
    inner: B,
    after: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleBody<B> {
    /// `inner`, broken off after `after` without a byte.
    pub(crate) fn new(inner: B, after: Duration) -> IdleBody<B> {
        IdleBody { inner, after, timer: None }
    }
}

/// A body that moved no byte for `body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body moved no byte for {} (body_idle_timeout)", humantime::format_duration(*.0))]
pub(crate) struct BodyIdle(pub(crate) Duration);

impl<B> hyper::body::Body for IdleBody<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(tokio::time::Instant::now() + this.after);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let after = this.after;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                match timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(after))))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
