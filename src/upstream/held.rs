//! What one client connection holds between its requests (its HTTP/1.1 upstream
//! connections and one timer), and sending a request on them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use crossbeam_utils::atomic::AtomicCell;
use http::{Request, Response};
use hyper::body::Incoming;
use smallvec::SmallVec;

use super::{connect, Connector, Target, UpstreamBody, UpstreamError, H1};

/// A request that can be sent again as it was first sent (its body held), for a resend
/// after its connection failed it (see [`Resent`]). Made only when a resend may happen.
pub(crate) trait Replay: Sync {
    /// The request again, exactly as first sent.
    fn replay(&self) -> Request<UpstreamBody>;
}

/// In an answer's extensions: its request was sent a second time, on a new connection,
/// because the first connection failed it before any byte of an answer arrived; the
/// reason as `goto_auth_proxy_upstream_retries_total` names it (`keepalive_race`: a
/// kept-alive HTTP/1.1 connection closed as the request came; `refused_stream`;
/// `goaway`: above an HTTP/2 `GOAWAY`'s last stream; `closed`: a connection that closed
/// before the request went out). At most once per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resent(pub(crate) &'static str);

/// What one client connection keeps between its requests: its HTTP/1.1 upstream
/// connections and one timer for every request's deadline.
///
/// Requests on one HTTP/1.1 client connection are sequential, so a request holds it
/// alone (see [`Affinity::hold`]).
#[derive(Default)]
pub(crate) struct Held {
    conns: Conns,
    timer: Timer,
}

/// The answer to a request sent on a connection that was ready.
type Answer = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>>;

impl Held {
    /// Sends `req` (origin-form URI: path and query) to `target`; the future yields the
    /// answer's head, or `None` when `deadline` came first.
    ///
    /// The common case costs no wait and no lookup: this client connection's own
    /// HTTP/1.1 connection is ready, so the request goes to it right now and the future
    /// only awaits the answer. Anything else (first request, HTTP/2, a connection not
    /// ready or closed) takes [`Connector::send`], boxed.
    pub(crate) fn send<'a>(
        &'a mut self,
        connector: &'a Connector,
        target: &'a Arc<Target>,
        deadline: Instant,
        mut req: Request<UpstreamBody>,
        replay: Option<&'a dyn Replay>,
    ) -> Sending<'a, impl Future<Output = Answer> + Send + 'a> {
        if target.forwarded {
            target.forward_form(&mut req);
        }
        let stage = match self.conns.ready(target) {
            // Sent in place: taking it out and back would clone the shared `Arc<Target>`.
            Some(conn) => Stage::Sent { read: conn.watch.read(), fut: conn.sender.try_send_request(req) },
            None => Stage::Slow {
                since: Instant::now(),
                fut: Box::pin(connector.send(target, self.conns.take(target), req, replay, None)),
            },
        };
        Sending { stage, conns: &mut self.conns, connector, target, replay, timer: self.timer.arm(deadline) }
    }
}

impl Held {
    /// Lets go of this client connection's connection to `target` (it still carries an
    /// answer nobody will read): the next request takes another.
    pub(crate) fn let_go(&mut self, target: &Arc<Target>) {
        drop(self.conns.take(target));
    }
}

/// [`Connector::send`], boxed.
type SlowSend<'a> = Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Option<H1>), UpstreamError>> + Send + 'a>>;

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<'a, F> {
        /// On this client connection's own connection, which had read `read` bytes.
        Sent { read: u64, #[pin] fut: F },
        /// Anything else, since then.
        Slow { since: Instant, fut: SlowSend<'a> },
    }
}

pin_project_lite::pin_project! {
    /// A request on its way upstream (see [`Held::send`]). Small on purpose: hyper moves
    /// the request's future, and this is part of it.
    pub(crate) struct Sending<'a, F> {
        #[pin]
        stage: Stage<'a, F>,
        conns: &'a mut Conns,
        connector: &'a Connector,
        target: &'a Arc<Target>,
        replay: Option<&'a dyn Replay>,
        timer: Pin<&'a mut tokio::time::Sleep>,
    }
}

impl<'a, F: Future<Output = Answer>> Future for Sending<'a, F> {
    type Output = Option<Result<Response<Incoming>, UpstreamError>>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.stage.as_mut().project() {
                StageProj::Sent { read, fut } => match fut.poll(cx) {
                    Poll::Ready(Ok(res)) => {
                        let answer = this.target.answer(res);
                        if answer.is_err() {
                            drop(this.conns.take(this.target)); // its framing is not to be trusted
                        }
                        return Poll::Ready(Some(answer));
                    }
                    Poll::Ready(Err(mut e)) => {
                        let (read, replay) = (*read, *this.replay);
                        let (connector, target) = (*this.connector, *this.target);
                        let failed = this.conns.take(target);
                        let (req, resent) = match e.take_message() {
                            // The connection had closed (or bytes arrived on it) while idle
                            // and never took it.
                            Some(req) => (req, None),
                            None => {
                                let error = e.into_error();
                                let again = failed
                                    .as_ref()
                                    .and_then(|h1| connect::keepalive_race(true, read, h1, &error, replay, None));
                                match again {
                                    Some(req) => (req, Some("keepalive_race")),
                                    None => return Poll::Ready(Some(Err(UpstreamError::Http(error)))),
                                }
                            }
                        };
                        drop(failed);
                        let fut = Box::pin(connector.send(target, None, req, replay, resent));
                        this.stage.set(Stage::Slow { since: Instant::now(), fut });
                    }
                    Poll::Pending => break,
                },
                StageProj::Slow { fut, .. } => match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok((res, conn))) => {
                        if let Some(conn) = conn {
                            this.conns.put(this.target, conn);
                        }
                        return Poll::Ready(Some(Ok(res)));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => break,
                },
            }
        }
        let timed_out = this.timer.as_mut().poll(cx).is_ready();
        if !timed_out {
            return Poll::Pending;
        }
        if let StageProj::Slow { since, .. } = this.stage.project() {
            if this.target.speaks_h2() {
                this.target.h2_timed_out(*since);
            }
        }
        Poll::Ready(None)
    }
}

/// HTTP/1.1 upstream connections by route target; usually one.
#[derive(Default)]
struct Conns(SmallVec<[(Arc<Target>, H1); 1]>);

impl Conns {
    /// The connection to `target`, when it is ready for a request now.
    fn ready(&mut self, target: &Arc<Target>) -> Option<&mut H1> {
        self.0.iter_mut().find(|(t, _)| Arc::ptr_eq(t, target)).map(|(_, c)| c).filter(|c| c.sender.is_ready())
    }

    fn take(&mut self, target: &Arc<Target>) -> Option<H1> {
        let i = self.0.iter().position(|(t, _)| Arc::ptr_eq(t, target))?;
        Some(self.0.swap_remove(i).1)
    }

    /// Keeps `sender` for `target`, letting go of connections that closed or whose target
    /// a reload retired (a long-lived client connection would otherwise hold one per
    /// route per reload, open, for its whole life).
    fn put(&mut self, target: &Arc<Target>, conn: H1) {
        self.0.retain(|(t, c)| !t.is_retired() && !c.sender.is_closed());
        self.0.push((target.clone(), conn));
    }
}

impl Drop for Conns {
    fn drop(&mut self) {
        for (target, conn) in self.0.drain(..) {
            if !target.is_retired() {
                target.put_idle(conn);
            }
        }
    }
}

/// One timer re-armed for each request. Moving a registered timer's deadline later is
/// one atomic store; a new timer per request is a timer-wheel insert and remove under
/// the runtime's timer lock (and sometimes a wake-up write to the I/O driver).
#[derive(Default)]
struct Timer(Option<Pin<Box<tokio::time::Sleep>>>);

impl Timer {
    fn arm(&mut self, deadline: Instant) -> Pin<&mut tokio::time::Sleep> {
        let fresh = self.0.is_none();
        let timer = self.0.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if !fresh {
            timer.as_mut().reset(deadline.into());
        }
        timer.as_mut()
    }
}

/// The client connection's slot for its [`Held`] state: one atomic pointer, no lock.
/// When the client connection closes, its upstream connections go to their routes'
/// idle lists.
#[derive(Default)]
pub(crate) struct Affinity {
    slot: AtomicCell<Option<Box<Held>>>,
}

impl Affinity {
    /// The connection's state for one request (a fresh one for its first); it goes
    /// back when the guard is dropped.
    pub(crate) fn hold(&self) -> Holding<'_> {
        Holding { affinity: self, held: Some(self.slot.take().unwrap_or_default()) }
    }
}

/// A request's hold on its client connection's [`Held`] state.
pub(crate) struct Holding<'a> {
    affinity: &'a Affinity,
    /// `None` only while being dropped.
    held: Option<Box<Held>>,
}

impl std::ops::Deref for Holding<'_> {
    type Target = Held;

    fn deref(&self) -> &Held {
        self.held.as_deref().unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl std::ops::DerefMut for Holding<'_> {
    fn deref_mut(&mut self) -> &mut Held {
        self.held.as_deref_mut().unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        // Another request's state in the slot (never with HTTP/1.1) is let go.
        drop(self.affinity.slot.swap(self.held.take()));
    }
}
