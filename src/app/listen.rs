//! The listeners: bound once (a busy port fails the start), shared by the data-path
//! threads, each serving its connections on its own runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::config::Config;
use crate::proxy::Proxy;
use crate::server::{ConnInfo, Serve};
use crate::upstream::Affinity;

pub(super) async fn bind(addr: SocketAddr, what: &'static str, config: &Config) -> Result<TcpListener, StartError> {
    // `--listen` overrides come after validation: check the rule again here.
    if !addr.ip().is_loopback() && !config.inbound.allow_remote {
        return Err(StartError::NotLoopback { addr, what });
    }
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
}

/// What to do about a listener that cannot be bound: for an address in use, the flag or
/// key that picks another.
pub(super) fn bind_hint(what: &str, source: &std::io::Error) -> String {
    if source.kind() != std::io::ErrorKind::AddrInUse {
        return String::new();
    }
    let flag = what.replace('_', "-");
    format!(": the address is in use (another proxy running?); choose another with --{flag} ADDR or proxy.{what}")
}

/// Data-path threads: `proxy.workers`, or one per core.
pub(super) fn config_workers(config: &Config) -> usize {
    config.proxy.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// One listening socket shared by `n` data-path threads (each accepts on its own
/// handle; the kernel hands each connection to one of them). Bound once, normally, so
/// a busy port still fails the start.
pub(super) fn data_path_listeners(
    listener: TcpListener,
    n: usize,
    addr: SocketAddr,
) -> Result<Vec<std::net::TcpListener>, StartError> {
    let err = |source| StartError::Bind { addr, what: "listen", source };
    let std_listener = listener.into_std().map_err(err)?;
    let mut out = Vec::with_capacity(n);
    for _ in 1..n {
        out.push(std_listener.try_clone().map_err(err)?);
    }
    out.push(std_listener);
    Ok(out)
}

/// A data-path thread: its own single-threaded runtime serves the connections it
/// accepts, so a request, its upstream connection and their wake-ups stay on one
/// thread (no cross-thread hand-offs). The receiver resolves when the thread is done.
pub(super) fn spawn_data_path_thread(
    i: usize,
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(format!("goto-auth-proxy-io-{i}")).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "cannot start a data-path runtime"),
        };
        runtime.block_on(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!(error = %e, "cannot use the data-path listener"),
            };
            // Each connection keeps its upstream connections (`Affinity`) in its state.
            Serve::new(shutdown)
                .tls(tls)
                .run_with(
                    listener,
                    // No async block around it: that would hold a second copy of the request.
                    move |req, conn: Arc<ConnInfo<Affinity>>| proxy.clone().serve(req, conn),
                )
                .await;
        });
        let _ = done.send(());
    })?;
    Ok(ended)
}
