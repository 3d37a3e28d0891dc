//! A real browser for tests: headless Chromium (Debian's `chromium`, installed by
//! scripts/setup.sh) driven over the DevTools protocol on a pipe (fds 3 and 4, JSON
//! messages ending in NUL), so no port is opened and no driver is needed.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// What a page did while it loaded.
pub struct PageCheck {
    /// `<img>` elements on the page.
    pub images: usize,
    /// Sources of images that did not decode.
    pub broken: Vec<String>,
    /// Console errors, uncaught exceptions and failed loads, as the browser logged them.
    pub errors: Vec<String>,
    /// A PNG of the whole page.
    pub screenshot: Vec<u8>,
    /// The value of the extra script, if one was given.
    pub script_value: Value,
}

struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    from: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    events: Vec<Value>,
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl Browser {
    fn start(profile: &std::path::Path) -> Self {
        let (to_chrome_r, to_chrome_w) = std::io::pipe().unwrap();
        let (from_chrome_r, from_chrome_w) = std::io::pipe().unwrap();
        let (r, w) = (to_chrome_r.as_raw_fd(), from_chrome_w.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec. The pipes are
        // first moved above 10 so that placing one at 3 cannot overwrite the other.
        unsafe {
            cmd.pre_exec(move || {
                let hi_r = libc::fcntl(r, libc::F_DUPFD, 10);
                let hi_w = libc::fcntl(w, libc::F_DUPFD, 10);
                if hi_r < 0 || hi_w < 0 || libc::dup2(hi_r, 3) < 0 || libc::dup2(hi_w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("start chromium (scripts/setup.sh installs Debian's chromium)");
        drop((to_chrome_r, from_chrome_w));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from_chrome_r);
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).unwrap_or(0) > 0 {
                buf.pop();
                if let Ok(v) = serde_json::from_slice(&buf) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        Self {
            child,
            to: to_chrome_w,
            from: rx,
            next_id: 0,
            session: None,
            events: Vec::new(),
        }
    }

    fn next(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        self.from
            .recv_timeout(left)
            .expect("chromium answered in time")
    }

    /// Sends a command (to the attached page, once there is one) and waits for its
    /// result, keeping the events that arrive meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.next(deadline);
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    fn wait_for(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == method) {
            return;
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.next(deadline);
            let hit = v["method"] == method;
            self.events.push(v);
            if hit {
                return;
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `url` in headless Chromium, waits for it to load, checks every image and
/// collects errors; then runs `script` (an expression, may be async) and captures the
/// whole page.
pub fn check_page(url: &str, script: Option<&str>) -> PageCheck {
    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::start(profile.path());
    let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
    let attached = b.call(
        "Target.attachToTarget",
        json!({ "targetId": target["targetId"], "flatten": true }),
    );
    b.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    for domain in ["Page", "Runtime", "Log"] {
        b.call(&format!("{domain}.enable"), json!({}));
    }
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
    );
    b.call("Page.navigate", json!({ "url": url }));
    b.wait_for("Page.loadEventFired");
    // Lazy images load as they come into view: ask for all of them, then wait.
    let images = b.call(
        "Runtime.evaluate",
        json!({
            "expression": "(async () => { const imgs = [...document.images]; \
                imgs.forEach(i => i.loading = 'eager'); \
                const r = await Promise.allSettled(imgs.map(i => i.decode())); \
                return { n: imgs.length, broken: imgs.filter((i, k) => \
                    r[k].status !== 'fulfilled' || i.naturalWidth === 0).map(i => i.src) }; })()",
            "awaitPromise": true,
            "returnByValue": true,
        }),
    );
    let images = &images["result"]["value"];
    let script_value = script.map_or(Value::Null, |s| {
        let r = b.call(
            "Runtime.evaluate",
            json!({ "expression": s, "awaitPromise": true, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "script threw: {r}");
        r["result"]["value"].clone()
    });
    let size = &b.call("Page.getLayoutMetrics", json!({}))["cssContentSize"];
    let shot = b.call(
        "Page.captureScreenshot",
        json!({
            "format": "png",
            "captureBeyondViewport": true,
            "clip": { "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 },
        }),
    );
    let screenshot = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let errors = b
        .events
        .iter()
        .filter_map(|e| {
            let p = &e["params"];
            match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(p["exceptionDetails"].to_string()),
                "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "assert" => {
                    Some(p["args"].to_string())
                }
                "Log.entryAdded" if p["entry"]["level"] == "error" => Some(p["entry"].to_string()),
                _ => None,
            }
        })
        .collect();
    PageCheck {
        images: images["n"].as_u64().unwrap() as usize,
        broken: images["broken"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect(),
        errors,
        screenshot,
        script_value,
    }
}
