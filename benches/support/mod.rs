//! What the in-process benches share: a minimal upstream, a proxy in front of it with a
//! `static` credential (via `app::start`, exactly as `run` wires it), and a pooled
//! keep-alive HTTP/1.1 client. Everything listens on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use goto_auth_proxy::Config;
use goto_auth_proxy::{self as app, Running};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The upstream's answer: about the size of `GET /admin/rest/v1/me`.
pub const BODY: &str = r#"{"key":"8439885694023999999","accountKey":"9999982253621659654","email":"bench@example.com","firstName":"Bench","lastName":"User","locale":"en_US","timeZone":"Europe/Berlin","products":["G2M","G2W","G2T"],"createTime":1700000000000}"#;

/// The token the proxy injects.
pub const TOKEN: &str = "bench-static-token-0123456789abcdef0123456789abcdef";

/// The path every bench requests.
pub const PATH: &str = "/admin/rest/v1/me";

/// A bench client: hyper-util's pooled client, as the proxy itself uses upstream.
pub type BenchClient = Client<HttpConnector, Empty<Bytes>>;

/// A minimal upstream: 200 with [`BODY`] for every request, on the crate's own accept
/// loop. Stops when `shutdown` is cancelled.
pub async fn start_upstream(shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let serve = goto_auth_proxy::testing::Serve::new(shutdown).drain(Duration::from_millis(100));
    tokio::spawn(serve.run(listener, |_req, _conn| async {
        let mut res = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        res
    }));
    Ok(addr)
}

/// A proxy routing `/` to `upstream` with a `static` credential; state under `dir`.
pub async fn start_proxy(upstream: SocketAddr, dir: &Path) -> Running {
    let text = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[state]\npath = {:?}\n\n\
         [credentials.bench]\ngrant = \"static\"\ntoken = \"{TOKEN}\"\n\n\
         [[routes]]\nprefix = \"/\"\nupstream = \"http://{upstream}\"\ncredential = \"bench\"\n",
        dir.join("state.json").display().to_string()
    );
    let config = Config::parse("bench.toml", &text).expect("the bench config is valid");
    app::start(config).await.expect("the proxy starts")
}

/// A pooled keep-alive client.
pub fn client() -> BenchClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(http)
}

/// `http://addr/admin/rest/v1/me`.
pub fn uri(addr: SocketAddr) -> Uri {
    format!("http://{addr}{PATH}").parse().expect("a valid URI")
}

/// One GET with a client `Authorization` header (which the proxy replaces); reads the
/// whole body and returns its length.
pub async fn get(client: &BenchClient, uri: &Uri) -> usize {
    let req = Request::get(uri.clone())
        .header(header::AUTHORIZATION, "Bearer client-supplied-token")
        .header(header::USER_AGENT, "bench/1")
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .expect("a valid request");
    let res = client.request(req).await.expect("the request is answered");
    assert_eq!(res.status(), StatusCode::OK, "bench request answered {}", res.status());
    res.into_body().collect().await.expect("the body arrives").to_bytes().len()
}

/// Upstream + proxy + one client for each, on the current runtime.
pub struct Bench {
    /// Stops the upstream.
    pub shutdown: CancellationToken,
    /// The proxy.
    pub proxy: Running,
    /// Keeps the state directory alive.
    pub dir: tempfile::TempDir,
    /// Client → upstream.
    pub direct: (BenchClient, Uri),
    /// Client → proxy → upstream.
    pub proxied: (BenchClient, Uri),
}

impl Bench {
    /// Starts everything and checks one request each way.
    pub async fn start() -> Bench {
        let shutdown = CancellationToken::new();
        let upstream = start_upstream(shutdown.clone()).await.expect("the upstream starts");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let proxy = start_proxy(upstream, dir.path()).await;
        let bench = Bench {
            direct: (client(), uri(upstream)),
            proxied: (client(), uri(proxy.proxy_addr)),
            shutdown,
            proxy,
            dir,
        };
        assert_eq!(get(&bench.direct.0, &bench.direct.1).await, BODY.len());
        assert_eq!(get(&bench.proxied.0, &bench.proxied.1).await, BODY.len());
        bench
    }

    /// Stops the proxy and the upstream.
    pub async fn stop(self) {
        // Idle keep-alive connections first, so the drain has nothing to wait for.
        drop(self.direct);
        drop(self.proxied);
        self.proxy.stop().await;
        self.shutdown.cancel();
        drop(self.dir);
    }
}

/// A single HTTP/1.1 connection driven by `hyper::client::conn::http1`, no pool: what a
/// connection-affine upstream would use.
pub struct RawConn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: HeaderValue,
}

impl RawConn {
    /// Connects to `addr` and spawns the connection's driver on the current runtime.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("the upstream accepts");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("the HTTP/1.1 handshake");
        tokio::spawn(conn);
        RawConn { sender, host: HeaderValue::from_str(&addr.to_string()).expect("a valid Host") }
    }

    /// The same GET as [`get`], on this connection.
    pub async fn get(&mut self) -> usize {
        self.sender.ready().await.expect("the connection is ready");
        let req = Request::get(PATH)
            .header(header::HOST, self.host.clone())
            .header(header::AUTHORIZATION, "Bearer client-supplied-token")
            .header(header::USER_AGENT, "bench/1")
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .expect("a valid request");
        let res = self.sender.send_request(req).await.expect("the request is answered");
        assert_eq!(res.status(), StatusCode::OK, "bench request answered {}", res.status());
        res.into_body().collect().await.expect("the body arrives").to_bytes().len()
    }
}

/// The same connection driven inside the calling task (no spawned driver, no cross-task
/// wake-ups): the shape of a connection-affine upstream owned by the inbound task.
pub struct AffineConn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: std::pin::Pin<
        Box<hyper::client::conn::http1::Connection<hyper_util::rt::TokioIo<tokio::net::TcpStream>, Empty<Bytes>>>,
    >,
    host: HeaderValue,
}

impl AffineConn {
    /// Connects to `addr`; nothing is spawned.
    pub async fn connect(addr: SocketAddr) -> AffineConn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("the upstream accepts");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("the HTTP/1.1 handshake");
        AffineConn { sender, conn: Box::pin(conn), host: HeaderValue::from_str(&addr.to_string()).expect("a Host") }
    }

    /// The same GET as [`get`], polling the connection in this task meanwhile.
    pub async fn get(&mut self) -> usize {
        let AffineConn { sender, conn, host } = self;
        let exchange = async {
            sender.ready().await.expect("the connection is ready");
            let req = Request::get(PATH)
                .header(header::HOST, host.clone())
                .header(header::AUTHORIZATION, "Bearer client-supplied-token")
                .header(header::USER_AGENT, "bench/1")
                .header(header::ACCEPT, "application/json")
                .body(Empty::new())
                .expect("a valid request");
            let res = sender.send_request(req).await.expect("the request is answered");
            assert_eq!(res.status(), StatusCode::OK, "bench request answered {}", res.status());
            res.into_body().collect().await.expect("the body arrives").to_bytes().len()
        };
        tokio::select! {
            biased;
            n = exchange => n,
            r = conn.as_mut() => panic!("the upstream connection ended: {r:?}"),
        }
    }
}
