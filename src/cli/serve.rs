//! `run` and `demo`: serve until SIGTERM or SIGINT; SIGHUP reloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{block_on, with_config, ListenArgs, RunArgs};

pub(super) fn run(a: &RunArgs) -> ExitCode {
    with_config(&a.config, |mut config| {
        // Where reloads read the file again, with the same flags over it.
        let source = crate::app::Source {
            path: a.config.config.clone(),
            listen: a.listen.listen,
            admin_listen: a.listen.admin_listen,
        };
        source.override_listen(&mut config);
        // The data path runs on its own threads (`workers`); this runtime only renews
        // tokens and answers the admin listener.
        block_on(Some(1), async move {
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            let running = crate::app::start_from(config, Some(source)).await?;
            wait_for_stop(running.shutdown_token(), Some(&running.core)).await;
            tracing::info!("stopping: draining in-flight requests");
            running.wait().await;
            tracing::info!("stopped");
            Ok(())
        })
    })
}

pub(super) fn demo(a: &ListenArgs) -> ExitCode {
    let listen = a.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin = a.admin_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901)));
    block_on(None, async move {
        let dir = tempfile_dir()?;
        let demo = crate::demo::start(listen, admin, &dir).await?;
        println!("{}", demo.banner);
        wait_for_stop(demo.running.shutdown_token(), None).await;
        demo.running.wait().await;
        drop(demo.mock);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// A private directory for the demo's state file.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("goto-auth-proxy-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Returns when SIGTERM or SIGINT arrives (cancelling `shutdown`), or when `shutdown`
/// is cancelled some other way; SIGHUP reloads `core`'s configuration file when given.
async fn wait_for_stop(shutdown: CancellationToken, reload: Option<&Arc<crate::app::Core>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
        else {
            tracing::error!("cannot install signal handlers");
            shutdown.cancelled().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match reload {
                    Some(core) => {
                        // Logged and counted by the reload itself.
                        let _outcome = core.reload_from_source(crate::app::ReloadTrigger::Signal).await;
                    }
                    None => tracing::info!("SIGHUP ignored: nothing to reload"),
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = shutdown.cancelled() => return,
        }
    }
    shutdown.cancel();
}
