//! `login`: a sign-in with the authorization code grant, in a browser.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use super::tokens::{one_shot_accounts, one_shot_store, pick, runtime_credentials};
use crate::config::{Config, GrantKind};
use crate::login::{parse_pasted, LoginFlows};
use crate::token::accounts::AccountSet;
use crate::token::Credential;

pub(super) async fn login(config: Config, name: Option<&str>, account: Option<&str>) -> anyhow::Result<()> {
    let name = pick(&config, name, |g| g == GrantKind::AuthorizationCode)?;
    let credentials = runtime_credentials(&config).await?;
    let cred = credentials.get(&name).cloned().context("credential vanished")?;
    let sets = one_shot_accounts(&config, &cred).await?;
    let admin = config.proxy.admin_listen;
    let flows = Arc::new(LoginFlows::new(format!("http://{admin}/callback")));
    let started = flows.begin(&cred, account)?;
    let redirect = cred.config().redirect_uri.clone().unwrap_or_else(|| format!("http://{admin}/callback"));

    // The callback, when the redirect URI points at a loopback port we can take.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let stop = CancellationToken::new();
    let (callback_server, proxy_running) =
        callback_listener(&redirect, flows.clone(), credentials.clone(), sets.clone(), done_tx, stop.clone()).await;

    // The URL goes out only once the callback listener is up, so a fast browser finds it.
    println!("{}", started.url);
    eprintln!("Open the URL above in a browser and sign in.");
    eprintln!(
        "Then either let the browser return to {}, or paste here the address the browser",
        crate::config::display_url_str(&redirect)
    );
    eprintln!("ended on (a 404 page is fine: the code is in the address bar), or just the code.");

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut progress = tokio::time::interval(Duration::from_secs(30));
    progress.tick().await;
    let outcome: anyhow::Result<()> = loop {
        tokio::select! {
            // `None`: no callback listener (its sender is gone); the paste is the only way.
            Some(()) = done_rx.recv() => break Ok(()),
            _ = progress.tick() => eprintln!("… still waiting for the sign-in (Ctrl-C to give up)"),
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => match parse_pasted(&line) {
                    Some((code, state)) => {
                        let state = state.unwrap_or_else(|| started.state.clone());
                        match flows.finish(&credentials, &sets, &code, &state).await {
                            Ok(_) => break Ok(()),
                            Err(e) => break Err(e.into()),
                        }
                    }
                    None => eprintln!("That holds no code; paste the whole address from the browser, or the code."),
                },
                Ok(None) | Err(_) => stdin_open = false,
            },
        }
    };
    // Let the browser's callback page finish sending before the process exits.
    stop.cancel();
    if let Some(server) = callback_server {
        let _drained = server.await;
    }
    outcome?;

    let refresh_path = match flows.last_account() {
        Some(account) => {
            println!(
                "Signed in: account {account:?} of credential {name:?} is stored in {}.",
                one_shot_store(&config).await?.describe()
            );
            format!("{}/{}", crate::config::refresh_path(&name), crate::config::name_to_path(&account))
        }
        None => {
            let info = cred.info();
            println!(
                "Signed in: credential {name:?} now holds a token (expires {}); stored in {}.",
                info.expires_at.unwrap_or_default(),
                one_shot_store(&config).await?.describe()
            );
            crate::config::refresh_path(&name)
        }
    };
    if proxy_running {
        let url = format!("http://{admin}{refresh_path}");
        // The admin listener is on loopback: never through an environment's proxy.
        let local = reqwest::Client::builder().no_proxy().build().unwrap_or_default();
        match local.post(&url).timeout(Duration::from_secs(10)).send().await {
            Ok(r) if r.status().is_success() => println!("The running proxy at {admin} picked up the new token."),
            _ => println!("A running proxy picks the new token up at its next renewal (or: curl -X POST {url})."),
        }
    }
    Ok(())
}

/// Serves the sign-in's `/callback` on the redirect URI's loopback port while `login`
/// waits, telling `done` when a sign-in finished. `None` when the port cannot be taken;
/// the flag says it is in use (most likely by a running proxy, which is then told to pick
/// the new token up).
async fn callback_listener(
    redirect: &str,
    flows: Arc<LoginFlows>,
    credentials: BTreeMap<String, Arc<Credential>>,
    sets: BTreeMap<String, Arc<AccountSet>>,
    done: tokio::sync::mpsc::Sender<()>,
    stop: CancellationToken,
) -> (Option<tokio::task::JoinHandle<()>>, bool) {
    let Some(addr) = loopback_callback_addr(redirect) else { return (None, false) };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!("({addr} is in use, probably by a running proxy: paste the redirected address here.)");
            return (None, true);
        }
        Err(e) => {
            eprintln!("(cannot listen on {addr} for the callback: {e}; paste the redirected address here.)");
            return (None, false);
        }
    };
    let (credentials, sets) = (Arc::new(credentials), Arc::new(sets));
    let serve = crate::server::Serve::new(stop).drain(Duration::from_secs(2));
    let server = serve.run(listener, move |req: http::Request<hyper::body::Incoming>, _peer| {
        let (flows, creds, sets, done) = (flows.clone(), credentials.clone(), sets.clone(), done.clone());
        async move {
            let query = req.uri().query().unwrap_or("").to_string();
            let (status, page) = if req.uri().path() == "/callback" {
                flows.callback(&query, &creds, &sets).await
            } else {
                (http::StatusCode::NOT_FOUND, "not found\n".to_string())
            };
            if status.is_success() {
                let _ = done.try_send(());
            }
            let page =
                crate::response::with_body::<http_body_util::Full<bytes::Bytes>>(status, crate::response::HTML, page);
            crate::response::lock_down(page, crate::response::STATIC_PAGE_CSP)
        }
    });
    (Some(tokio::spawn(server)), false)
}

/// The loopback `host:port` of an `http://` redirect URI, if it is one.
fn loopback_callback_addr(redirect: &str) -> Option<SocketAddr> {
    let u = url::Url::parse(redirect).ok()?;
    if u.scheme() != "http" {
        return None;
    }
    let host = match u.host()? {
        url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
        url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
        url::Host::Domain("localhost") => std::net::IpAddr::from([127, 0, 0, 1]),
        url::Host::Domain(_) => return None,
    };
    host.is_loopback().then(|| SocketAddr::new(host, u.port_or_known_default().unwrap_or(80)))
}
