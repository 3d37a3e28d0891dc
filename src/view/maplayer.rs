//! The class map as Deep Zoom layers of its own, so that any Deep Zoom client can lay
//! it over the slide. In: a slide's map bytes ([`super::catalog::map_bytes`]: per grid
//! cell a state byte and each class's probability). Out: RGBA tiles of an image with
//! [`CELL_PX`] × [`CELL_PX`] pixels per grid cell, for one [`Layer`]: the most probable
//! class, or one class's probability as its colour's opacity. Unreadable cells are
//! grey, cells no patch covers are transparent.
//!
//! The layer's image starts at the grid's first cell core, `core_offset` level-0 pixels
//! from the slide's corner, and spans `cols × stride` level-0 pixels (`info.json` has
//! both): a client places it there over the slide.

use image::{Rgba, RgbaImage};

use super::catalog::{SlideView, CELL_CLASSIFIED, CELL_UNREADABLE};
use super::tiles::{Pyramid, TileId};
use crate::map::geom::Size;

/// Layer pixels per grid cell a side: enough that a smoothing client blurs only a thin
/// rim of each cell, few enough that the layer stays small (a 100,000-pixel slide at
/// stride 96 makes an 8,336-pixel layer).
pub const CELL_PX: u32 = 8;
const GREY: Rgba<u8> = Rgba([128, 128, 128, 255]);

/// Which map a layer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Each cell in the colour of its most probable class.
    Classes,
    /// Class `k`'s colour, as opaque as the class is probable.
    Class(usize),
}

impl Layer {
    /// `classes`, or a class's index; None for anything else or a class the slide
    /// does not have.
    pub fn parse(name: &str, classes: usize) -> Option<Self> {
        match name {
            "classes" => Some(Layer::Classes),
            _ if name.bytes().all(|b| b.is_ascii_digit()) => {
                name.parse().ok().filter(|&k| k < classes).map(Layer::Class)
            }
            _ => None,
        }
    }
}

/// The layer's pyramid over a slide's grid.
pub fn pyramid(view: &SlideView) -> Pyramid {
    let g = &view.grid;
    Pyramid::new(Size::new(g.cols * CELL_PX, g.rows * CELL_PX))
}

/// A tile of `layer`; None outside the pyramid. Each tile pixel takes the cell under
/// its centre.
pub fn tile(view: &SlideView, cells: &[u8], layer: Layer, t: TileId) -> Option<RgbaImage> {
    let p = pyramid(view);
    let (span, out) = p.tile(t)?;
    let ds = p.downsample(t.level);
    let stride = view.classes.len() + 1;
    let g = &view.grid;
    // A coarse level's last pixel may reach past the layer's edge: it takes the edge.
    let cell_of = |x0: u32, i: u32, n: u32| {
        let at = (u64::from(x0) + u64::from(i) * ds + ds / 2) / u64::from(CELL_PX);
        at.min(u64::from(n) - 1) as usize
    };
    Some(RgbaImage::from_fn(out.w, out.h, |i, j| {
        let (c, r) = (cell_of(span.x, i, g.cols), cell_of(span.y, j, g.rows));
        let cols = g.cols as usize;
        let cell = &cells[(r * cols + c) * stride..][..stride];
        let probs = &cell[1..];
        match cell[0] {
            CELL_UNREADABLE => GREY,
            CELL_CLASSIFIED => {
                let (k, alpha) = match layer {
                    Layer::Classes => {
                        // The first of equal maxima, as argmax everywhere else.
                        let best =
                            (0..probs.len())
                                .fold(0, |b, k| if probs[k] > probs[b] { k } else { b });
                        (best, 255)
                    }
                    Layer::Class(k) => (k, probs[k]),
                };
                let [r, g, b] = view.classes[k].color;
                Rgba([r, g, b, alpha])
            }
            _ => Rgba([0; 4]),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::grid::Grid;
    use crate::view::catalog::ClassView;

    /// The first tile of `level`: the whole layer, at the levels used here.
    fn whole(level: u32) -> TileId {
        TileId {
            level,
            col: 0,
            row: 0,
        }
    }

    #[test]
    fn cells_become_colours_and_layers_parse() {
        let grid = Grid::new(Size::new(200, 100), 100, 100);
        let view = SlideView {
            name: "s".into(),
            slide: "s.tif".into(),
            size: grid.slide,
            mpp: None,
            core_offset: grid.core_offset(),
            grid,
            classes: vec![
                ClassView {
                    name: "a".into(),
                    color: [255, 0, 0],
                },
                ClassView {
                    name: "b".into(),
                    color: [0, 0, 255],
                },
            ],
        };
        // Cell 0: b is more probable (0.2 vs 0.8); cell 1 unreadable.
        let cells = [CELL_CLASSIFIED, 51, 204, CELL_UNREADABLE, 0, 0];
        let top = pyramid(&view).max_level;
        let t = tile(&view, &cells, Layer::Classes, whole(top)).unwrap();
        assert_eq!(t.dimensions(), (16, 8));
        assert_eq!(t.get_pixel(3, 3), &Rgba([0, 0, 255, 255]));
        assert_eq!(t.get_pixel(12, 3), &GREY);
        let a = tile(&view, &cells, Layer::Class(0), whole(top)).unwrap();
        assert_eq!(a.get_pixel(3, 3), &Rgba([255, 0, 0, 51]));
        assert_eq!(Layer::parse("classes", 2), Some(Layer::Classes));
        assert_eq!(Layer::parse("1", 2), Some(Layer::Class(1)));
        for bad in ["2", "-1", "+1", "x", ""] {
            assert_eq!(Layer::parse(bad, 2), None, "{bad}");
        }
        // One pixel at level 0: the cell under its centre.
        assert_eq!(
            tile(&view, &cells, Layer::Classes, whole(0))
                .unwrap()
                .dimensions(),
            (1, 1)
        );
    }
}
