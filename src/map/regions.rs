//! Dissolving classified cells into class regions. In: a label per grid cell. Out:
//! per class, polygons (an exterior ring and holes) in cell-corner coordinates, the
//! outlines of 4-connected groups of same-class cells, valid by the OGC Simple Features
//! rules that GEOS, JTS and QuPath check.
//!
//! Each cell contributes the sides it does not share with its group, as directed edges
//! with the group on their right (y down): an exterior runs clockwise on screen, which
//! is a positive shoelace sum and counterclockwise as RFC 7946 reads (x, y), and a hole
//! runs the other way. Where two cells of a group touch only at a corner, a ring
//! arriving there has two ways on. The left turn keeps the gaps on either side of the
//! corner in different rings, so no ring touches itself: the exterior and a hole, or two
//! holes, meet at that one point, which OGC allows (the right turn would make one ring
//! through the point twice, OGC's "ring self-intersection"). Cells of a class joined
//! only through corners belong to different groups, so they are separate polygons.
//!
//! Linear in the number of cells, without maps or sorting: the lattice's vertices are
//! scanned column by column, so each ring starts at its leftmost, then topmost vertex,
//! and a group's exterior is traced before its holes.

/// A vertex of the cell lattice: (column, row) of a cell corner.
pub type Vertex = (i64, i64);

/// An exterior ring and its holes, each closed (first vertex repeated last).
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    pub exterior: Vec<Vertex>,
    pub holes: Vec<Vec<Vertex>>,
}

/// Steps along the lattice, clockwise on screen: east, south, west, north.
const STEPS: [Vertex; 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
/// From a vertex, the cell on the right of each step, whose top, right, bottom or left
/// side the step is; the cell on a step's left is the one for the step before it.
const RIGHT_OF: [Vertex; 4] = [(0, 0), (-1, 0), (-1, -1), (0, -1)];

/// The group of a background cell, or of a cell off the grid.
const NONE: usize = usize::MAX;

/// Polygons of every class present, indexed by class.
pub fn dissolve(
    labels: &[Option<usize>],
    cols: usize,
    rows: usize,
    classes: usize,
) -> Vec<Vec<Polygon>> {
    let (groups, class_of) = Groups::new(labels, cols, rows);
    let mut rings = vec![Vec::new(); class_of.len()];
    let mut used = vec![0u8; labels.len()];
    for c in 0..=cols as i64 {
        for r in 0..=rows as i64 {
            for d in 0..4 {
                if let Some(g) = groups.edge((c, r), d) {
                    if groups.take(&mut used, (c, r), d) {
                        rings[g].push(groups.trace((c, r), d, g, &mut used));
                    }
                }
            }
        }
    }
    let mut out = vec![Vec::new(); classes];
    for (mut rings, class) in rings.into_iter().zip(class_of) {
        // The first ring traced holds the group's leftmost, topmost corner: the exterior.
        let exterior = rings.swap_remove(0);
        out[class].push(Polygon {
            exterior,
            holes: rings,
        });
    }
    out
}

/// The 4-connected groups of same-class cells.
struct Groups {
    cols: usize,
    rows: usize,
    /// Each cell's group, row-major.
    of: Vec<usize>,
}

impl Groups {
    /// Numbers the groups in row-major order of their first cell; also returns each
    /// group's class.
    fn new(labels: &[Option<usize>], cols: usize, rows: usize) -> (Self, Vec<usize>) {
        let mut of = vec![NONE; labels.len()];
        let mut class_of = Vec::new();
        let mut stack = Vec::new();
        for start in 0..labels.len() {
            let Some(class) = labels[start] else { continue };
            if of[start] != NONE {
                continue;
            }
            let g = class_of.len();
            class_of.push(class);
            of[start] = g;
            stack.push(start);
            while let Some(i) = stack.pop() {
                let (c, r) = (i % cols, i / cols);
                let mut visit = |j: usize| {
                    if labels[j] == Some(class) && of[j] == NONE {
                        of[j] = g;
                        stack.push(j);
                    }
                };
                if c > 0 {
                    visit(i - 1);
                }
                if c + 1 < cols {
                    visit(i + 1);
                }
                if r > 0 {
                    visit(i - cols);
                }
                if r + 1 < rows {
                    visit(i + cols);
                }
            }
        }
        (Self { cols, rows, of }, class_of)
    }

    /// The row-major index of the cell on the right of step `d` from `v`, if on the grid.
    fn right_of(&self, v: Vertex, d: usize) -> Option<usize> {
        let (c, r) = (v.0 + RIGHT_OF[d].0, v.1 + RIGHT_OF[d].1);
        let on_grid = c >= 0 && r >= 0 && (c as usize) < self.cols && (r as usize) < self.rows;
        on_grid.then(|| r as usize * self.cols + c as usize)
    }

    /// The group whose boundary step `d` from `v` runs along, if any.
    fn edge(&self, v: Vertex, d: usize) -> Option<usize> {
        let group = |cell: Option<usize>| cell.map_or(NONE, |i| self.of[i]);
        let g = group(self.right_of(v, d));
        (g != NONE && g != group(self.right_of(v, (d + 3) % 4))).then_some(g)
    }

    /// Marks step `d` from `v` as traced; false if it already was.
    fn take(&self, used: &mut [u8], v: Vertex, d: usize) -> bool {
        let i = self
            .right_of(v, d)
            .expect("a boundary step has its cell on its right");
        let fresh = used[i] & (1 << d) == 0;
        used[i] |= 1 << d;
        fresh
    }

    /// The ring of group `g` that leaves `start` by step `d`, already taken.
    fn trace(&self, start: Vertex, mut d: usize, g: usize, used: &mut [u8]) -> Vec<Vertex> {
        let mut ring = vec![start];
        let mut v = start;
        loop {
            v = (v.0 + STEPS[d].0, v.1 + STEPS[d].1);
            ring.push(v);
            if v == start {
                return simplify(ring);
            }
            // Left turn first: see the module note.
            d = [(d + 3) % 4, d, (d + 1) % 4]
                .into_iter()
                .find(|&n| self.edge(v, n) == Some(g))
                .expect("boundary edges form closed rings");
            self.take(used, v, d);
        }
    }
}

/// Drops vertices in the middle of straight runs.
fn simplify(ring: Vec<Vertex>) -> Vec<Vertex> {
    let n = ring.len() - 1; // closed: last == first
    let mut out: Vec<Vertex> = (0..n)
        .filter(|&i| {
            let (a, b, c) = (ring[(i + n - 1) % n], ring[i], ring[(i + 1) % n]);
            (b.0 - a.0) * (c.1 - b.1) != (b.1 - a.1) * (c.0 - b.0)
        })
        .map(|i| ring[i])
        .collect();
    out.push(out[0]);
    out
}

#[cfg(test)]
#[path = "../../tests/common/ogc.rs"]
mod ogc;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn grid(rows: &[&str]) -> (Vec<Option<usize>>, usize, usize) {
        let labels = rows
            .iter()
            .flat_map(|r| r.chars().map(|ch| ch.to_digit(10).map(|d| d as usize)))
            .collect();
        (labels, rows[0].len(), rows.len())
    }

    /// Dissolves and checks every class's polygons by OGC rules and their area against
    /// the class's cell count.
    fn valid_dissolve(
        labels: &[Option<usize>],
        cols: usize,
        rows: usize,
        classes: usize,
    ) -> Vec<Vec<Polygon>> {
        let polys = dissolve(labels, cols, rows, classes);
        for (k, class) in polys.iter().enumerate() {
            let rings: Vec<Vec<Vec<ogc::Point>>> = class
                .iter()
                .map(|p| {
                    std::iter::once(&p.exterior)
                        .chain(&p.holes)
                        .map(|r| r.iter().map(|&(x, y)| [x, y]).collect())
                        .collect()
                })
                .collect();
            let area =
                ogc::check(&rings).unwrap_or_else(|e| panic!("class {k}: {e:?} in {class:?}"));
            let cells = labels.iter().filter(|l| **l == Some(k)).count();
            assert_eq!(area, cells as i64, "class {k}: area of {class:?}");
        }
        polys
    }

    fn square(x0: i64, y0: i64, x1: i64, y1: i64) -> Vec<ogc::Point> {
        vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    }

    fn reversed(mut ring: Vec<ogc::Point>) -> Vec<ogc::Point> {
        ring.reverse();
        ring
    }

    #[test]
    fn the_check_rejects_invalid_shapes() {
        use ogc::{check, Invalid::*};
        let one = |rings: Vec<Vec<ogc::Point>>| check(&[rings]);
        assert!(matches!(
            one(vec![vec![[0, 0], [1, 0], [0, 0]]]),
            Err(TooFewPoints { .. })
        ));
        assert!(matches!(
            one(vec![vec![[0, 0], [1, 0], [1, 1], [0, 1]]]),
            Err(NotClosed { .. })
        ));
        assert_eq!(
            one(vec![vec![[0, 0], [1, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]),
            Err(RepeatedPoint([1, 0]))
        );
        assert_eq!(
            one(vec![vec![[0, 0], [1, 0], [1, 1], [0, 0]]]),
            Err(NotRectilinear([1, 1]))
        );
        assert!(matches!(
            one(vec![reversed(square(0, 0, 1, 1))]),
            Err(WrongOrientation { .. })
        ));
        assert!(matches!(
            one(vec![square(0, 0, 3, 3), square(1, 1, 2, 2)]),
            Err(WrongOrientation { .. })
        ));
        // What the dissolve wrote before #21 for "00." / "0.0" / "000": the exterior
        // and the hole as one ring through (2, 1) twice.
        let pinched = vec![
            [0, 0],
            [2, 0],
            [2, 1],
            [1, 1],
            [1, 2],
            [2, 2],
            [2, 1],
            [3, 1],
            [3, 3],
            [0, 3],
            [0, 0],
        ];
        assert_eq!(one(vec![pinched]), Err(RingSelfIntersection([2, 1])));
        // A figure of eight crossing itself at (2, 2).
        let eight = vec![[0, 0], [2, 0], [2, 3], [3, 3], [3, 2], [0, 2], [0, 0]];
        assert_eq!(one(vec![eight]), Err(RingSelfIntersection([2, 2])));
        // A hole reaching out of its shell crosses it.
        assert!(matches!(
            one(vec![square(0, 0, 4, 4), reversed(square(1, 1, 5, 3))]),
            Err(SelfIntersection(_))
        ));
        // Neighbours sharing a side must be one polygon.
        assert!(matches!(
            check(&[vec![square(0, 0, 1, 1)], vec![square(1, 0, 2, 1)]]),
            Err(SelfIntersection(_))
        ));
        // A hole touching its shell at two corners cuts the interior in two.
        let notched = vec![
            [0, 0],
            [2, 0],
            [2, 1],
            [3, 1],
            [3, 3],
            [1, 3],
            [1, 2],
            [0, 2],
            [0, 0],
        ];
        assert!(matches!(
            one(vec![notched, reversed(square(1, 1, 2, 2))]),
            Err(DisconnectedInterior(_))
        ));
        assert!(matches!(
            one(vec![square(0, 0, 1, 1), reversed(square(2, 2, 3, 3))]),
            Err(HoleOutsideShell(_))
        ));
        assert!(matches!(
            one(vec![
                square(0, 0, 5, 5),
                reversed(square(1, 1, 4, 4)),
                reversed(square(2, 2, 3, 3))
            ]),
            Err(HoleOutsideShell(_))
        ));
        assert!(matches!(
            check(&[vec![square(0, 0, 3, 3)], vec![square(1, 1, 2, 2)]]),
            Err(OverlappingPolygons(_))
        ));
        // Valid: a hole touching its shell at one corner; an island in a hole; polygons
        // touching at a corner.
        let notch = vec![[0, 0], [2, 0], [2, 1], [3, 1], [3, 3], [0, 3], [0, 0]];
        assert_eq!(one(vec![notch, reversed(square(1, 1, 2, 2))]), Ok(7));
        assert_eq!(
            check(&[
                vec![square(0, 0, 5, 5), reversed(square(1, 1, 4, 4))],
                vec![square(2, 2, 3, 3)],
                vec![square(5, 5, 6, 6)],
            ]),
            Ok(16 + 1 + 1)
        );
    }

    #[test]
    fn square_block_is_one_rectangle() {
        let (l, c, r) = grid(&["00.", "00.", "..."]);
        let polys = valid_dissolve(&l, c, r, 1);
        assert_eq!(polys[0].len(), 1);
        assert_eq!(
            polys[0][0].exterior,
            vec![(0, 0), (2, 0), (2, 2), (0, 2), (0, 0)]
        );
        assert!(polys[0][0].holes.is_empty());
    }

    #[test]
    fn ring_of_cells_has_a_hole() {
        let (l, c, r) = grid(&["000", "0.0", "000"]);
        let p = &valid_dissolve(&l, c, r, 1)[0];
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].holes,
            vec![vec![(1, 1), (1, 2), (2, 2), (2, 1), (1, 1)]]
        );
    }

    #[test]
    fn diagonal_cells_stay_apart_and_classes_split() {
        let (l, c, r) = grid(&["01", "10"]);
        let p = valid_dissolve(&l, c, r, 2);
        assert_eq!((p[0].len(), p[1].len()), (2, 2));
        for poly in p.iter().flatten() {
            assert_eq!(poly.exterior.len(), 5);
        }
    }

    #[test]
    fn blocks_touching_at_a_corner_are_two_polygons() {
        let (l, c, r) = grid(&["00..", "00..", "..00", "..00"]);
        let p = &valid_dissolve(&l, c, r, 1)[0];
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn checkerboards_are_one_polygon_per_cell() {
        let rows: Vec<String> = (0..6)
            .map(|r| {
                (0..6)
                    .map(|c| if (r + c) % 2 == 0 { '0' } else { '1' })
                    .collect()
            })
            .collect();
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let (l, c, r) = grid(&rows);
        let p = valid_dissolve(&l, c, r, 2);
        assert_eq!((p[0].len(), p[1].len()), (18, 18));
        let (l, c, r) = grid(&["0.0.0", ".0.0.", "0.0.0", ".0.0."]);
        assert_eq!(valid_dissolve(&l, c, r, 1)[0].len(), 10);
    }

    #[test]
    fn hole_touching_the_exterior_at_a_corner_stays_a_hole() {
        // The gap at (1, 1) meets the outside only at the corner (2, 1).
        let (l, c, r) = grid(&["00.", "0.0", "000"]);
        let p = &valid_dissolve(&l, c, r, 1)[0];
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].exterior,
            vec![(0, 0), (2, 0), (2, 1), (3, 1), (3, 3), (0, 3), (0, 0)]
        );
        assert_eq!(
            p[0].holes,
            vec![vec![(1, 1), (1, 2), (2, 2), (2, 1), (1, 1)]]
        );
    }

    #[test]
    fn holes_touching_at_a_corner_are_two_holes() {
        let (l, c, r) = grid(&["0000", "0.00", "00.0", "0000"]);
        let p = &valid_dissolve(&l, c, r, 1)[0];
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].holes.len(), 2);
        // Three gaps on a diagonal, each touching the next at a corner.
        let (l, c, r) = grid(&["00000", "0.000", "00.00", "000.0", "00000"]);
        let p = &valid_dissolve(&l, c, r, 1)[0];
        assert_eq!((p.len(), p[0].holes.len()), (1, 3));
    }

    #[test]
    fn nested_islands_are_separate_polygons() {
        // An island in a hole in a polygon, one touching its hole at a corner, one of
        // another class.
        for (rows, polygons) in [
            (["00000", "0...0", "0.0.0", "0...0", "00000"], [2, 0]),
            (["00000", "00..0", "0.0.0", "0...0", "00000"], [2, 0]),
            (["00000", "0...0", "0.1.0", "0...0", "00000"], [1, 1]),
            // Cut off by four gaps, the centre is an island touching its hole at four corners.
            (["00000", "00.00", "0.0.0", "00.00", "00000"], [2, 0]),
        ] {
            let (l, c, r) = grid(&rows);
            let p = valid_dissolve(&l, c, r, 2);
            assert_eq!([p[0].len(), p[1].len()], polygons, "{rows:?}");
            assert_eq!(p[0][0].holes.len(), 1, "{rows:?}");
        }
    }

    /// 500 random grids, 1 to 40 cells a side, 1 to 4 classes, sparse to dense: every
    /// class region valid, with the area of its cells.
    #[test]
    fn random_grids_dissolve_into_valid_regions_of_their_cells_area() {
        let (mut polygons, mut holes, mut touches) = (0, 0, 0);
        for seed in 0..500 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (cols, rows) = (rng.random_range(1..=40), rng.random_range(1..=40));
            let classes = rng.random_range(1..=4);
            let density = rng.random_range(0.05..0.95);
            let labels: Vec<Option<usize>> = (0..cols * rows)
                .map(|_| {
                    rng.random_bool(density)
                        .then(|| rng.random_range(0..classes))
                })
                .collect();
            for q in valid_dissolve(&labels, cols, rows, classes)
                .iter()
                .flatten()
            {
                polygons += 1;
                holes += q.holes.len();
                // Corners where two rings of a polygon meet, where a ring used to pinch.
                let mut seen = HashSet::new();
                touches += std::iter::once(&q.exterior)
                    .chain(&q.holes)
                    .flat_map(|r| &r[1..])
                    .filter(|&&v| !seen.insert(v))
                    .count();
            }
        }
        assert!(
            polygons > 10_000 && holes > 1_000 && touches > 500,
            "{polygons} polygons, {holes} holes, {touches} touches"
        );
    }
}
