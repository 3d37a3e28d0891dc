//! Dissolving classified cells into class regions. In: a label per grid cell. Out:
//! per class, polygons (an exterior ring and holes) in cell-corner coordinates, the
//! outlines of 4-connected groups of same-class cells.
//!
//! Each cell contributes the sides it does not share with a same-class neighbour, as
//! directed edges walked clockwise (y down). Chaining edges into rings, a vertex where
//! two cells touch only at a corner is left by the rightmost turn, which keeps
//! diagonal neighbours apart (4-connectivity) and every ring simple.

use std::collections::HashMap;

/// A vertex of the cell lattice: (column, row) of a cell corner.
pub type Vertex = (i64, i64);

/// An exterior ring and its holes, each closed (first vertex repeated last).
#[derive(Debug, Clone, PartialEq)]
pub struct Polygon {
    pub exterior: Vec<Vertex>,
    pub holes: Vec<Vec<Vertex>>,
}

/// Polygons of every class present, indexed by class.
pub fn dissolve(
    labels: &[Option<usize>],
    cols: usize,
    rows: usize,
    classes: usize,
) -> Vec<Vec<Polygon>> {
    let mut component = vec![usize::MAX; labels.len()];
    let mut out = vec![Vec::new(); classes];
    let mut stack = Vec::new();
    for start in 0..labels.len() {
        let Some(class) = labels[start] else { continue };
        if component[start] != usize::MAX {
            continue;
        }
        // Flood-fill one 4-connected component.
        let mut members = Vec::new();
        component[start] = start;
        stack.push(start);
        while let Some(i) = stack.pop() {
            members.push(i);
            let (c, r) = (i % cols, i / cols);
            let mut visit = |j: usize| {
                if labels[j] == Some(class) && component[j] == usize::MAX {
                    component[j] = start;
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
        let same = |c: i64, r: i64| {
            c >= 0
                && r >= 0
                && (c as usize) < cols
                && (r as usize) < rows
                && component[r as usize * cols + c as usize] == start
        };
        let mut edges: HashMap<Vertex, Vec<Vertex>> = HashMap::new();
        for &i in &members {
            let (c, r) = ((i % cols) as i64, (i / cols) as i64);
            let mut add = |a: Vertex, b: Vertex| edges.entry(a).or_default().push(b);
            if !same(c, r - 1) {
                add((c, r), (c + 1, r));
            }
            if !same(c + 1, r) {
                add((c + 1, r), (c + 1, r + 1));
            }
            if !same(c, r + 1) {
                add((c + 1, r + 1), (c, r + 1));
            }
            if !same(c - 1, r) {
                add((c, r + 1), (c, r));
            }
        }
        let mut rings = trace_rings(edges);
        // The exterior encloses the most area; the other rings are holes.
        let ext = (0..rings.len())
            .max_by(|&a, &b| area2(&rings[a]).abs().cmp(&area2(&rings[b]).abs()))
            .expect("a component has at least one ring");
        let exterior = rings.swap_remove(ext);
        out[class].push(Polygon {
            exterior,
            holes: rings,
        });
    }
    out
}

fn trace_rings(mut edges: HashMap<Vertex, Vec<Vertex>>) -> Vec<Vec<Vertex>> {
    let mut rings = Vec::new();
    let mut starts: Vec<Vertex> = edges.keys().copied().collect();
    starts.sort_unstable();
    for s in starts {
        while let Some(first) = edges.get_mut(&s).and_then(Vec::pop) {
            let mut ring = vec![s];
            let (mut prev, mut cur) = (s, first);
            while cur != s {
                ring.push(cur);
                let outs = edges
                    .get_mut(&cur)
                    .expect("boundary edges form closed rings");
                let dir = (cur.0 - prev.0, cur.1 - prev.1);
                // Rightmost turn first (y down: right of (dx, dy) is (-dy, dx)), then straight, then left.
                let right = (-dir.1, dir.0);
                let pick = [right, dir, (dir.1, -dir.0)]
                    .iter()
                    .find_map(|d| outs.iter().position(|&v| (v.0 - cur.0, v.1 - cur.1) == *d))
                    .expect("a ring never turns back");
                let next = outs.swap_remove(pick);
                prev = cur;
                cur = next;
            }
            ring.push(s);
            rings.push(simplify(ring));
        }
    }
    rings
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

/// Twice the signed area (shoelace).
fn area2(ring: &[Vertex]) -> i64 {
    ring.windows(2)
        .map(|w| w[0].0 * w[1].1 - w[1].0 * w[0].1)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&str]) -> (Vec<Option<usize>>, usize, usize) {
        let labels = rows
            .iter()
            .flat_map(|r| r.chars().map(|ch| ch.to_digit(10).map(|d| d as usize)))
            .collect();
        (labels, rows[0].len(), rows.len())
    }

    #[test]
    fn square_block_is_one_rectangle() {
        let (l, c, r) = grid(&["00.", "00.", "..."]);
        let polys = dissolve(&l, c, r, 1);
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
        let p = &dissolve(&l, c, r, 1)[0];
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].holes.len(), 1);
        assert_eq!(area2(&p[0].exterior).abs(), 2 * 9);
        assert_eq!(area2(&p[0].holes[0]).abs(), 2);
    }

    #[test]
    fn diagonal_cells_stay_apart_and_classes_split() {
        let (l, c, r) = grid(&["01", "10"]);
        let p = dissolve(&l, c, r, 2);
        assert_eq!((p[0].len(), p[1].len()), (2, 2));
        for poly in p.iter().flatten() {
            assert_eq!(area2(&poly.exterior).abs(), 2);
            assert_eq!(poly.exterior.len(), 5);
        }
    }

    #[test]
    fn pinched_ring_keeps_areas() {
        // Two blocks touching at one corner around a hole-like gap.
        let (l, c, r) = grid(&["00..", "00..", "..00", "..00"]);
        let p = &dissolve(&l, c, r, 1)[0];
        assert_eq!(p.len(), 2);
        let total: i64 = p.iter().map(|q| area2(&q.exterior).abs()).sum();
        assert_eq!(total, 2 * 8);
    }
}
