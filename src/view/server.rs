//! The viewer's HTTP server, a small one of our own: GET and HEAD, one request per
//! connection. In: requests on a loopback socket. Out: OUT's files (the
//! cohort report at `/`), the viewer page per slide, and the slide's tiles, map and
//! facts. Two hidden namespaces, which no slide folder's name can take (they never
//! start with a dot): `/.assets/` for the page's script and style, and
//! `/.view/<slide>` for the page, `…/info.json`, `…/map.bin` and
//! `…/tiles/<k>/<col>_<row>.jpg`.
//!
//! Memory is bounded by construction: a fixed number of worker threads each serve one
//! request at a time, tiles and maps live in one byte-capped cache, and at most
//! [`MAX_OPEN_SLIDES`] slides are open at once. A path that leaves OUT (by `..`, a
//! hidden folder or a link) is answered 404, like any other path the server does not
//! serve.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use lru::LruCache;

use super::cache::ByteLru;
use super::catalog;
use super::tiles::TileSource;
use crate::error::{Error, Result};

/// Slides held open at once, each with its reader's caches and a 3 MiB overview.
pub const MAX_OPEN_SLIDES: usize = 4;
const JPEG_QUALITY: u8 = 85;

const VIEWER_HTML: &str = include_str!("assets/viewer.html");
const VIEWER_JS: &str = include_str!("assets/viewer.js");
const VIEWER_CSS: &str = include_str!("assets/viewer.css");

pub struct ServerOptions {
    pub out: PathBuf,
    pub host: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    /// The cap of the tile and map cache, in bytes.
    pub cache_bytes: usize,
    pub workers: usize,
}

pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    workers: usize,
    state: State,
}

struct State {
    /// Canonical, so that a resolved path can be checked against it.
    out: PathBuf,
    cache: Mutex<ByteLru<Key>>,
    open: Mutex<LruCache<String, Arc<TileSource>>>,
}

#[derive(Hash, PartialEq, Eq)]
enum Key {
    Tile(String, u32, u32, u32),
    Map(String),
}

/// What a request is answered with.
enum Reply {
    Data {
        status: u16,
        kind: &'static str,
        /// Shared with the cache, so a cached tile is never copied.
        body: Arc<[u8]>,
    },
    File(File, &'static str),
}

impl Reply {
    fn ok(kind: &'static str, body: impl Into<Arc<[u8]>>) -> Self {
        Reply::Data {
            status: 200,
            kind,
            body: body.into(),
        }
    }

    fn status(status: u16, text: impl Into<String>) -> Self {
        Reply::Data {
            status,
            kind: "text/plain; charset=utf-8",
            body: text.into().into_bytes().into(),
        }
    }

    fn not_found() -> Self {
        Self::status(404, "not found")
    }
}

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
        let listener = TcpListener::bind(bind).map_err(|e| Error::Usage(format!("{bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Usage(format!("{bind}: {e}")))?;
        Ok(Self {
            listener,
            addr,
            workers: opts.workers.max(1),
            state: State {
                out,
                cache: Mutex::new(ByteLru::new(opts.cache_bytes)),
                open: Mutex::new(LruCache::new(
                    std::num::NonZeroUsize::new(MAX_OPEN_SLIDES).expect("not zero"),
                )),
            },
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until the process ends: connections queue (at most [`QUEUED`]) for the
    /// workers, each of which answers one request per connection.
    pub fn run(&self) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(QUEUED);
        std::thread::scope(|s| {
            for _ in 0..self.workers {
                let rx = rx.clone();
                s.spawn(move || {
                    for stream in rx {
                        self.state.serve(stream);
                    }
                });
            }
            for conn in self.listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if tx.send(stream).is_err() {
                            break;
                        }
                    }
                    // Out of file descriptors, or a connection reset before accept:
                    // the listener itself is fine, so wait a moment and go on.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(())
    }
}

/// Connections accepted but not yet taken by a worker.
const QUEUED: usize = 64;
/// Longest request head read; browsers send well under 2 KiB.
const MAX_HEAD: usize = 8 << 10;

impl State {
    /// One request, one answer, then the connection closes: no keep-alive state to
    /// get wrong, and on loopback a new connection costs nothing next to a tile.
    fn serve(&self, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        let (reply, head_only) = match read_head(&mut stream) {
            Some((method, target)) if method == "GET" || method == "HEAD" => {
                (self.route(&target), method == "HEAD")
            }
            Some(_) => (Reply::status(405, "only GET and HEAD"), false),
            None => (Reply::status(400, "bad request"), false),
        };
        // The client may have gone; nothing is left to do for it then.
        let _ = write_reply(&mut stream, reply, head_only);
        // Closing with unread bytes from the client would reset the connection and
        // could discard the answer before the client reads it: say we are done, then
        // read until the client closes too.
        let _ = stream.shutdown(Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    }

    fn route(&self, url: &str) -> Reply {
        let path = url.split(['?', '#']).next().unwrap_or_default();
        let Ok(path) = percent_encoding::percent_decode_str(path).decode_utf8() else {
            return Reply::not_found();
        };
        let Some(path) = path.strip_prefix('/') else {
            return Reply::not_found();
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [".assets", "viewer.js"] => {
                Reply::ok("text/javascript; charset=utf-8", VIEWER_JS.as_bytes())
            }
            [".assets", "viewer.css"] => {
                Reply::ok("text/css; charset=utf-8", VIEWER_CSS.as_bytes())
            }
            [".view", name] | [".view", name, ""] => match catalog::slide(&self.out, name) {
                Some(_) => Reply::ok("text/html; charset=utf-8", VIEWER_HTML.as_bytes()),
                None => Reply::not_found(),
            },
            [".view", name, "info.json"] => match catalog::slide(&self.out, name) {
                Some(Ok(view)) => Reply::ok(
                    "application/json",
                    serde_json::to_vec(&view).expect("serialisable"),
                ),
                Some(Err(e)) => Reply::status(500, e),
                None => Reply::not_found(),
            },
            [".view", name, "map.bin"] => self.map(name),
            [".view", name, "tiles", k, tile] => {
                let parsed = tile.strip_suffix(".jpg").and_then(|t| {
                    let (c, r) = t.split_once('_')?;
                    Some((k.parse().ok()?, c.parse().ok()?, r.parse().ok()?))
                });
                match parsed {
                    Some((k, c, r)) => self.tile(name, k, c, r),
                    None => Reply::not_found(),
                }
            }
            [""] => match File::open(self.out.join(crate::cohort::report::INDEX_HTML)) {
                Ok(f) => Reply::File(f, "text/html; charset=utf-8"),
                Err(_) => Reply::ok("text/html; charset=utf-8", self.listing().into_bytes()),
            },
            _ => self.file(&parts),
        }
    }

    /// A file under OUT; never a hidden one (the run's ledger), never one outside.
    fn file(&self, parts: &[&str]) -> Reply {
        if !parts.iter().all(|p| catalog::is_folder_name(p)) {
            return Reply::not_found();
        }
        let path: PathBuf = parts.iter().fold(self.out.clone(), |p, c| p.join(c));
        let Ok(real) = std::fs::canonicalize(&path) else {
            return Reply::not_found();
        };
        if !real.starts_with(&self.out) || !real.is_file() {
            return Reply::not_found();
        }
        match File::open(&real) {
            Ok(f) => Reply::File(f, content_type(&real)),
            Err(_) => Reply::not_found(),
        }
    }

    /// OUT's finished slides, where OUT has no report.
    fn listing(&self) -> String {
        let mut h = String::from(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>histomap</title><link rel=\"icon\" href=\"data:,\"></head><body>\
             <h1>Finished slides</h1><ul>",
        );
        for name in catalog::slides(&self.out) {
            let e = crate::cohort::report::esc(&name);
            let u = crate::cohort::report::url(&name);
            h.push_str(&format!("<li><a href=\".view/{u}\">{e}</a></li>"));
        }
        h.push_str("</ul></body></html>\n");
        h
    }

    /// The open slide `name`, opening it (and closing the least recently used one)
    /// if need be; None when OUT has no such finished slide.
    fn opened(&self, name: &str) -> Option<std::result::Result<Arc<TileSource>, String>> {
        let mut open = self.open.lock().expect("no worker panics");
        if let Some(o) = open.get(name) {
            return Some(Ok(o.clone()));
        }
        let view = match catalog::slide(&self.out, name)? {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        // Opening reads the overview: done under the lock, so that many requests for a
        // slide not yet open open it once.
        Some(match TileSource::open(&view.slide) {
            Ok(tiles) => {
                let o = Arc::new(tiles);
                open.put(name.to_string(), o.clone());
                Ok(o)
            }
            Err(e) => Err(e.to_string()),
        })
    }

    fn cached(&self, key: &Key) -> Option<Arc<[u8]>> {
        self.cache.lock().expect("no worker panics").get(key)
    }

    fn keep(&self, key: Key, bytes: Vec<u8>) -> Arc<[u8]> {
        let kept: Arc<[u8]> = bytes.into();
        self.cache
            .lock()
            .expect("no worker panics")
            .put(key, kept.clone());
        kept
    }

    fn map(&self, name: &str) -> Reply {
        let key = Key::Map(name.to_string());
        if let Some(b) = self.cached(&key) {
            return Reply::ok("application/octet-stream", b);
        }
        let view = match catalog::slide(&self.out, name) {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Reply::status(500, e),
            None => return Reply::not_found(),
        };
        match catalog::map_bytes(&self.out, &view) {
            Ok(bytes) => Reply::ok("application/octet-stream", self.keep(key, bytes)),
            Err(e) => Reply::status(500, e.to_string()),
        }
    }

    fn tile(&self, name: &str, k: u32, col: u32, row: u32) -> Reply {
        let key = Key::Tile(name.to_string(), k, col, row);
        if let Some(b) = self.cached(&key) {
            return Reply::ok("image/jpeg", b);
        }
        let tiles = match self.opened(name) {
            Some(Ok(o)) => o,
            Some(Err(e)) => return Reply::status(500, e),
            None => return Reply::not_found(),
        };
        let image = match tiles.cut(k, col, row) {
            Ok(Some(image)) => image,
            Ok(None) => return Reply::not_found(),
            // A damaged part of the slide shows grey, as in the overlay.
            Err(_) => match tiles.pyramid.tile(k, col, row) {
                Some((_, size)) => RgbImage::from_pixel(size.w, size.h, image::Rgb([128; 3])),
                None => return Reply::not_found(),
            },
        };
        let mut jpeg = Vec::new();
        let encoded = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
            .encode_image(&image);
        match encoded {
            Ok(()) => Reply::ok("image/jpeg", self.keep(key, jpeg)),
            Err(e) => Reply::status(500, format!("{name}: tile {k}/{col}_{row}: {e}")),
        }
    }
}

/// The method and target of a request, from its head; None for what is not HTTP.
fn read_head(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return None;
        }
    }
    let line = head.split(|&b| b == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    version
        .starts_with("HTTP/1.")
        .then(|| (method.to_string(), target.to_string()))
}

fn write_reply(stream: &mut TcpStream, reply: Reply, head_only: bool) -> std::io::Result<()> {
    let (status, kind, len) = match &reply {
        Reply::Data { status, kind, body } => (*status, *kind, body.len() as u64),
        Reply::File(f, kind) => (200, *kind, f.metadata()?.len()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut out = std::io::BufWriter::new(stream);
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )?;
    if !head_only {
        match reply {
            Reply::Data { body, .. } => out.write_all(&body)?,
            Reply::File(mut f, _) => {
                std::io::copy(&mut f, &mut out)?;
            }
        }
    }
    out.flush()
}

fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("json") => "application/json",
        Some("geojson") => "application/geo+json",
        Some("csv") => "text/csv; charset=utf-8",
        Some("txt" | "log" | "jsonl") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
