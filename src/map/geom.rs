//! Coordinate frames. Level-0 pixels and grid cells are different types so that a
//! coordinate can never be used in the wrong frame; pixels of other pyramid levels only
//! appear as a read size ([`crate::map::grid::ReadPlan::read_size`]).
//!
//! In: nothing. Out: the value types every other stage passes around.

use serde::{Deserialize, Serialize};

/// A width and height in pixels of whatever frame the holder names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Size {
    pub w: u32,
    pub h: u32,
}

impl Size {
    pub const fn new(w: u32, h: u32) -> Self {
        Self { w, h }
    }

    pub fn area(self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}×{} px", self.w, self.h)
    }
}

impl std::fmt::Display for L0Point {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "({}, {}) in level-0 pixels", self.x, self.y)
    }
}

/// A point in level-0 (full resolution) pixels of a slide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct L0Point {
    pub x: u32,
    pub y: u32,
}

/// A rectangle in level-0 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct L0Rect {
    pub origin: L0Point,
    pub size: Size,
}

impl L0Rect {
    pub fn right(&self) -> u32 {
        self.origin.x + self.size.w
    }

    pub fn bottom(&self) -> u32 {
        self.origin.y + self.size.h
    }
}

/// A cell of the tiling grid: column and row, counted in strides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Cell {
    pub col: u32,
    pub row: u32,
}
