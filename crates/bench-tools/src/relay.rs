//! A TCP relay that can black-hole its connections: [`Relay::freeze`] makes every
//! connection open at that moment stop forwarding both ways without closing (what a NAT
//! or load balancer that forgot an idle flow does); connections opened later forward
//! normally. Test equipment shared by the chaos soak (`src/soak/hostile.rs`)
//! and the hostile-upstream tests (`tests/it/hostile_upstream/rig.rs`).

// Each includer uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running relay from `addr` to its target.
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Connections with an index below this are black-holed.
    frozen_below: Arc<AtomicUsize>,
}

impl Relay {
    /// Listens on `listen` (port 0 for any) and relays each connection to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let frozen_below = Arc::new(AtomicUsize::new(0));
        let (count, frozen) = (accepted.clone(), frozen_below.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let idx = count.fetch_add(1, Ordering::SeqCst);
                let frozen = frozen.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(target).await else { return };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = tokio::spawn(pump(dr, uw, idx, frozen.clone()));
                    let b = tokio::spawn(pump(ur, dw, idx, frozen));
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Ok(Relay { addr, accepted, frozen_below })
    }

    /// Black-holes every connection open now; returns how many were newly frozen.
    pub fn freeze(&self) -> usize {
        let now = self.accepted.load(Ordering::SeqCst);
        now.saturating_sub(self.frozen_below.swap(now, Ordering::SeqCst))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections black-holed so far.
    pub fn frozen(&self) -> usize {
        self.frozen_below.load(Ordering::SeqCst)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    idx: usize,
    frozen_below: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if idx < frozen_below.load(Ordering::SeqCst) {
            // Black-holed: nothing more is forwarded, and nothing is closed.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
