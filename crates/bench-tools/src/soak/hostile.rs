//! `hostile`: an upstream the soak's route `/hostile/` reaches through a relay, for two
//! network faults the mock GoTo cannot make:
//!
//! * the keep-alive race — while `POST /_hostile/race?on=1` is in force, a request that
//!   arrives on a kept-alive connection (the second or later on it) is, one time in
//!   three, read and then answered by closing the connection, no byte of an answer sent
//!   (what a server's idle timeout does when it fires just as a request arrives);
//! * a black hole — behind the relay (`--relay`) is the same upstream over TLS and
//!   HTTP/2 (ALPN `h2`, a certificate for `127.0.0.1` made at start and its PEM written
//!   to `--ca-out` for the proxies' `tls.ca_file`), so the proxies share one multiplexed
//!   connection to it; `POST /_hostile/freeze` makes every relayed connection open at
//!   that moment stop forwarding both ways without closing (a NAT or load balancer that
//!   forgot the flow); connections opened later forward normally.
//!
//! Everything else is answered `200 own:PATH` (the load checks it is its own), HTTP/1.1
//! keep-alive on `--listen`, HTTP/2 behind the relay. `GET /_hostile/stats` says how many
//! requests were cut off by the race and how many connections were black-holed. The
//! control paths are for the script, sent to `--listen` directly. Nothing from a request
//! (its `Authorization` least of all) is printed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::relay::Relay;

#[derive(Args, Debug)]
pub struct HostileArgs {
    /// Where the upstream listens (the script's controls go here).
    #[arg(long)]
    listen: SocketAddr,
    /// Where the relay to the HTTP/2 upstream listens (a route `https://` here).
    #[arg(long)]
    relay: SocketAddr,
    /// Where the PEM certificate of the HTTP/2 upstream goes (the proxies trust it).
    #[arg(long)]
    ca_out: std::path::PathBuf,
}

#[derive(Default)]
struct State {
    race: AtomicBool,
    /// Requests cut off by the race.
    cut: AtomicU64,
    /// The relay to the HTTP/2 upstream, once it listens.
    relay: std::sync::OnceLock<Relay>,
}

/// Runs the upstream and the relay until SIGTERM.
pub async fn hostile(args: HostileArgs) -> anyhow::Result<()> {
    let state = Arc::new(State::default());
    let upstream = TcpListener::bind(args.listen).await?;
    let h2 = TcpListener::bind("127.0.0.1:0").await?;
    let target = h2.local_addr()?;
    let tls = h2_tls(&args.ca_out)?;
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = upstream.accept().await {
            tokio::spawn(serve(tcp, st.clone()));
        }
    });
    tokio::spawn(async move {
        while let Ok((tcp, _)) = h2.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else { return };
                let echo = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = format!("own:{}", req.uri().path());
                    // The request body is read whole before the answer.
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body),
                    )))
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), echo)
                    .await;
            });
        }
    });
    let relay = Relay::start(args.relay, target).await?;
    let _ = state.relay.set(relay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

/// A TLS acceptor offering `h2` with a fresh self-signed certificate for `127.0.0.1`,
/// whose PEM is written to `ca_out`.
fn h2_tls(ca_out: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    std::fs::write(ca_out, cert.cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// One upstream connection: requests one after another, keep-alive.
async fn serve(tcp: TcpStream, st: Arc<State>) {
    let mut io = BufReader::new(tcp);
    let mut nth = 0u64;
    loop {
        nth += 1;
        let Some((method, path)) = read_request(&mut io).await else { return };
        let body = match (method.as_str(), path.split('?').next().unwrap_or_default()) {
            ("POST", "/_hostile/race") => {
                st.race.store(path.ends_with("on=1"), Ordering::SeqCst);
                "race set".to_string()
            }
            ("POST", "/_hostile/freeze") => {
                format!("{{\"frozen\":{}}}", st.relay.get().map_or(0, Relay::freeze))
            }
            ("GET", "/_hostile/stats") => format!(
                "{{\"cut\":{},\"relayed\":{},\"frozen\":{}}}",
                st.cut.load(Ordering::SeqCst),
                st.relay.get().map_or(0, Relay::accepted),
                st.relay.get().map_or(0, Relay::frozen)
            ),
            _ if nth >= 2 && st.race.load(Ordering::SeqCst) && rand::random_ratio(1, 3) => {
                st.cut.fetch_add(1, Ordering::SeqCst);
                return; // closed as the request arrived: no byte of an answer
            }
            _ => format!("own:{path}"),
        };
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len());
        if io.get_mut().write_all(format!("{head}{body}").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one request's line, headers and `Content-Length` body; `None` at EOF.
async fn read_request(io: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut line = String::new();
    if io.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if io.read_line(&mut h).await.ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    io.read_exact(&mut body).await.ok()?;
    Some((method, path))
}
