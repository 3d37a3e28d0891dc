//! Drawing for reports: bitmap text, lines, and the three training and evaluation
//! figures (`curves.png`, `confusion.png`, `roc.png`). Hand-written because they need
//! only a few primitives and a plotting crate would bring a font stack with it.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GREY: Rgb<u8> = Rgb([200, 200, 200]);
const SERIES: [Rgb<u8>; 3] = [
    Rgb([0x43, 0x63, 0xd8]),
    Rgb([0xe6, 0x19, 0x4b]),
    Rgb([0x3c, 0xb4, 0x4b]),
];

/// Draws ASCII text in black with the public-domain 8×8 bitmap font.
pub fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for sy in 0..scale {
                    for sx in 0..scale {
                        let px = x + (i as u32 * 8 + col) * scale + sx;
                        let py = y + row as u32 * scale + sy;
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, BLACK);
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), color: Rgb<u8>) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=steps {
        let t = i as f64 / steps as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)] {
            let (px, py) = ((x + dx) as i64, (y + dy) as i64);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, color);
            }
        }
    }
}

/// A line chart of named series over x = 1..=n, with the y range and a legend.
pub fn chart(title: &str, series: &[(&str, Vec<f64>)]) -> RgbImage {
    let (w, h, left, top, bottom) = (640u32, 400u32, 60.0, 40.0, 40.0);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    draw_text(&mut img, title, 10, 10, 2);
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(2);
    let (pw, ph) = (f64::from(w) - left - 20.0, f64::from(h) - top - bottom);
    let at = |i: usize, v: f64| {
        (
            left + pw * i as f64 / (n - 1) as f64,
            top + ph * (1.0 - (v - lo) / (hi - lo)),
        )
    };
    line(&mut img, (left, top), (left, top + ph), GREY);
    line(&mut img, (left, top + ph), (left + pw, top + ph), GREY);
    draw_text(&mut img, &format!("{hi:.3}"), 4, top as u32, 1);
    draw_text(&mut img, &format!("{lo:.3}"), 4, (top + ph) as u32 - 8, 1);
    draw_text(
        &mut img,
        &format!("epoch 1..{n}"),
        left as u32,
        (top + ph) as u32 + 12,
        1,
    );
    for (k, (name, ys)) in series.iter().enumerate() {
        let color = SERIES[k % SERIES.len()];
        for i in 1..ys.len() {
            if ys[i - 1].is_finite() && ys[i].is_finite() {
                line(&mut img, at(i - 1, ys[i - 1]), at(i, ys[i]), color);
            }
        }
        let y = h - 14;
        let x = 200 + 150 * k as u32;
        for dx in 0..16 {
            for dy in 0..3 {
                img.put_pixel(x + dx, y + 3 + dy, color);
            }
        }
        draw_text(&mut img, name, x + 20, y, 1);
    }
    img
}

/// The confusion matrix as a grid shaded by row share, counts written in each cell.
pub fn confusion(classes: &[String], cm: &[Vec<usize>]) -> RgbImage {
    let k = classes.len() as u32;
    let (cell, left, top) = (56u32, 110u32, 40u32);
    let mut img = RgbImage::from_pixel(
        left + k * cell + 10,
        top + k * cell + 30,
        Rgb([255, 255, 255]),
    );
    draw_text(&mut img, "true (rows) vs predicted (columns)", 10, 10, 1);
    for (r, row) in cm.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        draw_text(
            &mut img,
            &classes[r].chars().take(12).collect::<String>(),
            6,
            top + r as u32 * cell + cell / 2 - 4,
            1,
        );
        for (c, &n) in row.iter().enumerate() {
            let share = n as f64 / total;
            let shade = (255.0 - 180.0 * share) as u8;
            let (x0, y0) = (left + c as u32 * cell, top + r as u32 * cell);
            for y in y0..y0 + cell - 2 {
                for x in x0..x0 + cell - 2 {
                    img.put_pixel(x, y, Rgb([shade, shade, 255]));
                }
            }
            draw_text(&mut img, &n.to_string(), x0 + 6, y0 + cell / 2 - 4, 1);
        }
    }
    for (c, name) in classes.iter().enumerate() {
        draw_text(
            &mut img,
            &name.chars().take(6).collect::<String>(),
            left + c as u32 * cell + 2,
            top + k * cell + 8,
            1,
        );
    }
    img
}

/// The ROC curve of a binary classifier (positive class score against labels).
pub fn roc(scores: &[f32], positive: &[bool], auc: f64) -> RgbImage {
    let (size, pad) = (420u32, 40.0);
    let mut img = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
    draw_text(&mut img, &format!("ROC, AUC = {auc:.4}"), 10, 10, 2);
    let span = f64::from(size) - 2.0 * pad;
    let at = |fpr: f64, tpr: f64| (pad + span * fpr, pad + span * (1.0 - tpr));
    line(&mut img, at(0.0, 0.0), at(1.0, 1.0), GREY);
    line(&mut img, at(0.0, 0.0), at(0.0, 1.0), GREY);
    line(&mut img, at(0.0, 0.0), at(1.0, 0.0), GREY);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let neg = (positive.len() as f64 - pos).max(1.0);
    let (mut tp, mut fp, mut last) = (0.0, 0.0, at(0.0, 0.0));
    for i in order {
        if positive[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let next = at(fp / neg, tp / pos);
        line(&mut img, last, next, SERIES[1]);
        last = next;
    }
    draw_text(
        &mut img,
        "false positive rate",
        pad as u32 + 100,
        size - 20,
        1,
    );
    img
}

/// Saves a figure as PNG, atomically.
pub fn save(img: impl Into<image::DynamicImage>, path: &std::path::Path) -> crate::Result<()> {
    let mut bytes = Vec::new();
    img.into()
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| crate::Error::output(path, e))?;
    crate::output::write_atomic(path, &bytes)
}
