"use strict";
// The histomap slide viewer: OpenSeadragon showing the slide as Deep Zoom
// (/.view/<slide>.dzi) and the class map as a second Deep Zoom image
// (/.view/<slide>/map/<layer>.dzi) laid over the patch grid; map.bin (per grid cell: a
// state byte, then each class's probability × 255) gives the probabilities under the
// cursor. Coordinates in this script are level-0 pixels and `scale` is screen pixels
// per level-0 pixel; OpenSeadragon's viewport measures in slide widths. Nothing is
// loaded from outside the server.
(() => {
  const CELL_CLASSIFIED = 1;
  const MAX_SCALE = 8;
  const name = decodeURIComponent(location.pathname.replace(/^\/\.view\//, "").replace(/\/$/, ""));
  const base = "/.view/" + encodeURIComponent(name);
  const $ = (id) => document.getElementById(id);

  let info = null, cells = null, stride = 0, viewer = null, slide = null, map = null;
  // Tiles of the slide image loaded and failed; the map layer's are not counted.
  const stats = { loaded: 0, failed: 0 };

  const scale = () => slide.viewportToImageZoom(viewer.viewport.getZoom(true));
  const center = () => slide.viewportToImageCoordinates(viewer.viewport.getCenter(true));

  // Puts the view on level-0 point (x, y) at `s` screen pixels per slide pixel.
  function setView(x, y, s, now) {
    const vp = viewer.viewport;
    vp.zoomTo(slide.imageToViewportZoom(Math.min(MAX_SCALE, s)), null, now);
    vp.panTo(slide.imageToViewportCoordinates(x, y), now);
  }

  // The map layer, replacing the one shown; placed over the grid's cell cores.
  function showMap() {
    const g = info.grid, w = info.size.w, old = map;
    viewer.addTiledImage({
      tileSource: `${base}/map/${$("layer").value}.dzi`,
      x: info.core_offset / w,
      y: info.core_offset / w,
      width: (g.cols * g.stride) / w,
      opacity: mapOpacity(),
      success: (e) => {
        map = e.item;
        if (old) viewer.world.removeItem(old);
      },
    });
    document.querySelectorAll("#legend li").forEach((li) =>
      li.classList.toggle("on", $("layer").value !== "classes" && li.dataset.k === $("layer").value));
  }

  const mapOpacity = () => ($("show-map").checked ? $("opacity").value / 100 : 0);

  function scaleBar() {
    const bar = $("scalebar");
    if (!info.mpp) { bar.hidden = true; return; }
    const umPerPx = info.mpp / scale();
    const nice = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];
    const um = nice.find((n) => n / umPerPx >= 60) || nice[nice.length - 1];
    bar.querySelector("span").textContent = um >= 1000 ? `${um / 1000} mm` : `${um} µm`;
    bar.querySelector("b").style.width = `${Math.round(um / umPerPx)}px`;
  }

  function argmax(at) {
    let best = 0;
    for (let k = 1; k < info.classes.length; k++) if (cells[at + 1 + k] > cells[at + 1 + best]) best = k;
    return best;
  }

  // The grid cell under a level-0 point, its class and probabilities.
  function cellAt(x, y) {
    const g = info.grid, o = info.core_offset;
    const col = Math.floor((x - o) / g.stride), row = Math.floor((y - o) / g.stride);
    const out = { x, y, cell: null, state: "outside", cls: null, probs: null };
    if (col >= 0 && row >= 0 && col < g.cols && row < g.rows) {
      const at = (row * g.cols + col) * stride;
      out.cell = { col, row };
      out.state = ["glass", "classified", "unreadable"][cells[at]];
      if (cells[at] === CELL_CLASSIFIED) {
        out.probs = info.classes.map((c, k) => cells[at + 1 + k] / 255);
        out.cls = info.classes[argmax(at)].name;
      }
    }
    return out;
  }

  // What lies under a level-0 point: its cell, and the colour of the slide's tile
  // there at the resolution now shown (the tile as the server sent it).
  async function probe(x, y) {
    const out = cellAt(x, y);
    const src = slide.source, k = Math.max(0, Math.floor(Math.log2(1 / scale()) + 1e-9));
    const level = Math.max(0, src.maxLevel - k), span = src.getTileWidth(level) * 2 ** k;
    const img = new Image();
    img.src = `${base}_files/${level}/${Math.floor(x / span)}_${Math.floor(y / span)}.jpg`;
    try {
      await img.decode();
      const p = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
      p.drawImage(img, Math.floor((x % span) / 2 ** k), Math.floor((y % span) / 2 ** k), 1, 1, 0, 0, 1, 1);
      out.rgb = Array.from(p.getImageData(0, 0, 1, 1).data.slice(0, 3));
    } catch { out.rgb = null; }
    return out;
  }

  function readout(x, y) {
    const p = cellAt(x, y), el = $("readout");
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

  // The address keeps the view, for sharing: #x=…&y=…&s=….
  function remember() {
    const [c, s] = [center(), scale()];
    history.replaceState(null, "", `#x=${Math.round(c.x)}&y=${Math.round(c.y)}&s=${s.toPrecision(4)}`);
  }

  function panel() {
    document.title = `${name} · histomap`;
    $("title").textContent = name;
    $("files").href = "/" + encodeURIComponent(name) + "/summary.json";
    $("dzi").href = `${base}.dzi`;
    const mpp = info.mpp ? ` · ${info.mpp.toFixed(3)} µm/px` : "";
    $("facts").textContent = `${info.size.w.toLocaleString()} × ${info.size.h.toLocaleString()} px${mpp} · ` +
      `${info.grid.cols} × ${info.grid.rows} cells of ${info.grid.stride} px`;
    const legend = $("legend"), layer = $("layer");
    info.classes.forEach((c, k) => {
      const li = document.createElement("li");
      li.dataset.k = String(k);
      li.innerHTML = `<i style="background:${esc(c.color)}"></i>${esc(c.name)}`;
      li.title = `show the probability of ${c.name}`;
      li.addEventListener("click", () => { layer.value = layer.value === String(k) ? "classes" : String(k); showMap(); });
      legend.append(li);
      const o = document.createElement("option");
      o.value = String(k);
      o.textContent = `probability of ${c.name}`;
      layer.append(o);
    });
  }

  function listen() {
    viewer.addHandler("tile-loaded", (e) => { if (e.tiledImage === slide) stats.loaded++; });
    viewer.addHandler("tile-load-failed", (e) => {
      if (e.tiledImage === slide) stats.failed++;
      console.error(`tile failed: ${e.message}`);
    });
    viewer.addHandler("animation", scaleBar);
    viewer.addHandler("animation-finish", () => { scaleBar(); remember(); });
    viewer.canvas.addEventListener("pointermove", (e) => {
      const r = viewer.canvas.getBoundingClientRect();
      const p = slide.viewerElementToImageCoordinates(new OpenSeadragon.Point(e.clientX - r.left, e.clientY - r.top));
      readout(p.x, p.y);
    });
    viewer.addHandler("canvas-key", (e) => {
      const key = e.originalEvent.key;
      if (key === "1") { setView(center().x, center().y, 1); e.preventDefaultAction = true; }
      if (key === "m") { $("show-map").checked = !$("show-map").checked; map?.setOpacity(mapOpacity()); }
    });
    const opacity = () => map?.setOpacity(mapOpacity());
    $("show-map").addEventListener("change", opacity);
    $("opacity").addEventListener("input", opacity);
    $("layer").addEventListener("change", showMap);
  }

  async function start() {
    const [i, m] = await Promise.all([fetch(`${base}/info.json`), fetch(`${base}/map.bin`)]);
    if (!i.ok) throw new Error(`${base}/info.json: ${i.status} ${await i.text()}`);
    if (!m.ok) throw new Error(`${base}/map.bin: ${m.status} ${await m.text()}`);
    info = await i.json();
    cells = new Uint8Array(await m.arrayBuffer());
    stride = info.classes.length + 1;
    panel();
    viewer = OpenSeadragon({
      element: $("view"),
      prefixUrl: "/.assets/openseadragon/images/",
      tileSources: `${base}.dzi`,
      // Canvas, not WebGL: every browser has it, and the probe reads its tiles.
      drawer: "canvas",
      showNavigator: true,
      maxZoomPixelRatio: MAX_SCALE,
      visibilityRatio: 0.2,
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true },
    });
    await new Promise((resolve, reject) => {
      viewer.addOnceHandler("open", resolve);
      viewer.addOnceHandler("open-failed", (e) => reject(new Error(`${base}.dzi: ${e.message}`)));
    });
    slide = viewer.world.getItemAt(0);
    listen();
    showMap();
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.has("x") && h.has("y") && h.has("s")) setView(+h.get("x"), +h.get("y"), +h.get("s"), true);
    scaleBar();
    $("view").querySelector(".openseadragon-canvas")?.focus();
  }

  const ready = start();
  ready.catch((e) => { $("readout").textContent = String(e); console.error(e); });

  // For scripts and tests: where to look, and what is there.
  window.histomapViewer = {
    ready,
    stats,
    get info() { return info; },
    get view() { const c = center(); return { cx: c.x, cy: c.y, scale: scale() }; },
    // Moves the view at once and resolves when every tile it needs, of the slide
    // and the map, has loaded or failed.
    goTo(x, y, s) {
      return new Promise((resolve) => {
        viewer.addOnceHandler("update-viewport", () => viewer.whenFullyLoaded(resolve));
        setView(x, y, s, true);
        viewer.forceRedraw();
      });
    },
    probe,
  };
})();
