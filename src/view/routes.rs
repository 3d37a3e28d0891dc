//! What each path answers; no sockets here (that is `server.rs`). In: a request's
//! path. Out: a [`Reply`]: bytes (a page, a tile, a map) or a file under OUT for the
//! server to send.
//!
//! | path | answer |
//! |---|---|
//! | `/` | OUT's cohort report, or a list of its finished slides |
//! | `/<file under OUT>` | the file (never a hidden one, never one outside OUT) |
//! | `/.assets/…` | the page's script and style, and OpenSeadragon's |
//! | `/.view/<slide>` | the viewer page |
//! | `/.view/<slide>.dzi`, `/.view/<slide>_files/<level>/<col>_<row>.jpg` | the slide as Deep Zoom |
//! | `/.view/<slide>/info.json` | size, MPP, grid, classes ([`SlideView`]) |
//! | `/.view/<slide>/map.bin` | per grid cell a state and each class's probability |
//! | `/.view/<slide>/map/<layer>.dzi`, `…/map/<layer>_files/<level>/<col>_<row>.png` | the map as Deep Zoom, `<layer>` = `classes` or a class's index ([`maplayer`]) |
//!
//! `.assets` and `.view` are hidden names, so no slide folder (they never start with a
//! dot) can take them. Where a slide's name itself ends in `.dzi`, `/.view/<name>` is
//! the descriptor of the slide without the suffix if OUT has one, else the page.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::StatusCode;
use image::RgbImage;
use lru::LruCache;

use super::catalog::{self, SlideView};
use super::maplayer::{self, Layer};
use super::tiles::{Pyramid, TileId, TileSource};
use crate::map::slide::cache::ByteLru;

/// Slides held open at once, each with its reader's caches and a 3 MiB overview.
pub const MAX_OPEN_SLIDES: usize = 4;
const JPEG_QUALITY: u8 = 85;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const PNG: &str = "image/png";
const JSON: &str = "application/json";
const XML: &str = "application/xml";
const BINARY: &str = "application/octet-stream";

/// The page's files and OpenSeadragon's (`scripts/fetch-openseadragon.sh` puts them
/// there), compiled in: nothing loads from a network. Each is `/.assets/<path>`.
macro_rules! assets {
    ($($path:literal => $kind:expr,)*) => {
        fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
            match path {
                $($path => Some(($kind, include_bytes!(concat!("assets/", $path)))),)*
                _ => None,
            }
        }
    };
}

assets! {
    "viewer.html" => HTML,
    "viewer.js" => JS,
    "viewer.css" => CSS,
    "openseadragon/openseadragon.min.js" => JS,
    "openseadragon/LICENSE.txt" => "text/plain; charset=utf-8",
    "openseadragon/images/zoomin_rest.png" => PNG,
    "openseadragon/images/zoomin_grouphover.png" => PNG,
    "openseadragon/images/zoomin_hover.png" => PNG,
    "openseadragon/images/zoomin_pressed.png" => PNG,
    "openseadragon/images/zoomout_rest.png" => PNG,
    "openseadragon/images/zoomout_grouphover.png" => PNG,
    "openseadragon/images/zoomout_hover.png" => PNG,
    "openseadragon/images/zoomout_pressed.png" => PNG,
    "openseadragon/images/home_rest.png" => PNG,
    "openseadragon/images/home_grouphover.png" => PNG,
    "openseadragon/images/home_hover.png" => PNG,
    "openseadragon/images/home_pressed.png" => PNG,
    "openseadragon/images/fullpage_rest.png" => PNG,
    "openseadragon/images/fullpage_grouphover.png" => PNG,
    "openseadragon/images/fullpage_hover.png" => PNG,
    "openseadragon/images/fullpage_pressed.png" => PNG,
}

/// What a request is answered with.
pub enum Reply {
    Data {
        status: StatusCode,
        kind: &'static str,
        /// Shared with the cache, so a cached tile is never copied.
        body: Bytes,
    },
    /// A file under OUT, checked to be one.
    File(PathBuf),
}

impl Reply {
    fn ok(kind: &'static str, body: impl Into<Bytes>) -> Self {
        Reply::Data {
            status: StatusCode::OK,
            kind,
            body: body.into(),
        }
    }

    fn status(status: StatusCode, text: impl Into<String>) -> Self {
        Reply::Data {
            status,
            kind: "text/plain; charset=utf-8",
            body: text.into().into(),
        }
    }

    fn error(text: impl Into<String>) -> Self {
        Self::status(StatusCode::INTERNAL_SERVER_ERROR, text)
    }

    fn not_found() -> Self {
        Self::status(StatusCode::NOT_FOUND, "not found")
    }
}

/// What the server keeps between requests: OUT, the cache, the open slides.
pub struct Routes {
    /// Canonical, so that a resolved path can be checked against it.
    out: PathBuf,
    cache: Mutex<ByteLru<Key>>,
    open: Mutex<LruCache<String, Arc<TileSource>>>,
}

#[derive(Hash, PartialEq, Eq)]
enum Key {
    Tile(String, TileId),
    Map(String),
    /// Slide, layer as the path names it, tile.
    MapTile(String, String, TileId),
}

impl Routes {
    /// `out` must be canonical.
    pub fn new(out: PathBuf, cache_bytes: usize) -> Self {
        Self {
            out,
            cache: Mutex::new(ByteLru::new(cache_bytes)),
            open: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(MAX_OPEN_SLIDES).expect("not zero"),
            )),
        }
    }

    /// The answer to a GET of `path` (the request target without its query), already
    /// percent-decoded.
    pub fn route(&self, path: &str) -> Reply {
        let Some(path) = path.strip_prefix('/') else {
            return Reply::not_found();
        };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            [".assets", ..] => match path.strip_prefix(".assets/").and_then(asset) {
                Some((kind, bytes)) => Reply::ok(kind, Bytes::from_static(bytes)),
                None => Reply::not_found(),
            },
            [".view", name] if name.ends_with(".dzi") && self.is_slide(&name[..name.len() - 4]) => {
                self.with_view(&name[..name.len() - 4], |v| {
                    Reply::ok(XML, Pyramid::new(v.size).dzi("jpg"))
                })
            }
            [".view", name] | [".view", name, ""] if self.is_slide(name) => {
                self.route("/.assets/viewer.html")
            }
            [".view", name, "info.json"] => self.with_view(name, |v| {
                Reply::ok(JSON, serde_json::to_vec(v).expect("serialisable"))
            }),
            [".view", name, "map.bin"] => match self.cells(name) {
                Ok((_, cells)) => Reply::ok(BINARY, cells),
                Err(reply) => reply,
            },
            [".view", name, "map", dzi] if dzi.ends_with(".dzi") => {
                self.map_layer(name, &dzi[..dzi.len() - 4], |view, _, _| {
                    Reply::ok(XML, maplayer::pyramid(view).dzi("png"))
                })
            }
            [".view", files, level, tile] => {
                match (
                    files.strip_suffix("_files"),
                    TileId::parse(level, tile, "jpg"),
                ) {
                    (Some(name), Some(t)) => self.tile(name, t),
                    _ => Reply::not_found(),
                }
            }
            [".view", name, "map", files, level, tile] => {
                match (
                    files.strip_suffix("_files"),
                    TileId::parse(level, tile, "png"),
                ) {
                    (Some(layer), Some(t)) => self.map_tile(name, layer, t),
                    _ => Reply::not_found(),
                }
            }
            [""] => {
                let report = self.out.join(crate::cohort::report::INDEX_HTML);
                if report.is_file() {
                    Reply::File(report)
                } else {
                    Reply::ok(HTML, self.listing())
                }
            }
            _ => self.file(&parts),
        }
    }

    fn is_slide(&self, name: &str) -> bool {
        catalog::slide(&self.out, name).is_some()
    }

    /// `f` of the finished slide `name`; 404 where OUT has none, 500 where its
    /// summary cannot be read.
    fn with_view(&self, name: &str, f: impl FnOnce(&SlideView) -> Reply) -> Reply {
        match catalog::slide(&self.out, name) {
            Some(Ok(view)) => f(&view),
            Some(Err(e)) => Reply::error(e),
            None => Reply::not_found(),
        }
    }

    /// A file under OUT; never a hidden one (the run's ledger), never one outside.
    fn file(&self, parts: &[&str]) -> Reply {
        if !parts.iter().all(|p| catalog::is_folder_name(p)) {
            return Reply::not_found();
        }
        let path: PathBuf = parts.iter().fold(self.out.clone(), |p, c| p.join(c));
        match std::fs::canonicalize(&path) {
            Ok(real) if real.starts_with(&self.out) && real.is_file() => Reply::File(real),
            _ => Reply::not_found(),
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

    fn cached(&self, key: &Key) -> Option<Bytes> {
        self.cache.lock().expect("no worker panics").get(key)
    }

    fn keep(&self, key: Key, bytes: Vec<u8>) -> Bytes {
        let kept = Bytes::from(bytes);
        self.cache
            .lock()
            .expect("no worker panics")
            .put(key, kept.clone());
        kept
    }

    /// The slide's view and its map bytes, or the reply that says why not.
    fn cells(&self, name: &str) -> std::result::Result<(SlideView, Bytes), Reply> {
        let view = match catalog::slide(&self.out, name) {
            Some(Ok(v)) => v,
            Some(Err(e)) => return Err(Reply::error(e)),
            None => return Err(Reply::not_found()),
        };
        let key = Key::Map(name.to_string());
        if let Some(b) = self.cached(&key) {
            return Ok((view, b));
        }
        match catalog::map_bytes(&self.out, &view) {
            Ok(bytes) => {
                let kept = self.keep(key, bytes);
                Ok((view, kept))
            }
            Err(e) => Err(Reply::error(e.to_string())),
        }
    }

    /// `f` of slide `name`'s map layer `layer`, where both exist.
    fn map_layer(
        &self,
        name: &str,
        layer: &str,
        f: impl FnOnce(&SlideView, &[u8], Layer) -> Reply,
    ) -> Reply {
        match self.cells(name) {
            Ok((view, cells)) => match Layer::parse(layer, view.classes.len()) {
                Some(layer) => f(&view, &cells, layer),
                None => Reply::not_found(),
            },
            Err(reply) => reply,
        }
    }

    /// A tile of slide `name`'s map layer `layer` (as the path names it). A cached one
    /// is answered before the slide's summary is read: a page asks for many.
    fn map_tile(&self, name: &str, layer: &str, t: TileId) -> Reply {
        let key = Key::MapTile(name.to_string(), layer.to_string(), t);
        if let Some(b) = self.cached(&key) {
            return Reply::ok(PNG, b);
        }
        self.map_layer(name, layer, |view, cells, layer| {
            let Some(image) = maplayer::tile(view, cells, layer, t) else {
                return Reply::not_found();
            };
            let mut png = Vec::new();
            match image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png) {
                Ok(()) => Reply::ok(PNG, self.keep(key, png)),
                Err(e) => Reply::error(format!("{name}: map tile {t}: {e}")),
            }
        })
    }

    fn tile(&self, name: &str, t: TileId) -> Reply {
        let key = Key::Tile(name.to_string(), t);
        if let Some(b) = self.cached(&key) {
            return Reply::ok("image/jpeg", b);
        }
        let tiles = match self.opened(name) {
            Some(Ok(o)) => o,
            Some(Err(e)) => return Reply::error(e),
            None => return Reply::not_found(),
        };
        let image = match tiles.cut(t) {
            Ok(Some(image)) => image,
            Ok(None) => return Reply::not_found(),
            // A damaged part of the slide shows grey, as in the overlay.
            Err(_) => match tiles.pyramid.tile(t) {
                Some((_, size)) => RgbImage::from_pixel(size.w, size.h, image::Rgb([128; 3])),
                None => return Reply::not_found(),
            },
        };
        let mut jpeg = Vec::new();
        let encoded = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, JPEG_QUALITY)
            .encode_image(&image);
        match encoded {
            Ok(()) => Reply::ok("image/jpeg", self.keep(key, jpeg)),
            Err(e) => Reply::error(format!("{name}: tile {t}: {e}")),
        }
    }
}
