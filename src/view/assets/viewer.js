"use strict";
// The histomap slide viewer: pans and zooms a slide served by `histomap view` as a
// pyramid of 256 px JPEG tiles (level k: 2^k level-0 pixels per tile pixel), with the
// class map drawn over it from map.bin (per grid cell: a state byte, then each
// class's probability × 255). Coordinates are level-0 pixels throughout; `scale` is
// screen pixels per level-0 pixel. Nothing is loaded from outside the server.
(() => {
  const CELL_CLASSIFIED = 1, CELL_UNREADABLE = 2;
  const MAX_TILES = 800, MAX_SCALE = 8;
  const name = decodeURIComponent(location.pathname.replace(/^\/\.view\//, "").replace(/\/$/, ""));
  const base = "/.view/" + encodeURIComponent(name);
  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const $ = (id) => document.getElementById(id);

  let info = null, cells = null, stride = 0, mapCanvas = null;
  let view = { cx: 0, cy: 0, scale: 1 };
  const tiles = new Map(); // "k/c/r" → { img, done, ok }
  const stats = { requested: 0, loaded: 0, failed: 0 };
  let idleWaiters = [];

  const screenW = () => canvas.width, screenH = () => canvas.height;
  const toScreen = (x, y) => [(x - view.cx) * view.scale + screenW() / 2, (y - view.cy) * view.scale + screenH() / 2];
  const toSlide = (sx, sy) => [(sx - screenW() / 2) / view.scale + view.cx, (sy - screenH() / 2) / view.scale + view.cy];
  const fitScale = () => Math.min(screenW() / info.size.w, screenH() / info.size.h);
  const level = () => Math.max(0, Math.min(info.top_level, Math.floor(Math.log2(1 / view.scale) + 1e-9)));

  function tile(k, c, r) {
    const key = `${k}/${c}/${r}`;
    let t = tiles.get(key);
    if (t) { tiles.delete(key); tiles.set(key, t); return t; } // most recent last
    t = { img: new Image(), done: false, ok: false };
    t.img.onload = () => { t.done = t.ok = true; stats.loaded++; redraw(); };
    t.img.onerror = () => { t.done = true; stats.failed++; redraw(); };
    t.img.src = `${base}/tiles/${k}/${c}_${r}.jpg`;
    stats.requested++;
    tiles.set(key, t);
    for (const [old, o] of tiles) { // the oldest finished tiles go first
      if (tiles.size <= MAX_TILES) break;
      if (o.done) tiles.delete(old);
    }
    return t;
  }

  // Tiles of level k over the visible part of the slide.
  function visible(k) {
    const span = info.tile * 2 ** k;
    const [x0, y0] = toSlide(0, 0), [x1, y1] = toSlide(screenW(), screenH());
    const out = [];
    const cMax = Math.ceil(info.size.w / span) - 1, rMax = Math.ceil(info.size.h / span) - 1;
    for (let r = Math.max(0, Math.floor(y0 / span)); r <= Math.min(rMax, Math.floor(y1 / span)); r++)
      for (let c = Math.max(0, Math.floor(x0 / span)); c <= Math.min(cMax, Math.floor(x1 / span)); c++)
        out.push([c, r]);
    return out;
  }

  function drawTile(k, c, r, t) {
    const span = info.tile * 2 ** k;
    const [sx, sy] = toScreen(c * span, r * span);
    const w = Math.min(span, info.size.w - c * span), h = Math.min(span, info.size.h - r * span);
    ctx.drawImage(t.img, sx, sy, w * view.scale, h * view.scale);
  }

  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(draw);
    // A page in a background tab gets no animation frames, and tests wait on draws.
    setTimeout(draw, 100);
  }

  function draw() {
    if (!pending) return;
    pending = false;
    if (!info) return;
    ctx.fillStyle = "#f2f2f2";
    ctx.fillRect(0, 0, screenW(), screenH());
    ctx.imageSmoothingEnabled = true;
    const k = level();
    // Coarser levels first, where already loaded, so a region never shows blank
    // while its sharper tiles arrive.
    for (let j = info.top_level; j > k; j--)
      for (const [c, r] of visible(j)) {
        const t = tiles.get(`${j}/${c}/${r}`);
        if (t && t.ok) drawTile(j, c, r, t);
      }
    tile(info.top_level, 0, 0);
    let waiting = 0;
    for (const [c, r] of visible(k)) {
      const t = tile(k, c, r);
      if (t.ok) drawTile(k, c, r, t);
      if (!t.done) waiting++;
    }
    if (mapCanvas && $("show-map").checked) {
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = $("opacity").value / 100;
      const g = info.grid, o = info.core_offset;
      const [sx, sy] = toScreen(o, o);
      ctx.drawImage(mapCanvas, sx, sy, g.cols * g.stride * view.scale, g.rows * g.stride * view.scale);
      ctx.globalAlpha = 1;
    }
    scaleBar();
    remember();
    if (waiting === 0) { const w = idleWaiters; idleWaiters = []; w.forEach((f) => f()); }
  }

  function scaleBar() {
    const bar = $("scalebar");
    if (!info.mpp) { bar.hidden = true; return; }
    const umPerPx = info.mpp / view.scale;
    const nice = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];
    const um = nice.find((n) => n / umPerPx >= 60) || nice[nice.length - 1];
    bar.querySelector("span").textContent = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
    bar.querySelector("b").style.width = `${Math.round(um / umPerPx)}px`;
  }

  // The map layer at one pixel per grid cell, for the chosen layer.
  function buildMap() {
    const g = info.grid, n = g.cols * g.rows;
    mapCanvas = document.createElement("canvas");
    mapCanvas.width = g.cols; mapCanvas.height = g.rows;
    const mctx = mapCanvas.getContext("2d");
    const img = mctx.createImageData(g.cols, g.rows);
    const layer = $("layer").value;
    const rgb = info.classes.map((c) => [1, 3, 5].map((i) => parseInt(c.color.slice(i, i + 2), 16)));
    for (let i = 0; i < n; i++) {
      const at = i * stride, state = cells[at];
      let px = null, a = 255;
      if (state === CELL_UNREADABLE) px = [128, 128, 128];
      else if (state === CELL_CLASSIFIED && layer === "classes") px = rgb[argmax(at)];
      else if (state === CELL_CLASSIFIED) { const k = +layer; px = rgb[k]; a = cells[at + 1 + k]; }
      if (px) img.data.set([px[0], px[1], px[2], a], i * 4);
    }
    mctx.putImageData(img, 0, 0);
    document.querySelectorAll("#legend li").forEach((li) =>
      li.classList.toggle("on", layer !== "classes" && li.dataset.k === layer));
    redraw();
  }

  function argmax(at) {
    let best = 0;
    for (let k = 1; k < info.classes.length; k++) if (cells[at + 1 + k] > cells[at + 1 + best]) best = k;
    return best;
  }

  // What lies under a level-0 point: the grid cell, its class and probabilities, and
  // the colour of the slide's tile there at the level now shown.
  function probe(x, y) {
    const g = info.grid, o = info.core_offset;
    const col = Math.floor((x - o) / g.stride), row = Math.floor((y - o) / g.stride);
    const out = { x, y, cell: null, state: "outside", cls: null, probs: null, rgb: null };
    if (col >= 0 && row >= 0 && col < g.cols && row < g.rows) {
      const at = (row * g.cols + col) * stride;
      out.cell = { col, row };
      out.state = ["glass", "classified", "unreadable"][cells[at]];
      if (cells[at] === CELL_CLASSIFIED) {
        out.probs = info.classes.map((c, k) => cells[at + 1 + k] / 255);
        out.cls = info.classes[argmax(at)].name;
      }
    }
    const k = level(), span = info.tile * 2 ** k;
    const t = tiles.get(`${k}/${Math.floor(x / span)}/${Math.floor(y / span)}`);
    if (t && t.ok) {
      const p = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
      p.drawImage(t.img, Math.floor((x % span) / 2 ** k), Math.floor((y % span) / 2 ** k), 1, 1, 0, 0, 1, 1);
      out.rgb = Array.from(p.getImageData(0, 0, 1, 1).data.slice(0, 3));
    }
    return out;
  }

  function readout(x, y) {
    const p = probe(x, y), el = $("readout");
    const um = info.mpp ? ` · ${(x * info.mpp / 1000).toFixed(3)}, ${(y * info.mpp / 1000).toFixed(3)} mm` : "";
    let html = `<div>x ${Math.round(x)}, y ${Math.round(y)}${um}</div>`;
    if (p.cls) {
      const ranked = p.probs.map((v, k) => [v, k]).sort((a, b) => b[0] - a[0]).slice(0, 4);
      html += `<div class="cls">${esc(p.cls)}</div>` + ranked.map(([v, k]) =>
        `<div>${esc(info.classes[k].name)} ${(100 * v).toFixed(1)} %</div>`).join("");
    } else if (p.cell) html += `<div>${p.state === "unreadable" ? "unreadable patch" : "not classified (glass or too little tissue)"}</div>`;
    el.innerHTML = html;
  }

  const esc = (s) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  function setView(cx, cy, scale) {
    const min = fitScale() / 2;
    view.scale = Math.max(min, Math.min(MAX_SCALE, scale));
    view.cx = Math.max(0, Math.min(info.size.w, cx));
    view.cy = Math.max(0, Math.min(info.size.h, cy));
    redraw();
  }
  const fit = () => setView(info.size.w / 2, info.size.h / 2, fitScale());

  let rememberTimer = 0;
  function remember() {
    clearTimeout(rememberTimer);
    rememberTimer = setTimeout(() => history.replaceState(null, "",
      `#x=${Math.round(view.cx)}&y=${Math.round(view.cy)}&s=${view.scale.toPrecision(4)}`), 300);
  }

  function zoomAt(sx, sy, factor) {
    const [x, y] = toSlide(sx, sy);
    const s = Math.max(fitScale() / 2, Math.min(MAX_SCALE, view.scale * factor));
    setView(x - (sx - screenW() / 2) / s, y - (sy - screenH() / 2) / s, s);
  }

  function resize() {
    canvas.width = canvas.clientWidth;
    canvas.height = canvas.clientHeight;
    redraw();
  }

  function listen() {
    window.addEventListener("resize", resize);
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      zoomAt(e.offsetX, e.offsetY, Math.exp(-e.deltaY * 0.0015));
    }, { passive: false });
    let drag = null;
    canvas.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, cx: view.cx, cy: view.cy };
      canvas.setPointerCapture(e.pointerId);
      canvas.classList.add("dragging");
    });
    canvas.addEventListener("pointermove", (e) => {
      if (drag) setView(drag.cx - (e.clientX - drag.x) / view.scale, drag.cy - (e.clientY - drag.y) / view.scale, view.scale);
      readout(...toSlide(e.offsetX, e.offsetY));
    });
    canvas.addEventListener("pointerup", () => { drag = null; canvas.classList.remove("dragging"); });
    canvas.addEventListener("dblclick", (e) => zoomAt(e.offsetX, e.offsetY, 2));
    window.addEventListener("keydown", (e) => {
      if (e.target.tagName === "SELECT" || e.target.tagName === "INPUT") return;
      if (e.key === "0") fit();
      else if (e.key === "1") setView(view.cx, view.cy, 1);
      else if (e.key === "+" || e.key === "=") zoomAt(screenW() / 2, screenH() / 2, 2);
      else if (e.key === "-") zoomAt(screenW() / 2, screenH() / 2, 0.5);
      else if (e.key === "m") { $("show-map").checked = !$("show-map").checked; redraw(); }
    });
    $("show-map").addEventListener("change", redraw);
    $("opacity").addEventListener("input", redraw);
    $("layer").addEventListener("change", buildMap);
  }

  function panel() {
    document.title = `${name} · histomap`;
    $("title").textContent = name;
    $("files").href = "/" + encodeURIComponent(name) + "/summary.json";
    const mpp = info.mpp ? ` · ${info.mpp.toFixed(3)} µm/px` : "";
    $("facts").textContent = `${info.size.w.toLocaleString()} × ${info.size.h.toLocaleString()} px${mpp} · ` +
      `${info.grid.cols} × ${info.grid.rows} cells of ${info.grid.stride} px`;
    const legend = $("legend"), layer = $("layer");
    info.classes.forEach((c, k) => {
      const li = document.createElement("li");
      li.dataset.k = String(k);
      li.innerHTML = `<i style="background:${esc(c.color)}"></i>${esc(c.name)}`;
      li.title = `show the probability of ${c.name}`;
      li.addEventListener("click", () => { layer.value = layer.value === String(k) ? "classes" : String(k); buildMap(); });
      legend.append(li);
      const o = document.createElement("option");
      o.value = String(k);
      o.textContent = `probability of ${c.name}`;
      layer.append(o);
    });
  }

  async function start() {
    const [i, m] = await Promise.all([fetch(`${base}/info.json`), fetch(`${base}/map.bin`)]);
    if (!i.ok) throw new Error(`${base}/info.json: ${i.status} ${await i.text()}`);
    if (!m.ok) throw new Error(`${base}/map.bin: ${m.status} ${await m.text()}`);
    info = await i.json();
    cells = new Uint8Array(await m.arrayBuffer());
    stride = info.classes.length + 1;
    panel();
    listen();
    resize();
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.has("x") && h.has("y") && h.has("s")) setView(+h.get("x"), +h.get("y"), +h.get("s"));
    else fit();
    buildMap();
  }

  const ready = start();
  ready.catch((e) => { $("readout").textContent = String(e); console.error(e); });

  // For scripts and tests: where to look, and what is there.
  window.histomapViewer = {
    ready,
    stats,
    get info() { return info; },
    get view() { return { ...view, level: level() }; },
    // Moves the view and resolves once every visible tile of the level shown has
    // loaded or failed.
    goTo(x, y, scale) {
      return new Promise((resolve) => { idleWaiters.push(resolve); setView(x, y, scale); });
    },
    probe,
  };
})();
