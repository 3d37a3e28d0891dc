//! PNG outputs. `overlay.png`: the slide thumbnail with each tissue cell tinted by its
//! winning class, more strongly the more confident, and a legend; background stays
//! clear. `prob_<class>.png`: one grey+alpha map per class, one pixel per grid cell
//! scaled up by a whole factor (the same for every class, recorded in the summary),
//! transparent where there is no tissue.

use std::path::Path;

use image::{GrayAlphaImage, LumaA, Rgb, RgbImage};

use super::{Sink, SlideResult};
use crate::error::Result;
use crate::map::heatmap::argmax;
use crate::sink::draw::{draw_text, save};

pub struct Overlay;
pub struct ClassMaps;

pub const OVERLAY: &str = "overlay.png";
/// Class maps are scaled up to about this many pixels on their longer side.
const MAP_TARGET_SIDE: u32 = 1024;
/// Tint opacity at full confidence.
const MAX_ALPHA: f32 = 0.6;

/// The whole-number scale from grid cells to class-map pixels.
pub fn map_scale(cols: u32, rows: u32) -> u32 {
    (MAP_TARGET_SIDE / cols.max(rows).max(1)).max(1)
}

impl Sink for Overlay {
    fn write(&self, r: &SlideResult, dir: &Path) -> Result<Vec<String>> {
        let thumb = &r.thumbnail.image;
        let ds = r.thumbnail.downsample;
        let mut img = thumb.clone();
        for (x, y, px) in img.enumerate_pixels_mut() {
            let (lx, ly) = ((f64::from(x) + 0.5) * ds, (f64::from(y) + 0.5) * ds);
            let Some(cell) = r.plan.grid.cell_at(lx, ly) else {
                continue;
            };
            let Some(p) = r.heatmap.get(cell) else {
                continue;
            };
            let (k, conf) = argmax(p);
            let a = MAX_ALPHA * conf;
            let color = r.classes[k].color;
            for c in 0..3 {
                px[c] = (f32::from(px[c]) * (1.0 - a) + f32::from(color[c]) * a).round() as u8;
            }
        }
        let out = with_legend(&img, r);
        save(out, &dir.join(OVERLAY))?;
        Ok(vec![OVERLAY.into()])
    }
}

impl Sink for ClassMaps {
    fn write(&self, r: &SlideResult, dir: &Path) -> Result<Vec<String>> {
        let h = r.heatmap;
        let k = map_scale(h.cols, h.rows);
        let mut names = Vec::new();
        for (ci, class) in r.classes.iter().enumerate() {
            let img = GrayAlphaImage::from_fn(h.cols * k, h.rows * k, |x, y| {
                let cell = crate::map::geom::Cell {
                    col: x / k,
                    row: y / k,
                };
                match h.get(cell) {
                    Some(p) => LumaA([(p[ci] * 255.0).round() as u8, 255]),
                    None => LumaA([0, 0]),
                }
            });
            let name = format!("prob_{}.png", class.file_stem());
            save(img, &dir.join(&name))?;
            names.push(name);
        }
        Ok(names)
    }
}

const GLYPH: u32 = 8;
const SCALE: u32 = 2;
const PAD: u32 = 12;
const LINE: u32 = GLYPH * SCALE + 8;

/// The overlay with a white legend panel on its right: a swatch and name per class,
/// then the caption.
fn with_legend(img: &RgbImage, r: &SlideResult) -> RgbImage {
    let text_w = |s: &str| s.chars().count() as u32 * GLYPH * SCALE;
    let swatch = GLYPH * SCALE;
    let names_w = r
        .classes
        .iter()
        .map(|c| swatch + 8 + text_w(&c.name))
        .max()
        .unwrap_or(0);
    let caption_lines: Vec<&str> = r.caption.lines().collect();
    let caption_w = caption_lines
        .iter()
        .map(|l| text_w(l) / SCALE)
        .max()
        .unwrap_or(0);
    let panel_w = names_w.max(caption_w) + 2 * PAD;
    let panel_h =
        PAD * 2 + LINE * r.classes.len() as u32 + (GLYPH + 4) * caption_lines.len() as u32 + PAD;
    let (w, h) = (img.width() + panel_w, img.height().max(panel_h));
    let mut out = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, img, 0, 0);
    let x0 = img.width() + PAD;
    let mut y = PAD;
    for class in r.classes {
        for dy in 0..swatch {
            for dx in 0..swatch {
                out.put_pixel(x0 + dx, y + dy, Rgb(class.color));
            }
        }
        draw_text(&mut out, &class.name, x0 + swatch + 8, y, SCALE);
        y += LINE;
    }
    y += PAD;
    for line in caption_lines {
        draw_text(&mut out, line, x0, y, 1);
        y += GLYPH + 4;
    }
    out
}
