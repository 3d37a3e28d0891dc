//! sRGB ↔ CIELAB (D65) in 8 bits, as OpenCV's `COLOR_RGB2LAB` / `COLOR_LAB2RGB` store
//! it for `uint8` images (L scaled to 0–255, a and b offset by 128), which is what
//! TIAToolbox's luminosity mask and Reinhard normaliser compute on.

/// sRGB byte → linear light, for every byte.
fn linear_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|v| {
            let x = v as f32 / 255.0;
            if x <= 0.04045 {
                x / 12.92
            } else {
                ((x + 0.055) / 1.055).powf(2.4)
            }
        })
    })
}

const T0: f32 = 0.008856;
const WHITE_X: f32 = 0.950456;
const WHITE_Z: f32 = 1.088754;

fn f(t: f32) -> f32 {
    if t > T0 {
        t.cbrt()
    } else {
        7.787 * t + 16.0 / 116.0
    }
}

fn f_inv(t: f32) -> f32 {
    if t > 0.206_893 {
        t * t * t
    } else {
        (t - 16.0 / 116.0) / 7.787
    }
}

fn byte(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

fn luminance(lin: [f32; 3]) -> f32 {
    0.212_671 * lin[0] + 0.715_160 * lin[1] + 0.072_169 * lin[2]
}

/// 8-bit lightness `L · 255/100` of luminance `y`, whose `f(y)` is `fy`.
fn lightness_byte(y: f32, fy: f32) -> u8 {
    let l = if y > T0 { 116.0 * fy - 16.0 } else { 903.3 * y };
    byte(l * 255.0 / 100.0)
}

/// An 8-bit RGB pixel as 8-bit LAB: `[L · 255/100, a + 128, b + 128]`, rounded.
pub fn rgb_to_lab8(px: [u8; 3]) -> [u8; 3] {
    let lin = linear_table();
    let [r, g, b] = px.map(|v| lin[v as usize]);
    let x = (0.412_453 * r + 0.357_580 * g + 0.180_423 * b) / WHITE_X;
    let y = luminance([r, g, b]);
    let z = (0.019_334 * r + 0.119_193 * g + 0.950_227 * b) / WHITE_Z;
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [
        lightness_byte(y, fy),
        byte(500.0 * (fx - fy) + 128.0),
        byte(200.0 * (fy - fz) + 128.0),
    ]
}

/// The first byte of [`rgb_to_lab8`] alone: one cube root instead of three, for masks
/// that need only lightness.
pub fn lightness8(px: [u8; 3]) -> u8 {
    let lin = linear_table();
    let y = luminance(px.map(|v| lin[v as usize]));
    lightness_byte(y, f(y))
}

/// 8-bit LAB (as [`rgb_to_lab8`] writes it) back to 8-bit RGB.
pub fn lab8_to_rgb(lab: [u8; 3]) -> [u8; 3] {
    let l = f32::from(lab[0]) * 100.0 / 255.0;
    let a = f32::from(lab[1]) - 128.0;
    let b = f32::from(lab[2]) - 128.0;
    let (y, fy) = if l <= 8.0 {
        let y = l / 903.3;
        (y, 7.787 * y + 16.0 / 116.0)
    } else {
        let fy = (l + 16.0) / 116.0;
        (fy * fy * fy, fy)
    };
    let x = f_inv(a / 500.0 + fy) * WHITE_X;
    let z = f_inv(fy - b / 200.0) * WHITE_Z;
    let encode = |c: f32| {
        let c = c.clamp(0.0, 1.0);
        let v = if c <= 0.003_130_8 {
            12.92 * c
        } else {
            1.055 * c.powf(1.0 / 2.4) - 0.055
        };
        byte(v * 255.0)
    };
    [
        encode(3.240_479 * x - 1.537_15 * y - 0.498_535 * z),
        encode(-0.969_256 * x + 1.875_991 * y + 0.041_556 * z),
        encode(0.055_648 * x - 0.204_043 * y + 1.057_311 * z),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    // cv2.cvtColor(np.uint8([[px]]), cv2.COLOR_RGB2LAB / COLOR_LAB2RGB), OpenCV 5.1.0
    const RGB_TO_LAB: [([u8; 3], [u8; 3]); 7] = [
        ([255, 255, 255], [255, 128, 128]),
        ([255, 0, 0], [136, 208, 195]),
        ([200, 120, 180], [155, 168, 110]),
        ([30, 60, 90], [62, 128, 106]),
        ([240, 200, 220], [216, 145, 123]),
        ([120, 40, 110], [79, 172, 105]),
        ([10, 10, 10], [7, 128, 128]),
    ];
    const LAB_TO_RGB: [([u8; 3], [u8; 3]); 5] = [
        ([150, 160, 110], [182, 122, 174]),
        ([60, 140, 100], [47, 52, 98]),
        ([230, 135, 125], [238, 223, 233]),
        ([5, 128, 128], [6, 7, 7]),
        ([100, 200, 60], [143, 21, 206]),
    ];

    fn close(a: [u8; 3], b: [u8; 3]) -> bool {
        a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 1)
    }

    #[test]
    fn lightness_alone_is_lab_lightness() {
        for v in (0..=255u32).step_by(5) {
            let px = [v as u8, (v * 7 % 256) as u8, (255 - v) as u8];
            assert_eq!(lightness8(px), rgb_to_lab8(px)[0]);
        }
    }

    #[test]
    fn conversions_match_opencv_within_a_step() {
        for (rgb, lab) in RGB_TO_LAB {
            assert!(
                close(rgb_to_lab8(rgb), lab),
                "{rgb:?}: {:?}, OpenCV {lab:?}",
                rgb_to_lab8(rgb)
            );
        }
        for (lab, rgb) in LAB_TO_RGB {
            assert!(
                close(lab8_to_rgb(lab), rgb),
                "{lab:?}: {:?}, OpenCV {rgb:?}",
                lab8_to_rgb(lab)
            );
        }
    }
}
