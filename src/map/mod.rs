//! Slide to map: everything that turns one slide into per-class maps, in the order
//! data flows.
//!
//! | module | in | out |
//! |---|---|---|
//! | [`annotations`] | a QuPath GeoJSON export | class regions, and how much of a rectangle each class covers |
//! | [`slide`] | a path | a [`slide::SlideSource`] reading RGB regions on demand |
//! | [`mask`] | a thumbnail | tissue fraction of any level-0 rectangle |
//! | [`grid`] | slide size, MPPs, patch size, stride | patch rectangles and the level to read them from |
//! | [`select`] | the grid, the mask, the slide | the tissue patches to classify, and those unreadable |
//! | [`preprocess`] | an RGB patch | the model's normalised input |
//! | [`stains`] | the slide, its tissue patches, a stain target | the slide's stain normalisation, estimated once |
//! | [`stream`] | a slide and patch rectangles | class probabilities, reading overlapped with inference |
//! | [`heatmap`] | per-patch probabilities | a per-cell, per-class map |
//! | [`regions`] | per-cell labels | dissolved class polygons |
//!
//! [`geom`] holds the coordinate frames every stage speaks: level-0 pixels and grid
//! cells are different types. Nothing here writes files: [`crate::sink`] does.

pub mod annotations;
pub mod geom;
pub mod grid;
pub mod heatmap;
pub mod mask;
pub mod preprocess;
pub mod regions;
pub mod select;
pub mod slide;
pub mod stains;
pub mod stream;
