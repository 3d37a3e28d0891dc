//! `histomap view` on real files: the viewer in headless Chromium on the real SVS and
//! the generated 100,000 × 80,000 pyramid, zoomed to full resolution over tissue; the
//! server's memory under 500 tile requests; paths outside OUT.

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

/// `histomap view OUT --port 0`, stopped on drop.
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
    let s = &whole["stats"];
    assert!(s["loaded"].as_u64().unwrap() >= 1, "{name}: {s}");
    assert_eq!(s["failed"], 0, "{name}: {s}");

    let full = run_viewer(
        viewer,
        name,
        &format!("viewer-{name}-full.png"),
        &format!(
            "await v.ready; await v.goTo({x}, {y}, 1); \
             const c = document.getElementById('view'), r = c.getBoundingClientRect(); \
             c.dispatchEvent(new PointerEvent('pointermove', {{ bubbles: true, \
               clientX: r.left + c.width / 2, clientY: r.top + c.height / 2 }})); \
             return {{ stats: {{ ...v.stats }}, view: v.view, probe: v.probe({x}, {y}) }};"
        ),
    );
    let v = &full;
    assert_eq!(v["view"]["level"], 0, "{name}: full resolution: {v}");
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
        let (status, body) = viewer.get(&format!("/.view/gigapixel/tiles/{k}/{c}_{r}.jpg"));
        assert_eq!(status, 200, "tile {k}/{c}_{r}");
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
        "/.view/gigapixel/tiles/10/0_0.jpg",
        "/.view/gigapixel/tiles/0/391_0.jpg",
        "/.view/gigapixel/tiles/x/0_0.jpg",
    ] {
        assert_eq!(viewer.get(path).0, 404, "{path}");
    }
    for path in [
        "/gigapixel/summary.json",
        "/.assets/viewer.js",
        "/.view/gigapixel/map.bin",
    ] {
        assert_eq!(viewer.get(path).0, 200, "{path}");
    }
}
