//! Patch preprocessing, the one function between pixels and the model. In: an RGB
//! patch as read. Out: the model's input, (3, size, size) f32, normalised. Training,
//! evaluation and `heatmap` all call this, so a model never sees different pixels in
//! training and in use.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::map::geom::Size;
use crate::pipeline::Normalization;

/// Per-channel lookup tables: `(v / 255 - mean) / std` for every byte value.
pub struct Normalizer {
    lut: [[f32; 256]; 3],
}

impl Normalizer {
    pub fn new(norm: &Normalization) -> Self {
        let mut lut = [[0.0; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - norm.mean[c]) / norm.std[c];
            }
        }
        Self { lut }
    }

    /// Resizes `patch` to `size` × `size` (bilinear, antialiased when shrinking) if
    /// needed and writes it channel-first into `out` (length 3 × size × size).
    pub fn write_chw(&self, patch: &RgbImage, size: u32, out: &mut [f32]) {
        let resized;
        let img = if patch.dimensions() == (size, size) {
            patch
        } else {
            resized = resize(patch, size);
            &resized
        };
        let plane = (size * size) as usize;
        debug_assert_eq!(out.len(), 3 * plane);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in img.pixels().enumerate() {
            r[i] = self.lut[0][px[0] as usize];
            g[i] = self.lut[1][px[1] as usize];
            b[i] = self.lut[2][px[2] as usize];
        }
    }
}

/// `patch` at `size` × `size`: as it is when it already is, else resized as
/// [`Normalizer::write_chw`] resizes it.
pub fn fit_to(patch: RgbImage, size: u32) -> RgbImage {
    if patch.dimensions() == (size, size) {
        patch
    } else {
        resize(&patch, size)
    }
}

/// Bilinear resize to a square patch.
fn resize(patch: &RgbImage, size: u32) -> RgbImage {
    resize_rgb(patch, Size::new(size, size))
}

/// Bilinear resize, antialiased when shrinking (as torchvision's `Resize` on PIL images).
pub fn resize_rgb(image: &RgbImage, to: Size) -> RgbImage {
    let (w, h) = image.dimensions();
    let src = ImageRef::new(w, h, image.as_raw(), PixelType::U8x3)
        .expect("buffer matches its dimensions");
    let mut dst = Image::new(to.w, to.h, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel type on both sides");
    RgbImage::from_raw(to.w, to.h, dst.into_vec()).expect("buffer matches size")
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn normalises_channel_first() {
        let norm = Normalization {
            mean: [0.5, 0.0, 1.0],
            std: [0.5, 1.0, 0.5],
        };
        let patch = RgbImage::from_pixel(2, 2, Rgb([255, 0, 255]));
        let mut out = vec![0.0; 12];
        Normalizer::new(&norm).write_chw(&patch, 2, &mut out);
        assert_eq!(&out[0..4], &[1.0; 4]);
        assert_eq!(&out[4..8], &[0.0; 4]);
        assert_eq!(&out[8..12], &[0.0; 4]);
    }

    #[test]
    fn resizes_to_model_input() {
        let norm = Normalization {
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let patch = RgbImage::from_pixel(7, 7, Rgb([255, 255, 255]));
        let mut out = vec![0.0; 3 * 4 * 4];
        Normalizer::new(&norm).write_chw(&patch, 4, &mut out);
        assert!(out.iter().all(|v| (v - 1.0).abs() < 1e-6));
    }
}
