//! OGC Simple Features validity of rectilinear multipolygons, by the rules GEOS and JTS
//! (shapely's `is_valid`, QuPath) apply. In: one class region, its polygons as rings of
//! integer points, each polygon's exterior first, then its holes. Out: the region's
//! area, or the first rule it breaks.
//!
//! Shared by the dissolve's unit tests (`src/map/regions.rs` includes this file) and the
//! CLI tests, so both hold the output to one standard without a geometry crate to build.
//! Rectilinear only: axis-parallel segments can cross or touch only at points whose x
//! is some vertex's x and whose y is some vertex's y, so walking every ring step by
//! step over that grid finds each shared point and segment exactly, with no floating
//! point and in time linear in the rings' lengths on the grid.
//!
//! Orientation is the dissolve's: y grows downwards and an exterior has a positive
//! shoelace sum (clockwise on screen, counterclockwise in RFC 7946's terms), a hole a
//! negative one.

use std::collections::HashMap;

pub type Point = [i64; 2];

/// The rule a region breaks, named after GEOS's messages where GEOS has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A ring with fewer than 4 points, or a polygon with no ring.
    TooFewPoints { polygon: usize },
    /// A ring whose last point is not its first.
    NotClosed { polygon: usize },
    /// The same point twice in a row.
    RepeatedPoint(Point),
    /// A segment that is not parallel to an axis.
    NotRectilinear(Point),
    /// An exterior that is not positive or a hole that is not negative.
    WrongOrientation { polygon: usize },
    /// A ring passes through a point twice (GEOS "Ring Self-intersection").
    RingSelfIntersection(Point),
    /// Two rings share a segment or cross (GEOS "Self-intersection").
    SelfIntersection(Point),
    /// The rings of one polygon touch in a cycle, cutting its interior in parts
    /// (GEOS "Interior is disconnected").
    DisconnectedInterior(Point),
    /// Part of a hole is not inside its own exterior, or lies inside another hole
    /// (GEOS "Hole lies outside shell", "Holes are nested").
    HoleOutsideShell(Point),
    /// Two polygons of the region share area (GEOS "Nested shells" or
    /// "Self-intersection" of a multipolygon).
    OverlappingPolygons(Point),
}

/// Checks one region and returns its area: exteriors minus holes.
pub fn check(polygons: &[Vec<Vec<Point>>]) -> Result<i64, Invalid> {
    if polygons.is_empty() {
        return Ok(0);
    }
    for (p, rings) in polygons.iter().enumerate() {
        if rings.is_empty() {
            return Err(Invalid::TooFewPoints { polygon: p });
        }
        for (k, ring) in rings.iter().enumerate() {
            check_ring(ring, p, k == 0)?;
        }
    }
    check_touches(polygons)?;
    for rings in polygons {
        let (xs, ys) = axes(rings.iter());
        let w = winding(rings.iter(), &xs, &ys);
        if let Some(k) = w.iter().position(|&v| v < 0) {
            return Err(Invalid::HoleOutsideShell(corner(k, &xs, &ys)));
        }
    }
    let (xs, ys) = axes(polygons.iter().flatten());
    let mut area = 0;
    for (k, &w) in winding(polygons.iter().flatten(), &xs, &ys)
        .iter()
        .enumerate()
    {
        if w > 1 {
            return Err(Invalid::OverlappingPolygons(corner(k, &xs, &ys)));
        }
        let (i, j) = (k % (xs.len() - 1), k / (xs.len() - 1));
        area += i64::from(w) * (xs[i + 1] - xs[i]) * (ys[j + 1] - ys[j]);
    }
    Ok(area)
}

fn check_ring(ring: &[Point], polygon: usize, exterior: bool) -> Result<(), Invalid> {
    if ring.len() < 4 {
        return Err(Invalid::TooFewPoints { polygon });
    }
    if ring.first() != ring.last() {
        return Err(Invalid::NotClosed { polygon });
    }
    for s in ring.windows(2) {
        let (a, b) = (s[0], s[1]);
        if a == b {
            return Err(Invalid::RepeatedPoint(a));
        }
        if a[0] != b[0] && a[1] != b[1] {
            return Err(Invalid::NotRectilinear(a));
        }
    }
    let area2: i64 = ring
        .windows(2)
        .map(|s| s[0][0] * s[1][1] - s[1][0] * s[0][1])
        .sum();
    if (area2 > 0) != exterior || area2 == 0 {
        return Err(Invalid::WrongOrientation { polygon });
    }
    Ok(())
}

/// Steps of a ring on the grid, as bits of the point they leave from.
const EAST: u8 = 1;
const SOUTH: u8 = 2;
const WEST: u8 = 4;
const NORTH: u8 = 8;

/// Where rings meet: a ring may not revisit a point; two rings may share a point but
/// no segment and may not cross there; and within a polygon the rings touching at
/// points must form a forest, since a cycle of touches encloses part of the interior.
fn check_touches(polygons: &[Vec<Vec<Point>>]) -> Result<(), Invalid> {
    let (xs, ys) = axes(polygons.iter().flatten());
    // (ring, polygon, directions of its two steps at the point), per grid point.
    let mut seen: HashMap<(usize, usize), (usize, usize, u8)> = HashMap::new();
    let mut parent: Vec<usize> = (0..polygons.iter().map(Vec::len).sum()).collect();
    let mut ring_id = 0;
    for (p, rings) in polygons.iter().enumerate() {
        for ring in rings {
            let steps = grid_steps(ring, &xs, &ys);
            let n = steps.len();
            for k in 0..n {
                let (at, out) = steps[k];
                let back = reverse(steps[(k + n - 1) % n].1);
                let dirs = out | back;
                let point = [xs[at.0], ys[at.1]];
                let Some(&(other, q, other_dirs)) = seen.get(&at) else {
                    seen.insert(at, (ring_id, p, dirs));
                    continue;
                };
                if other == ring_id {
                    return Err(Invalid::RingSelfIntersection(point));
                }
                let straight = |d: u8| d == EAST | WEST || d == NORTH | SOUTH;
                if dirs & other_dirs != 0 || (straight(dirs) && straight(other_dirs)) {
                    return Err(Invalid::SelfIntersection(point));
                }
                // A third ring here would share a step with one of these two.
                seen.insert(at, (ring_id, p, dirs | other_dirs));
                if q == p {
                    let (a, b) = (root(&mut parent, ring_id), root(&mut parent, other));
                    if a == b {
                        return Err(Invalid::DisconnectedInterior(point));
                    }
                    parent[a] = b;
                }
            }
            ring_id += 1;
        }
    }
    Ok(())
}

fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn reverse(d: u8) -> u8 {
    match d {
        EAST => WEST,
        WEST => EAST,
        SOUTH => NORTH,
        _ => SOUTH,
    }
}

/// A closed rectilinear ring as unit steps between neighbouring grid points: each
/// point's (column, row) on the grid and the direction it is left in.
fn grid_steps(ring: &[Point], xs: &[i64], ys: &[i64]) -> Vec<((usize, usize), u8)> {
    let index = |p: Point| {
        (
            xs.binary_search(&p[0]).unwrap(),
            ys.binary_search(&p[1]).unwrap(),
        )
    };
    let mut steps = Vec::new();
    for s in ring.windows(2) {
        let ((mut i, mut j), (i1, j1)) = (index(s[0]), index(s[1]));
        while (i, j) != (i1, j1) {
            let d = match (i.cmp(&i1), j.cmp(&j1)) {
                (std::cmp::Ordering::Less, _) => EAST,
                (std::cmp::Ordering::Greater, _) => WEST,
                (_, std::cmp::Ordering::Less) => SOUTH,
                _ => NORTH,
            };
            steps.push(((i, j), d));
            match d {
                EAST => i += 1,
                WEST => i -= 1,
                SOUTH => j += 1,
                _ => j -= 1,
            }
        }
    }
    steps
}

/// The sorted distinct x and y values of some rings' points.
fn axes<'a>(rings: impl Iterator<Item = &'a Vec<Point>>) -> (Vec<i64>, Vec<i64>) {
    let (mut xs, mut ys): (Vec<i64>, Vec<i64>) = rings.flatten().map(|p| (p[0], p[1])).unzip();
    for v in [&mut xs, &mut ys] {
        v.sort_unstable();
        v.dedup();
    }
    (xs, ys)
}

/// The winding number of each cell of the grid `xs` × `ys` span, row by row: an
/// upward segment adds one to every cell to its right and a downward one takes one
/// away, so an exterior counts 1 inside and a hole -1.
fn winding<'a>(rings: impl Iterator<Item = &'a Vec<Point>>, xs: &[i64], ys: &[i64]) -> Vec<i32> {
    let (w, h) = (xs.len() - 1, ys.len() - 1);
    let mut cells = vec![0i32; w * h];
    for s in rings.flat_map(|r| r.windows(2)) {
        let ([x, y0], [x1, y1]) = (s[0], s[1]);
        let i = xs.binary_search(&x).unwrap();
        if x != x1 || i == w {
            continue;
        }
        let sign = if y1 < y0 { 1 } else { -1 };
        let (a, b) = (
            ys.binary_search(&y0.min(y1)).unwrap(),
            ys.binary_search(&y0.max(y1)).unwrap(),
        );
        for j in a..b {
            cells[j * w + i] += sign;
        }
    }
    for row in cells.chunks_mut(w) {
        for i in 1..row.len() {
            row[i] += row[i - 1];
        }
    }
    cells
}

/// The top-left corner of cell `k` of the grid `xs` × `ys` span.
fn corner(k: usize, xs: &[i64], ys: &[i64]) -> Point {
    let w = xs.len() - 1;
    [xs[k % w], ys[k / w]]
}
