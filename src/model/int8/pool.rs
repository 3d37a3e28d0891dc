//! Max pooling of int8 networks' f32 activations (ResNet's stem). In: one image,
//! channels last. Out: the pooled image, channels last.

use super::Act;

/// Max pooling, floor mode, padding never chosen.
pub(super) fn max_pool(x: &Act, k: usize, s: usize, p: usize) -> Act {
    let oh = (x.h + 2 * p - k) / s + 1;
    let ow = (x.w + 2 * p - k) / s + 1;
    let mut data = vec![f32::NEG_INFINITY; oh * ow * x.c];
    for oy in 0..oh {
        for ox in 0..ow {
            let dst = &mut data[(oy * ow + ox) * x.c..][..x.c];
            for ky in 0..k {
                for kx in 0..k {
                    let (iy, ix) = ((oy * s + ky).wrapping_sub(p), (ox * s + kx).wrapping_sub(p));
                    if iy < x.h && ix < x.w {
                        let src = &x.data[(iy * x.w + ix) * x.c..][..x.c];
                        // `f32::max`'s NaN rule keeps this loop scalar; a comparison
                        // vectorises (activations are never NaN).
                        dst.iter_mut()
                            .zip(src)
                            .for_each(|(d, &v)| *d = if *d > v { *d } else { v });
                    }
                }
            }
        }
    }
    Act {
        h: oh,
        w: ow,
        c: x.c,
        data,
    }
}
