//! The cohort report. In: an OUT folder of finished slides (their `summary.json` and
//! `overlay.png`) and the [`ledger`](crate::cohort::ledger) of failures and locks. Out:
//! `OUT/cohort.csv`, one row per slide, and `OUT/index.html`, a static page that opens
//! from disk in any browser with no server and no network: per slide a thumbnail of
//! its overlay, class-area bars and links to its files, a sortable table, and the
//! failed slides with their errors. Thumbnails go to `OUT/.histomap/thumbs/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Deserialize;

use crate::cohort::ledger::{read_summary, Ledger, SlideState};
use crate::error::{Error, Result};
use crate::output::write_atomic;

/// Longer side of the report's thumbnails, in pixels.
const THUMB_SIDE: u32 = 360;
const GREY: &str = "#9e9e9e";
/// The report's files in OUT, names no slide folder may take.
pub const COHORT_CSV: &str = "cohort.csv";
pub const INDEX_HTML: &str = "index.html";

/// What the report reads of a `summary.json`; unknown fields are ignored, so summaries
/// of other histomap versions still load.
#[derive(Debug, Deserialize)]
struct SummaryView {
    slide: SlideView,
    pipeline: NameView,
    model: ModelView,
    /// Absent in summaries written before jobs were recorded.
    #[serde(default)]
    job: Option<JobView>,
    tissue: TissueView,
    patches: PatchView,
    classes: Vec<ClassView>,
    timings: TimingView,
    #[serde(default)]
    outputs: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SlideView {
    path: PathBuf,
    format: String,
    size: SizeView,
    mpp: Option<f64>,
    objective_power: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct SizeView {
    w: u64,
    h: u64,
}

#[derive(Debug, Deserialize)]
struct NameView {
    name: String,
}

#[derive(Debug, Deserialize)]
struct ModelView {
    architecture: serde_json::Value,
    trained: bool,
    /// The model folder as given (`job.model` is absolute): two models of one
    /// architecture differ here.
    #[serde(default)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct JobView {
    model: PathBuf,
    /// The `--slide-mpp` the run assumed, for a slide that records none.
    #[serde(default)]
    slide_mpp: Option<f64>,
}

impl SummaryView {
    /// The slide's microns per pixel: its own, else the `--slide-mpp` its run assumed.
    fn mpp(&self) -> Option<f64> {
        (self.slide.mpp).or(self.job.as_ref().and_then(|j| j.slide_mpp))
    }
}

#[derive(Debug, Deserialize)]
struct TissueView {
    area_mm2: f64,
}

#[derive(Debug, Deserialize)]
struct PatchView {
    grid: u64,
    classified: u64,
    background: u64,
    /// Absent in summaries written before unreadable patches were counted.
    #[serde(default)]
    unreadable: u64,
}

#[derive(Debug, Deserialize)]
struct ClassView {
    name: String,
    #[serde(default)]
    color: Option<String>,
    area_mm2: f64,
    fraction_of_tissue: f64,
    mean_probability: f64,
}

#[derive(Debug, Deserialize)]
struct TimingView {
    total_s: f64,
    patches_per_s: f64,
}

/// One slide of the cohort, whatever its state.
struct Row {
    name: String,
    path: Option<PathBuf>,
    status: &'static str,
    summary: Option<SummaryView>,
    /// The error of a failed slide, or who holds a running one.
    detail: String,
    thumb: Option<String>,
}

/// What [`write`] made.
#[derive(Debug)]
pub struct ReportFiles {
    pub csv: PathBuf,
    pub html: PathBuf,
    pub done: usize,
    pub failed: usize,
    pub running: usize,
    pub missing: usize,
}

/// Writes `cohort.csv` and `index.html` for the slides of `out`.
pub fn write(out: &Path) -> Result<ReportFiles> {
    let ledger = Ledger::of_run(out)?;
    let mut rows = collect(&ledger)?;
    let thumbs = out.join(crate::cohort::ledger::DIR).join("thumbs");
    std::fs::create_dir_all(&thumbs).map_err(|e| Error::io(&thumbs, e))?;
    rows.par_iter_mut().try_for_each(|r| -> Result<()> {
        if r.summary.is_some() {
            r.thumb = thumbnail(out, &r.name, &thumbs)?;
        }
        Ok(())
    })?;
    let classes = class_union(&rows);
    let csv_path = out.join(COHORT_CSV);
    write_atomic(&csv_path, &cohort_csv(&rows, &classes)?)?;
    let html_path = out.join(INDEX_HTML);
    write_atomic(&html_path, index_html(&rows, &classes).as_bytes())?;
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    Ok(ReportFiles {
        csv: csv_path,
        html: html_path,
        done: count("done"),
        failed: count("failed"),
        running: count("running"),
        missing: count("missing"),
    })
}

/// Every slide of the ledger, with the summary of those that are done.
fn collect(ledger: &Ledger) -> Result<Vec<Row>> {
    ledger
        .survey()?
        .into_iter()
        .map(|(name, path, state)| {
            let mut status = state.word();
            let (summary, detail) = match state {
                // A damaged summary fails its slide's row, not the report.
                SlideState::Done => match read_summary::<SummaryView>(&ledger.out().join(&name)) {
                    Ok(s) => (Some(s), String::new()),
                    Err(e) => {
                        status = "failed";
                        (None, e)
                    }
                },
                SlideState::Running { worker } => {
                    (None, worker.map_or(String::new(), |w| w.to_string()))
                }
                SlideState::Failed(f) => (None, f.error),
                SlideState::Unreadable { error } => (None, error),
                SlideState::Missing => (None, String::new()),
            };
            let path = summary.as_ref().map(|s| s.slide.path.clone()).or(path);
            Ok(Row {
                name,
                path,
                status,
                summary,
                detail,
                thumb: None,
            })
        })
        .collect()
}

/// A small copy of the slide's overlay, remade when the overlay is newer. Returns its
/// path relative to OUT.
fn thumbnail(out: &Path, name: &str, thumbs: &Path) -> Result<Option<String>> {
    let overlay = out.join(name).join("overlay.png");
    if !overlay.is_file() {
        return Ok(None);
    }
    let thumb = thumbs.join(format!("{name}.png"));
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if mtime(&thumb) < mtime(&overlay) {
        let img = image::open(&overlay).map_err(|e| Error::output(&overlay, e))?;
        let small = img.thumbnail(THUMB_SIDE, THUMB_SIDE);
        let mut png = Vec::new();
        small
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::output(&thumb, e))?;
        write_atomic(&thumb, &png)?;
    }
    Ok(Some(format!(
        "{}/thumbs/{name}.png",
        crate::cohort::ledger::DIR
    )))
}

/// Class names and colours in order of first appearance over the cohort.
fn class_union(rows: &[Row]) -> Vec<(String, String)> {
    let mut classes: Vec<(String, String)> = Vec::new();
    for c in rows
        .iter()
        .filter_map(|r| r.summary.as_ref())
        .flat_map(|s| &s.classes)
    {
        if !classes.iter().any(|(n, _)| *n == c.name) {
            let color = c.color.clone().unwrap_or_else(|| GREY.into());
            classes.push((c.name.clone(), color));
        }
    }
    classes
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v}"))
}

fn cohort_csv(rows: &[Row], classes: &[(String, String)]) -> Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "slide",
        "status",
        "path",
        "format",
        "width_px",
        "height_px",
        "mpp",
        "objective_power",
        "pipeline",
        "model",
        "model_dir",
        "model_trained",
        "tissue_mm2",
        "patches_grid",
        "patches_classified",
        "patches_background",
        "patches_unreadable",
    ]
    .map(String::from)
    .to_vec();
    header.extend(classes.iter().map(|(c, _)| format!("area_mm2_{c}")));
    header.extend(classes.iter().map(|(c, _)| format!("mean_prob_{c}")));
    header.extend(["total_s", "patches_per_s", "error"].map(String::from));
    let csv_err = |e: csv::Error| Error::output(COHORT_CSV, e);
    w.write_record(&header).map_err(csv_err)?;
    for r in rows {
        let mut rec = vec![
            r.name.clone(),
            r.status.into(),
            r.path
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        ];
        match &r.summary {
            Some(s) => {
                rec.extend([
                    s.slide.format.clone(),
                    s.slide.size.w.to_string(),
                    s.slide.size.h.to_string(),
                    fmt_opt(s.mpp()),
                    fmt_opt(s.slide.objective_power),
                    s.pipeline.name.clone(),
                    arch(&s.model.architecture),
                    s.job
                        .as_ref()
                        .map(|j| &j.model)
                        .or(s.model.dir.as_ref())
                        .map_or(String::new(), |d| d.display().to_string()),
                    s.model.trained.to_string(),
                    format!("{:.4}", s.tissue.area_mm2),
                    s.patches.grid.to_string(),
                    s.patches.classified.to_string(),
                    s.patches.background.to_string(),
                    s.patches.unreadable.to_string(),
                ]);
                let class = |name: &str| s.classes.iter().find(|c| c.name == name);
                for (c, _) in classes {
                    rec.push(class(c).map_or(String::new(), |c| format!("{:.4}", c.area_mm2)));
                }
                for (c, _) in classes {
                    rec.push(
                        class(c).map_or(String::new(), |c| format!("{:.4}", c.mean_probability)),
                    );
                }
                rec.push(format!("{:.3}", s.timings.total_s));
                rec.push(format!("{:.1}", s.timings.patches_per_s));
                rec.push(String::new());
            }
            None => {
                rec.resize(header.len() - 1, String::new());
                rec.push(if r.status == "failed" {
                    r.detail.clone()
                } else {
                    String::new()
                });
            }
        }
        w.write_record(&rec).map_err(csv_err)?;
    }
    w.into_inner()
        .map_err(|e| Error::output(COHORT_CSV, e.into_error()))
}

fn arch(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes a relative path for `href` and `src`, keeping its slashes.
pub(crate) fn url(path: &str) -> String {
    let mut o = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.counts span{margin-right:14px}.legend span{display:inline-block;margin-right:12px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
table{border-collapse:collapse;background:#fff}th,td{padding:4px 8px;border-bottom:1px solid #e4e4e4;text-align:left}
th{cursor:pointer;user-select:none;background:#f0f0f0;position:sticky;top:0}th:after{content:" \2195";color:#aaa}
td{white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}td.err{white-space:pre-wrap}
.scroll{overflow-x:auto;max-width:100%}
.done{color:#1b7f3b}.failed{color:#b00020;font-weight:600}.running{color:#a06000}.missing{color:#777}
.bar{display:flex;width:100%;height:12px;background:#eee;border-radius:2px;overflow:hidden}
.bar span{display:block;height:100%}
.cards{display:flex;flex-wrap:wrap;gap:16px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;width:380px}
.card img{display:block;max-width:360px;max-height:360px;margin:6px 0}
.card h3{font-size:15px;margin:0;word-break:break-all}.card .links{display:flex;flex-wrap:wrap;gap:2px 10px}
.err{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}
"#;

const SORT_JS: &str = r#"
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.dir !== "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? "asc" : "desc";
      var key = function (row) {
        var cell = row.cells[col];
        var v = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent;
        var n = parseFloat(v);
        return isNaN(n) || cell.dataset.v === undefined ? v.toLowerCase() : n;
      };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var c = x < y ? -1 : x > y ? 1 : 0;
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"#;

fn class_bar(s: &SummaryView, classes: &[(String, String)]) -> String {
    let total: f64 = s.classes.iter().map(|c| c.area_mm2).sum();
    let mut o = String::from("<div class=\"bar\">");
    for c in &s.classes {
        if c.area_mm2 <= 0.0 || total <= 0.0 {
            continue;
        }
        let color = classes
            .iter()
            .find(|(n, _)| *n == c.name)
            .map_or(GREY, |(_, col)| col.as_str());
        let _ = write!(
            o,
            "<span style=\"width:{:.3}%;background:{}\" title=\"{}: {:.3} mm² ({:.1}% of tissue)\"></span>",
            100.0 * c.area_mm2 / total,
            esc(color),
            esc(&c.name),
            c.area_mm2,
            100.0 * c.fraction_of_tissue
        );
    }
    o.push_str("</div>");
    o
}

/// The page. Long because most of it is the page's own HTML, CSS and script, kept in
/// one place so that the page reads top to bottom as the browser gets it.
fn index_html(rows: &[Row], classes: &[(String, String)]) -> String {
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>histomap cohort report</title><link rel=\"icon\" href=\"data:,\">\
         <style>{STYLE}</style></head><body>\n<h1>histomap cohort report</h1>\n\
         <p class=\"counts\"><span>{} slides</span><span class=\"done\">{} done</span>\
         <span class=\"failed\">{} failed</span><span class=\"running\">{} running</span>\
         <span class=\"missing\">{} missing</span><span>histomap {}</span> · \
         <a href=\"cohort.csv\">cohort.csv</a></p>\n",
        rows.len(),
        count("done"),
        count("failed"),
        count("running"),
        count("missing"),
        env!("CARGO_PKG_VERSION")
    );
    let untrained = rows
        .iter()
        .filter_map(|r| r.summary.as_ref())
        .any(|s| !s.model.trained);
    if untrained {
        h.push_str(
            "<p class=\"failed\">Some slides were mapped with an UNTRAINED model \
             (random weights): their maps mean nothing.</p>\n",
        );
    }
    h.push_str("<p class=\"legend\">");
    for (name, color) in classes {
        let _ = write!(
            h,
            "<span><i class=\"sw\" style=\"background:{}\"></i>{}</span>",
            esc(color),
            esc(name)
        );
    }
    h.push_str("</p>\n");

    // The table.
    h.push_str(
        "<h2>Slides</h2>\n<div class=\"scroll\"><table class=\"sortable\"><thead><tr><th>slide</th><th>status</th>\
         <th>format</th><th>size (px)</th><th>MPP</th><th>tissue mm²</th><th>patches</th>\
         <th>top class</th>",
    );
    for (name, _) in classes {
        let _ = write!(h, "<th>{} mm²</th>", esc(name));
    }
    h.push_str("<th>seconds</th></tr></thead><tbody>\n");
    for r in rows {
        let _ = write!(
            h,
            "<tr><td><a href=\"#s-{}\">{}</a></td><td class=\"{}\">{}</td>",
            esc(&url(&r.name)),
            esc(&r.name),
            r.status,
            r.status
        );
        match &r.summary {
            Some(s) => {
                let top = s
                    .classes
                    .iter()
                    .max_by(|a, b| a.area_mm2.total_cmp(&b.area_mm2))
                    .filter(|c| c.area_mm2 > 0.0)
                    .map_or(String::new(), |c| c.name.clone());
                let num =
                    |v: f64, prec: usize| format!("<td class=\"n\" data-v=\"{v}\">{v:.prec$}</td>");
                let _ = write!(
                    h,
                    "<td>{}</td><td class=\"n\" data-v=\"{}\">{} × {}</td>{}{}{}<td>{}</td>",
                    esc(&s.slide.format),
                    s.slide.size.w * s.slide.size.h,
                    s.slide.size.w,
                    s.slide.size.h,
                    s.mpp().map_or("<td></td>".into(), |m| num(m, 3)),
                    num(s.tissue.area_mm2, 2),
                    num(s.patches.classified as f64, 0),
                    esc(&top)
                );
                for (name, _) in classes {
                    let a = s.classes.iter().find(|c| c.name == *name);
                    h.push_str(&a.map_or("<td></td>".into(), |c| num(c.area_mm2, 2)));
                }
                h.push_str(&num(s.timings.total_s, 1));
            }
            None => {
                for _ in 0..6 + classes.len() + 1 {
                    h.push_str("<td></td>");
                }
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table></div>\n");

    // Failed slides.
    let failed: Vec<&Row> = rows.iter().filter(|r| r.status == "failed").collect();
    if !failed.is_empty() {
        h.push_str(
            "<h2 class=\"failed\">Failed slides</h2>\n<table class=\"sortable\"><thead><tr>\
             <th>slide</th><th>file</th><th>error</th></tr></thead><tbody>\n",
        );
        for r in failed {
            let _ = writeln!(
                h,
                "<tr id=\"s-{}\"><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                esc(&url(&r.name)),
                esc(&r.name),
                esc(&r
                    .path
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())),
                esc(&r.detail)
            );
        }
        h.push_str("</tbody></table>\n");
    }

    // One card per finished slide.
    h.push_str("<h2>Maps</h2>\n<div class=\"cards\">\n");
    for r in rows {
        let Some(s) = &r.summary else { continue };
        let dir = url(&r.name);
        let _ = write!(
            h,
            "<div class=\"card\" id=\"s-{}\"><h3>{}</h3><div>{} · {} × {} px · {}{} tissue patches{}</div>",
            esc(&dir),
            esc(&r.name),
            esc(&s.slide.format),
            s.slide.size.w,
            s.slide.size.h,
            s.mpp()
                .map_or(String::new(), |m| format!("{m:.3} µm/px · ")),
            s.patches.classified,
            match s.patches.unreadable {
                0 => String::new(),
                n => format!(" · {n} unreadable"),
            }
        );
        if let Some(t) = &r.thumb {
            let _ = write!(
                h,
                "<a href=\"{dir}/overlay.png\"><img src=\"{}\" alt=\"overlay of {}\" loading=\"lazy\"></a>",
                esc(&url(t)),
                esc(&r.name)
            );
        }
        h.push_str(&class_bar(s, classes));
        // The viewer needs its server (`histomap view OUT`), which serves this page too.
        let _ = write!(
            h,
            "<div class=\"links\"><a href=\".view/{dir}\" title=\"zoomable viewer: open this \
             page through histomap view OUT\">viewer</a>"
        );
        for f in s
            .outputs
            .iter()
            .filter(|f| f.ends_with(".geojson") || f.ends_with(".csv") || f.ends_with(".json"))
        {
            let _ = write!(h, "<a href=\"{dir}/{}\">{}</a>", esc(&url(f)), esc(f));
        }
        h.push_str("</div></div>\n");
    }
    h.push_str("</div>\n<script>");
    h.push_str(SORT_JS);
    h.push_str("</script>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_html_and_urls() {
        assert_eq!(esc("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(url("my slide#1/overlay.png"), "my%20slide%231/overlay.png");
        assert_eq!(url("é"), "%C3%A9");
    }
}
