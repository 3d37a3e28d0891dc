//! The viewer's HTTP server: hyper's HTTP/1 on tokio, with tower-http's limits and
//! compression. In: connections on a socket. Out: the replies of [`Routes`].
//!
//! What bounds it, so that idle, slow or many clients cannot take it over:
//! - at most `max_connections` connections at once; more wait in the kernel's backlog;
//! - a request's head must arrive whole within `timeout` of the connection being ready
//!   for it, however slowly it trickles in (hyper's header-read timeout), and an idle
//!   keep-alive connection is closed after `timeout` too;
//! - a request's answer must be ready within `timeout` (408 otherwise);
//! - heads over [`MAX_HEAD`] bytes are refused (431), request bodies over
//!   [`MAX_BODY`] too (413): the viewer only reads;
//! - at most `workers` requests do blocking work (cutting a tile, reading a CSV) at
//!   once: tokio's blocking pool is that size;
//! - memory: one byte-capped cache and at most
//!   [`MAX_OPEN_SLIDES`](super::routes::MAX_OPEN_SLIDES) open slides.
//!
//! Ctrl-C or SIGTERM stops accepting, lets the requests in flight finish for up to
//! [`GRACE`], and returns.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::services::ServeFile;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use super::routes::{Reply, Routes};
use crate::error::{Error, Result};

/// Longest request head; browsers send well under 2 KiB.
const MAX_HEAD: usize = 8 << 10;
/// Longest request body: GET and HEAD carry none.
const MAX_BODY: usize = 1 << 10;
/// How long requests in flight may finish after Ctrl-C.
const GRACE: Duration = Duration::from_secs(5);

pub struct ServerOptions {
    pub out: PathBuf,
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// The cap of the tile and map cache, in bytes.
    pub cache_bytes: usize,
    /// Requests doing blocking work (cutting tiles) at once.
    pub workers: usize,
    pub max_connections: usize,
    /// The longest a request's head may take to arrive, and its answer to be ready.
    pub timeout: Duration,
}

pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    workers: usize,
    max_connections: usize,
    timeout: Duration,
    routes: Arc<Routes>,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;
const TEXT: &str = "text/plain; charset=utf-8";

impl Server {
    /// Binds the socket; serves nothing until [`Server::run`].
    pub fn bind(opts: ServerOptions) -> Result<Self> {
        let out = std::fs::canonicalize(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
        if !out.is_dir() {
            return Err(Error::Output {
                path: opts.out,
                msg: "not a folder".into(),
            });
        }
        let bind = SocketAddr::new(opts.host, opts.port);
        let usage = |e: std::io::Error| Error::Usage(format!("{bind}: {e}"));
        let listener = std::net::TcpListener::bind(bind).map_err(usage)?;
        listener.set_nonblocking(true).map_err(usage)?;
        let addr = listener.local_addr().map_err(usage)?;
        Ok(Self {
            listener,
            addr,
            workers: opts.workers.max(1),
            max_connections: opts.max_connections.max(1),
            timeout: opts.timeout,
            routes: Arc::new(Routes::new(out, opts.cache_bytes)),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until Ctrl-C or SIGTERM, then lets the requests in flight finish.
    pub fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            // Sockets only: the blocking pool does the work.
            .worker_threads(2)
            .max_blocking_threads(self.workers)
            .enable_all()
            .build()
            .map_err(|e| Error::Usage(format!("cannot start the server's runtime: {e}")))?;
        runtime.block_on(self.serve())
    }

    async fn serve(self) -> Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|e| Error::Usage(format!("{}: {e}", self.addr)))?;
        let routes = self.routes;
        let service = ServiceBuilder::new()
            .layer(SetResponseHeaderLayer::overriding(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ))
            .layer(CompressionLayer::new())
            .layer(RequestBodyLimitLayer::new(MAX_BODY))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                self.timeout,
            ))
            .service_fn(move |req| answer(routes.clone(), req));
        let service = TowerToHyperService::new(service);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.timeout)
            .max_buf_size(MAX_HEAD.max(8192))
            .max_header_size(MAX_HEAD);

        let slots = Arc::new(Semaphore::new(self.max_connections));
        let graceful = GracefulShutdown::new();
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                () = &mut stop => break,
            };
            let stream = tokio::select! {
                conn = listener.accept() => match conn {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors, or a connection reset before accept:
                    // the listener itself is fine, so wait a moment and go on.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
            tokio::spawn(async move {
                // A client that goes away is no error of the server's.
                let _ = conn.await;
                drop(slot);
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(GRACE) => {}
        }
        Ok(())
    }
}

/// Ctrl-C or SIGTERM, whichever comes first.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// One request: the route's reply, worked out on the blocking pool.
async fn answer<B>(
    routes: Arc<Routes>,
    req: Request<B>,
) -> std::result::Result<Response<Body>, Infallible>
where
    B: Send + 'static,
{
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut reply = data(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD");
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(reply);
    }
    let Ok(path) = percent_encoding::percent_decode_str(req.uri().path()).decode_utf8() else {
        return Ok(data(StatusCode::NOT_FOUND, TEXT, "not found"));
    };
    let path = path.into_owned();
    let reply_of = tokio::task::spawn_blocking(move || routes.route(&path)).await;
    Ok(match reply_of {
        Ok(Reply::File(file)) => match ServeFile::new(file).oneshot(req).await {
            Ok(res) => res.map(|b| b.map_err(std::io::Error::other).boxed_unsync()),
            Err(never) => match never {},
        },
        Ok(Reply::Data { status, kind, body }) => data(status, kind, body),
        Err(e) => data(StatusCode::INTERNAL_SERVER_ERROR, TEXT, e.to_string()),
    })
}

fn data(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    res
}
