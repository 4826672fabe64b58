//! What the token endpoints answer under an injected [`TokenFault`], and the streaming
//! bodies some answers need: [`Zeros`] (many bytes, or a body that breaks off) and
//! [`Drip`] (a body too slow for any client).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Either;
use hyper::body::{Frame, SizeHint};
use tokio::sync::watch;

use super::{json, oauth_error, respond, MockBody, State, TokenFault, DRIP_EVERY};

/// The size of [`TokenFault::Drip`]'s body: a minute's worth of bytes at [`DRIP_EVERY`].
const DRIP_BYTES: usize = 300;

/// What a token endpoint answers under `fault` instead of a token; `None` when it goes
/// on to issue one (after a `Delay`, or bent by `NoExpiresIn`/`ExpiresIn`).
pub(super) async fn answer(state: &State, fault: &TokenFault, direct_login: bool) -> Option<Response<MockBody>> {
    let raw = |status: u16, body: Bytes| {
        respond(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body)
    };
    Some(match fault {
        TokenFault::Status(s) => oauth_error(
            StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error",
            "injected fault",
        ),
        TokenFault::TooManyRequests(secs) => {
            let mut res = oauth_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "injected fault");
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            res
        }
        TokenFault::Garbage => raw(200, Bytes::from_static(b"<html>upstream gateway says hi</html>")),
        TokenFault::Body { status, body } => raw(*status, body.clone()),
        TokenFault::Drip => drip(state),
        TokenFault::Redirect(status) => {
            let mut res = raw(*status, Bytes::new());
            let to = if direct_login { "/_mock/moved/oauth/access_token" } else { "/_mock/moved/oauth/token" };
            res.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
            res
        }
        TokenFault::Delay(d) => {
            tokio::time::sleep(*d).await;
            return None;
        }
        TokenFault::NoExpiresIn | TokenFault::ExpiresIn(_) => return None,
    })
}

/// [`TokenFault::Drip`]'s answer: a token-looking JSON body, one byte at a time.
fn drip(state: &State) -> Response<MockBody> {
    let mut body = br#"{"access_token":"mock-at-drip","token_type":"Bearer","expires_in":3600}"#.to_vec();
    body.resize(DRIP_BYTES, b' ');
    let tick = Box::pin(tokio::time::sleep(DRIP_EVERY));
    let drip = Drip { body: Bytes::from(body), tick, fault: state.fault.subscribe() };
    let mut res = Response::new(Either::Right(Either::Right(drip)));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(DRIP_BYTES));
    res
}

/// The `expires_in` a fault dictates for an issued token's answer: `Some(None)` for no
/// `expires_in` at all, `Some(Some(v))` for `v`; `None` when the fault does not bend it.
pub(super) fn bent_expires_in(fault: Option<&TokenFault>) -> Option<Option<serde_json::Value>> {
    match fault {
        Some(TokenFault::NoExpiresIn) => Some(None),
        Some(TokenFault::ExpiresIn(v)) => Some(Some(v.clone())),
        _ => None,
    }
}

/// A body of `remaining` zero bytes, produced in 64 KiB chunks without buffering; with
/// `then_fail`, it ends in an error instead (the connection is dropped mid-body), after
/// a pause that lets what was sent reach the client first.
pub(super) struct Zeros {
    remaining: u64,
    then_fail: bool,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Zeros {
    /// `n` zero bytes, then the end of the body.
    pub(super) fn new(n: u64) -> Zeros {
        Zeros { remaining: n, then_fail: false, pause: None }
    }

    /// `n` zero bytes, then an error: hyper drops the connection.
    pub(super) fn failing(n: u64) -> Zeros {
        Zeros { remaining: n, then_fail: true, pause: None }
    }
}

static ZERO_CHUNK: [u8; 64 * 1024] = [0; 64 * 1024];

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            if self.then_fail {
                let pause = self.pause.get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.then_fail = false;
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "mock: connection dropped mid-body",
                ))));
            }
            return Poll::Ready(None);
        }
        let n = self.remaining.min(ZERO_CHUNK.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZERO_CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && !self.then_fail
    }

    fn size_hint(&self) -> SizeHint {
        if self.then_fail {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.remaining)
        }
    }
}

/// [`TokenFault::Drip`]'s body: one byte per [`DRIP_EVERY`]; it ends in an error (hyper
/// drops the connection) as soon as the fault is changed, so a test need not wait out
/// the client's timeout to see the renewal fail and recover.
pub(super) struct Drip {
    body: Bytes,
    tick: Pin<Box<tokio::time::Sleep>>,
    fault: watch::Receiver<Option<TokenFault>>,
}

impl hyper::body::Body for Drip {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.body.is_empty() {
            return Poll::Ready(None);
        }
        if self.tick.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if !matches!(self.fault.has_changed(), Ok(false)) {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "mock: the drip was broken off (fault lifted)",
            ))));
        }
        let next = tokio::time::Instant::now() + DRIP_EVERY;
        self.tick.as_mut().reset(next);
        let byte = self.body.split_to(1);
        Poll::Ready(Some(Ok(Frame::data(byte))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.body.len() as u64)
    }
}

/// The `…/_mock/…` operation `op` (the segments after `_mock`): its answer, or `None` to
/// answer as usual (after `slow/MS` has waited, or for an unknown operation).
pub(super) async fn mock_operation(op: &[&str]) -> Option<Response<MockBody>> {
    match op {
        ["bytes", n] => {
            let n: u64 = n.parse().unwrap_or(0);
            let mut res = Response::new(Either::Right(Either::Left(Zeros::new(n))));
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Some(res)
        }
        ["close"] => {
            // Like an upstream ending keep-alive: answer, then close the connection.
            let mut res = json(StatusCode::OK, r#"{"closing":true}"#.into());
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            Some(res)
        }
        ["reset", n] => {
            // Announce twice what is sent, send N bytes, then fail the body: hyper drops
            // the connection, as a crashing upstream or a middlebox reset would.
            let n: u64 = n.parse().unwrap_or(0);
            let mut res = Response::new(Either::Right(Either::Left(Zeros::failing(n))));
            res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n.saturating_mul(2).max(1)));
            Some(res)
        }
        ["redirect"] => {
            let mut res = json(StatusCode::FOUND, r#"{"moved":true}"#.into());
            res.headers_mut().insert(header::LOCATION, HeaderValue::from_static("http://elsewhere.invalid/collect"));
            Some(res)
        }
        ["slow", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            None
        }
        _ => None,
    }
}
