//! `histomap view` on real files: the viewer (OpenSeadragon) in headless Chromium on
//! the real SVS and the generated 100,000 × 80,000 pyramid, zoomed to full resolution
//! over tissue; the Deep Zoom descriptors and tiles as a client reads them; the
//! server's memory under 500 tile requests; paths outside OUT; idle, slow and many
//! clients; Ctrl-C.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::{browser, generated, heatmap_command, root, svs};

/// A finished OUT with the real SVS and the gigapixel pyramid, mapped once per test
/// process by the shipped Kather model.
fn out() -> &'static Path {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = root().join(format!("target/tmp/view-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        for slide in [svs(), generated().join("gigapixel.tif")] {
            let model = root().join("models/kather8");
            let status = heatmap_command("kather8", &model, &out, &slide)
                .status()
                .unwrap();
            assert!(status.success());
        }
        out
    })
}

/// `histomap view OUT --port 0`, killed on drop.
struct Viewer {
    child: Child,
    addr: String,
}

impl Viewer {
    fn start(out: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("histomap"))
            .args(["view", "--port", "0"])
            .args(extra)
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("http://")
            .and_then(|a| a.strip_suffix('/'))
            .unwrap_or_else(|| panic!("first line is the address: {line:?}"))
            .to_string();
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// GET `path` as sent, byte for byte (no client normalises `..` away): status
    /// and body. HTTP/1.0, so that the body comes whole, never in chunks.
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).unwrap();
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&bytes[..split]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, bytes[split + 4..].to_vec())
    }

    /// Peak resident memory of the server so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The centre of the classified patch with the most tissue: a point the map must
/// colour and the slide must show as tissue.
fn tissue_point(dir: &Path) -> (f64, f64) {
    let mut csv = csv::Reader::from_path(dir.join("predictions.csv")).unwrap();
    let h = csv.headers().unwrap().clone();
    let col = |n: &str| h.iter().position(|x| x == n).unwrap();
    let (x, y, w, t, status) = (
        col("x"),
        col("y"),
        col("w"),
        col("tissue_fraction"),
        col("status"),
    );
    let best = csv
        .records()
        .map(Result::unwrap)
        .filter(|r| &r[status] == "ok")
        .max_by(|a, b| {
            let f = |r: &csv::StringRecord| r[t].parse::<f64>().unwrap();
            f(a).total_cmp(&f(b))
        })
        .unwrap();
    let n = |i: usize| best[i].parse::<f64>().unwrap();
    (n(x) + n(w) / 2.0, n(y) + n(w) / 2.0)
}

fn save(name: &str, png: &[u8]) {
    let dir = root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// Opens slide `name`'s viewer and runs `body`, an async script over the viewer `v`
/// that gives up after 30 s with what the viewer had done by then (`late`) rather
/// than leaving the browser to time out unexplained; keeps the screenshot as `shot`,
/// checks the script finished with no console error, and gives its value.
fn run_viewer(viewer: &Viewer, name: &str, shot: &str, body: &str) -> serde_json::Value {
    let script = format!(
        "(async () => {{ const v = window.histomapViewer; \
         const work = (async () => {{ {body} }})(); \
         const late = new Promise((r) => setTimeout(() => r({{ late: true, \
           stats: {{ ...v.stats }}, view: v.view, info: !!v.info }}), 30000)); \
         return Promise.race([work, late]); }})()"
    );
    let page = browser::check_page(&viewer.url(&format!("/.view/{name}")), Some(&script));
    save(shot, &page.screenshot);
    assert!(
        page.script_value["late"].is_null(),
        "{name}: {} {:?}",
        page.script_value,
        page.errors
    );
    assert!(
        page.errors.is_empty(),
        "{name}: console errors {:?}",
        page.errors
    );
    page.script_value
}

/// Opens a slide's viewer, waits for the whole slide, then zooms to full resolution on
/// its most tissue-covered patch: every tile decodes, no console error, and the point
/// is tissue on the slide and a coloured (classified) cell on the map.
fn check_viewer(viewer: &Viewer, name: &str) {
    let (x, y) = tissue_point(&out().join(name));
    let whole = run_viewer(
        viewer,
        name,
        &format!("viewer-{name}-whole.png"),
        "await v.ready; const w = v.view; await v.goTo(w.cx, w.cy, w.scale); \
         return { stats: { ...v.stats }, view: v.view };",
    );
    assert!(
        whole["view"]["scale"].as_f64().unwrap() < 1.0,
        "{name}: {whole}"
    );
    let s = &whole["stats"];
    assert!(s["loaded"].as_u64().unwrap() >= 1, "{name}: {s}");
    assert_eq!(s["failed"], 0, "{name}: {s}");

    let full = run_viewer(
        viewer,
        name,
        &format!("viewer-{name}-full.png"),
        &format!(
            "await v.ready; await v.goTo({x}, {y}, 1); \
             const c = document.querySelector('#view .openseadragon-canvas'), \
               r = c.getBoundingClientRect(); \
             c.dispatchEvent(new PointerEvent('pointermove', {{ bubbles: true, \
               clientX: r.left + r.width / 2, clientY: r.top + r.height / 2 }})); \
             return {{ stats: {{ ...v.stats }}, view: v.view, probe: await v.probe({x}, {y}) }};"
        ),
    );
    let v = &full;
    let scale = v["view"]["scale"].as_f64().unwrap();
    assert!((scale - 1.0).abs() < 1e-6, "{name}: full resolution: {v}");
    assert!(v["stats"]["loaded"].as_u64().unwrap() >= 1, "{name}: {v}");
    assert_eq!(v["stats"]["failed"], 0, "{name}: {v}");
    let p = &v["probe"];
    assert_eq!(
        p["state"], "classified",
        "{name}: the map colours the tissue: {p}"
    );
    assert!(p["cls"].is_string(), "{name}: {p}");
    let rgb: Vec<u64> = p["rgb"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: the tile under the point loaded: {p}"))
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    let (lo, hi) = (*rgb.iter().min().unwrap(), *rgb.iter().max().unwrap());
    assert!(
        lo < 200 && hi - lo > 25,
        "{name}: the slide shows tissue (stained, not glass) under the map's cell: {rgb:?}"
    );
}

/// The 100,000 × 80,000 pyramid's full-resolution Deep Zoom level: ⌈log2 100,000⌉.
const GIGAPIXEL_MAX_LEVEL: u32 = 17;

#[test]
fn viewer_shows_the_map_over_tissue_at_full_resolution() {
    let viewer = Viewer::start(out(), &[]);
    check_viewer(&viewer, "cmu_small_region");
    check_viewer(&viewer, "gigapixel");
    // The report at / links each slide's viewer.
    let (status, index) = viewer.get("/");
    assert_eq!(status, 200);
    let index = String::from_utf8(index).unwrap();
    assert!(index.contains("href=\".view/gigapixel\""), "{index}");
}

#[test]
fn server_holds_its_memory_cap_and_serves_nothing_outside_out() {
    // A cache smaller than the tiles asked for, so it must drop old ones.
    let cache_mib = 2;
    let viewer = Viewer::start(out(), &["--cache-mib", &cache_mib.to_string()]);
    // 500 different tiles: every tile over the gigapixel's tissue at the three finest
    // levels (about 20 KiB of JPEG each), then tiles spread over the whole pyramid.
    let mut tiles: Vec<(u32, u32, u32)> = Vec::new();
    let mut csv = csv::Reader::from_path(out().join("gigapixel/predictions.csv")).unwrap();
    for r in csv.records().map(Result::unwrap) {
        let (x, y): (u32, u32) = (r[0].parse().unwrap(), r[1].parse().unwrap());
        for k in 0..3 {
            let t = (k, x / (256 << k), y / (256 << k));
            if !tiles.contains(&t) {
                tiles.push(t);
            }
        }
    }
    let tissue_tiles = tiles.len();
    for i in 0u32.. {
        if tiles.len() == 500 {
            break;
        }
        let k = i % 10;
        let span = 256u32 << k;
        let (cols, rows) = (100_000u32.div_ceil(span), 80_000u32.div_ceil(span));
        let t = (k, (i * 7919) % cols, (i * 104_729) % rows);
        if !tiles.contains(&t) {
            tiles.push(t);
        }
    }
    let mut bytes = 0;
    for (k, c, r) in &tiles {
        let level = GIGAPIXEL_MAX_LEVEL - k;
        let (status, body) = viewer.get(&format!("/.view/gigapixel_files/{level}/{c}_{r}.jpg"));
        assert_eq!(status, 200, "tile {level}/{c}_{r}");
        assert!(image::load_from_memory(&body).is_ok());
        bytes += body.len();
    }
    let peak = viewer.peak_rss_mib();
    let mib = bytes as f64 / (1 << 20) as f64;
    eprintln!(
        "view: 500 tiles ({tissue_tiles} over tissue), {mib:.1} MiB of JPEG, --cache-mib \
         {cache_mib}: peak RSS {peak:.0} MiB"
    );
    assert!(mib > 2.0 * cache_mib as f64, "the cache had to drop tiles");
    assert!(peak < 160.0, "peak RSS {peak:.0} MiB");

    for path in [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc/passwd",
        "/gigapixel/../../etc/passwd",
        "/.histomap/slides.json",
        "/.view/..%2f..%2fetc/info.json",
        "/.view/../../etc/passwd",
        "/etc/passwd",
        "/.view/no-such-slide",
        "/.view/gigapixel_files/18/0_0.jpg",
        "/.view/gigapixel_files/17/391_0.jpg",
        "/.view/gigapixel_files/x/0_0.jpg",
        "/.view/gigapixel_files/17/0_0.png",
        "/.view/gigapixel/map/8.dzi",
        "/.view/gigapixel/map/../../etc/passwd",
        "/.view/gigapixel/map/classes_files/x/0_0.png",
        "/.view/gigapixel/tiles/0/0_0.jpg",
        "/.assets/../Cargo.toml",
        "/.assets/",
    ] {
        assert_eq!(viewer.get(path).0, 404, "{path}");
    }
    for path in [
        "/gigapixel/summary.json",
        "/.assets/viewer.js",
        "/.assets/openseadragon/openseadragon.min.js",
        "/.view/gigapixel/map.bin",
        "/.view/gigapixel.dzi",
        "/.view/gigapixel/map/classes.dzi",
    ] {
        assert_eq!(viewer.get(path).0, 200, "{path}");
    }
}

/// A Deep Zoom descriptor's size and tile size.
fn dzi(viewer: &Viewer, path: &str) -> (u32, u32, u32) {
    let (status, body) = viewer.get(path);
    assert_eq!(status, 200, "{path}");
    let xml = String::from_utf8(body).unwrap();
    let attr = |name: &str| -> u32 {
        let at = xml
            .find(&format!(" {name}=\""))
            .unwrap_or_else(|| panic!("{name}: {xml}"));
        let rest = &xml[at + name.len() + 3..];
        rest[..rest.find('"').unwrap()].parse().unwrap()
    };
    assert!(xml.contains("Overlap=\"0\""), "{xml}");
    (attr("Width"), attr("Height"), attr("TileSize"))
}

#[test]
fn deep_zoom_slide_and_map_layers_read_as_a_client_reads_them() {
    let viewer = Viewer::start(out(), &[]);
    let (w, h, tile) = dzi(&viewer, "/.view/gigapixel.dzi");
    assert_eq!((w, h, tile), (100_000, 80_000, 256));
    let max = GIGAPIXEL_MAX_LEVEL;
    let size_of = |path: &str| {
        let (status, body) = viewer.get(path);
        assert_eq!(status, 200, "{path}");
        let img = image::load_from_memory(&body).unwrap();
        (img.width(), img.height())
    };
    // Full resolution: whole tiles, then the remainder; level 0 is one pixel; each
    // level's tiles add up to ⌈size / 2^(max − level)⌉ as a client computes it.
    assert_eq!(
        size_of(&format!("/.view/gigapixel_files/{max}/0_0.jpg")),
        (256, 256)
    );
    assert_eq!(
        size_of(&format!("/.view/gigapixel_files/{max}/390_312.jpg")),
        (100_000 - 390 * 256, 80_000 - 312 * 256)
    );
    assert_eq!(size_of("/.view/gigapixel_files/0/0_0.jpg"), (1, 1));
    assert_eq!(size_of("/.view/gigapixel_files/8/0_0.jpg"), (196, 157));
    assert_eq!(viewer.get("/.view/gigapixel_files/8/1_0.jpg").0, 404);

    // The map layer: 8 layer pixels per grid cell; the cell under the tissue point is
    // its most probable class's colour, opaque, in the argmax layer, and as opaque as
    // that class is probable in the class's own layer.
    let (_, info) = viewer.get("/.view/gigapixel/info.json");
    let info: serde_json::Value = serde_json::from_slice(&info).unwrap();
    let g = &info["grid"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap() as u32;
    let (cols, rows, stride) = (n(&g["cols"]), n(&g["rows"]), g["stride"].as_f64().unwrap());
    assert_eq!(
        dzi(&viewer, "/.view/gigapixel/map/classes.dzi"),
        (cols * 8, rows * 8, 256)
    );
    let (x, y) = tissue_point(&out().join("gigapixel"));
    let offset = info["core_offset"].as_f64().unwrap();
    let (col, row) = (
        ((x - offset) / stride) as u32,
        ((y - offset) / stride) as u32,
    );
    let (_, cells) = viewer.get("/.view/gigapixel/map.bin");
    let classes = info["classes"].as_array().unwrap();
    let cell = &cells[(row * cols + col) as usize * (classes.len() + 1)..][..classes.len() + 1];
    assert_eq!(cell[0], 1, "classified");
    let best = (0..classes.len()).fold(0, |b, k| if cell[k + 1] > cell[b + 1] { k } else { b });
    let hex = classes[best]["color"].as_str().unwrap();
    let rgb: Vec<u8> = (0..3)
        .map(|i| u8::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap())
        .collect();
    let map_max = (cols.max(rows) * 8).next_power_of_two().trailing_zeros();
    let (px, py) = (col * 8 + 4, row * 8 + 4);
    let pixel = |layer: &str| {
        let path = format!(
            "/.view/gigapixel/map/{layer}_files/{map_max}/{}_{}.png",
            px / 256,
            py / 256
        );
        let (status, body) = viewer.get(&path);
        assert_eq!(status, 200, "{path}");
        let img = image::load_from_memory(&body).unwrap().to_rgba8();
        img.get_pixel(px % 256, py % 256).0
    };
    assert_eq!(pixel("classes"), [rgb[0], rgb[1], rgb[2], 255]);
    assert_eq!(
        pixel(&best.to_string()),
        [rgb[0], rgb[1], rgb[2], cell[best + 1]]
    );
}

/// Reads from `s` until the server closes it; the time that took.
fn time_to_close(s: &mut TcpStream, start: std::time::Instant) -> std::time::Duration {
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 256];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    start.elapsed()
}

#[test]
fn idle_and_slow_clients_cannot_hold_the_server() {
    use std::time::{Duration, Instant};
    let timeout = 12;
    let viewer = Viewer::start(
        out(),
        &["--workers", "2", "--timeout-s", &timeout.to_string()],
    );
    // 50 connections that send nothing, then a request: answered at once.
    let start = Instant::now();
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(&viewer.addr).unwrap())
        .collect();
    let asked = Instant::now();
    let (status, _) = viewer.get("/.view/gigapixel/info.json");
    let answered = asked.elapsed();
    assert_eq!(status, 200);
    eprintln!("view: with 50 idle connections open, a request was answered in {answered:?}");
    assert!(answered < Duration::from_secs(5), "{answered:?}");

    // A client that sends one byte of its head every 5 s is cut off once the head
    // has taken the timeout, however steadily it trickles.
    let mut slow = TcpStream::connect(&viewer.addr).unwrap();
    let trickle = Instant::now();
    let mut writer = slow.try_clone().unwrap();
    std::thread::spawn(move || {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
            if writer.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let cut = time_to_close(&mut slow, trickle);
    eprintln!(
        "view: a client sending a byte every 5 s was cut off after {cut:?} (--timeout-s {timeout})"
    );
    let limit = Duration::from_secs(timeout + 3);
    assert!(
        cut >= Duration::from_secs(timeout - 1) && cut < limit,
        "{cut:?}"
    );
    // The idle ones are closed by then too.
    for s in &mut idle {
        assert!(time_to_close(s, start) < limit + Duration::from_secs(5));
    }
}

#[test]
fn two_hundred_concurrent_tile_requests_are_all_answered() {
    use std::time::Instant;
    let viewer = Viewer::start(out(), &[]);
    // Distinct tiles over the gigapixel's tissue at the three finest levels, none cut
    // before: each is a read and a JPEG encode.
    let mut tiles: Vec<String> = Vec::new();
    let mut csv = csv::Reader::from_path(out().join("gigapixel/predictions.csv")).unwrap();
    for r in csv.records().map(Result::unwrap) {
        let (x, y): (u32, u32) = (r[0].parse().unwrap(), r[1].parse().unwrap());
        for k in 0..3 {
            let t = format!(
                "/.view/gigapixel_files/{}/{}_{}.jpg",
                GIGAPIXEL_MAX_LEVEL - k,
                x / (256 << k),
                y / (256 << k)
            );
            if !tiles.contains(&t) {
                tiles.push(t);
            }
        }
    }
    tiles.truncate(200);
    assert_eq!(tiles.len(), 200);
    let gate = std::sync::Arc::new(std::sync::Barrier::new(tiles.len()));
    let start = Instant::now();
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = tiles
            .iter()
            .map(|t| {
                let (gate, viewer) = (gate.clone(), &viewer);
                s.spawn(move || {
                    gate.wait();
                    let asked = Instant::now();
                    let (status, body) = viewer.get(t);
                    assert_eq!(status, 200, "{t}");
                    assert!(image::load_from_memory(&body).is_ok(), "{t}");
                    asked.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let all = start.elapsed();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "view: 200 concurrent tile requests, all answered in {all:.2?}: p50 {:.0} ms, p99 {:.0} ms",
        at(0.5) * 1e3,
        at(0.99) * 1e3
    );
    assert_eq!(latencies.len(), 200);
}

#[test]
fn ctrl_c_stops_the_server_cleanly() {
    let mut viewer = Viewer::start(out(), &[]);
    assert_eq!(viewer.get("/").0, 200);
    let pid = viewer.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = viewer.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "still running after Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
