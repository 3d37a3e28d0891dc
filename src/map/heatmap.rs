//! Heatmap assembly. In: the grid and the probabilities of the patches that were
//! classified. Out: a per-class probability map with one value per grid cell.
//!
//! A cell has data only when its own patch was classified (background is "no data",
//! never a class). With stride < patch several patches cover a cell's core; its value
//! is their average weighted by covered area (see [`Grid::overlap_weights`]). Sums run
//! in a fixed order, so the map does not depend on thread scheduling.

use crate::map::geom::Cell;
use crate::map::grid::Grid;

/// Classified patches: cells, tissue fractions and probabilities (row-major); and the
/// tissue patches that could not be read, which no map shows.
#[derive(Debug, Clone)]
pub struct Predictions {
    pub classes: usize,
    pub cells: Vec<Cell>,
    pub tissue: Vec<f32>,
    pub probs: Vec<f32>,
    /// In grid order.
    pub unreadable: Vec<Unreadable>,
}

/// A tissue patch that could not be read.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub cell: Cell,
    /// Its tissue fraction as far as the mask could tell.
    pub tissue: f32,
    /// Why, without the slide's name.
    pub error: String,
}

/// A row of the per-patch outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Row {
    /// Index into the classified patches.
    Classified(usize),
    /// Index into [`Predictions::unreadable`].
    Unreadable(usize),
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn probs(&self, i: usize) -> &[f32] {
        &self.probs[i * self.classes..(i + 1) * self.classes]
    }

    /// The cell and tissue fraction of a row, classified or not.
    pub fn place(&self, row: Row) -> (Cell, f32) {
        match row {
            Row::Classified(i) => (self.cells[i], self.tissue[i]),
            Row::Unreadable(j) => (self.unreadable[j].cell, self.unreadable[j].tissue),
        }
    }

    /// Classified and unreadable patches together, in grid order, for the per-patch
    /// outputs.
    pub fn rows(&self) -> Vec<Row> {
        let key = |c: &Cell| (c.row, c.col);
        let (mut i, mut j) = (0, 0);
        let mut rows = Vec::with_capacity(self.cells.len() + self.unreadable.len());
        while i < self.cells.len() || j < self.unreadable.len() {
            let take_classified = match (self.cells.get(i), self.unreadable.get(j)) {
                (Some(c), Some(u)) => key(c) < key(&u.cell),
                (c, _) => c.is_some(),
            };
            if take_classified {
                rows.push(Row::Classified(i));
                i += 1;
            } else {
                rows.push(Row::Unreadable(j));
                j += 1;
            }
        }
        rows
    }
}

/// Index and value of the largest probability; the first wins ties.
pub fn argmax(p: &[f32]) -> (usize, f32) {
    p.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |best, (i, v)| if v > best.1 { (i, v) } else { best },
    )
}

#[derive(Debug, Clone)]
pub struct Heatmap {
    pub cols: u32,
    pub rows: u32,
    pub classes: usize,
    values: Vec<f32>,
    has: Vec<bool>,
}

impl Heatmap {
    pub fn assemble(grid: &Grid, preds: &Predictions) -> Self {
        let (cols, rows, k) = (grid.cols, grid.rows, preds.classes);
        let mut patch_of = vec![usize::MAX; grid.len()];
        for (i, &c) in preds.cells.iter().enumerate() {
            patch_of[grid.index(c)] = i;
        }
        let weights = grid.overlap_weights();
        let mut values = vec![0f32; grid.len() * k];
        let mut has = vec![false; grid.len()];
        let mut acc = vec![0f64; k];
        for cell in grid.cells() {
            let at = grid.index(cell);
            if patch_of[at] == usize::MAX {
                continue;
            }
            acc.iter_mut().for_each(|a| *a = 0.0);
            let mut total = 0f64;
            for &(dy, wy) in &weights {
                for &(dx, wx) in &weights {
                    let (c, r) = (i64::from(cell.col) + dx, i64::from(cell.row) + dy);
                    if c < 0 || r < 0 || c >= i64::from(cols) || r >= i64::from(rows) {
                        continue;
                    }
                    let p = patch_of[r as usize * cols as usize + c as usize];
                    if p == usize::MAX {
                        continue;
                    }
                    let w = wx * wy;
                    total += w;
                    for (a, &v) in acc.iter_mut().zip(preds.probs(p)) {
                        *a += w * f64::from(v);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                values[at * k + j] = (a / total) as f32;
            }
            has[at] = true;
        }
        Self {
            cols,
            rows,
            classes: k,
            values,
            has,
        }
    }

    /// Probabilities of a cell, or `None` for background.
    pub fn get(&self, c: Cell) -> Option<&[f32]> {
        let i = c.row as usize * self.cols as usize + c.col as usize;
        self.has[i].then(|| &self.values[i * self.classes..(i + 1) * self.classes])
    }

    /// The winning class of every cell, `None` for background, row-major.
    pub fn labels(&self) -> Vec<Option<usize>> {
        (0..self.has.len())
            .map(|i| {
                self.has[i]
                    .then(|| argmax(&self.values[i * self.classes..(i + 1) * self.classes]).0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::geom::Size;

    fn preds(cells: &[(u32, u32)], probs: &[[f32; 2]]) -> Predictions {
        Predictions {
            classes: 2,
            cells: cells.iter().map(|&(col, row)| Cell { col, row }).collect(),
            tissue: vec![1.0; cells.len()],
            probs: probs.iter().flatten().copied().collect(),
            unreadable: Vec::new(),
        }
    }

    #[test]
    fn without_overlap_cells_are_their_patches() {
        let grid = Grid::new(Size::new(300, 100), 100, 100);
        let p = preds(&[(0, 0), (2, 0)], &[[0.9, 0.1], [0.2, 0.8]]);
        let h = Heatmap::assemble(&grid, &p);
        assert_eq!(h.get(Cell { col: 0, row: 0 }), Some(&[0.9, 0.1][..]));
        assert_eq!(
            h.get(Cell { col: 1, row: 0 }),
            None,
            "background stays no data"
        );
        assert_eq!(h.labels(), vec![Some(0), None, Some(1)]);
    }

    #[test]
    fn half_overlap_averages_by_covered_area() {
        // Patch 100, stride 50: one row of 3 cells. Cell 1's core is covered fully by
        // patch 1 and half by patches 0 and 2: weights 0.5, 1, 0.5.
        let grid = Grid::new(Size::new(200, 100), 100, 50);
        assert_eq!((grid.cols, grid.rows), (3, 1));
        let p = preds(
            &[(0, 0), (1, 0), (2, 0)],
            &[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
        );
        let h = Heatmap::assemble(&grid, &p);
        let mid = h.get(Cell { col: 1, row: 0 }).unwrap();
        assert!(
            (mid[0] - 0.5).abs() < 1e-6 && (mid[1] - 0.5).abs() < 1e-6,
            "{mid:?}"
        );
        // Edge cell 0: itself (1.0) and patch 1 (0.5): (1·1 + 0.5·0) / 1.5 = 2/3.
        let edge = h.get(Cell { col: 0, row: 0 }).unwrap();
        assert!((edge[0] - 2.0 / 3.0).abs() < 1e-6, "{edge:?}");
    }

    #[test]
    fn argmax_prefers_first_on_ties() {
        assert_eq!(argmax(&[0.5, 0.5]).0, 0);
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), (1, 0.7));
    }

    #[test]
    fn rows_merge_unreadable_patches_in_grid_order() {
        let mut p = preds(&[(0, 0), (2, 1)], &[[0.9, 0.1], [0.2, 0.8]]);
        p.unreadable = [(1, 0), (0, 1), (3, 1)]
            .map(|(col, row)| Unreadable {
                cell: Cell { col, row },
                tissue: 0.5,
                error: "corrupt".into(),
            })
            .to_vec();
        assert_eq!(
            p.rows(),
            [
                Row::Classified(0),
                Row::Unreadable(0),
                Row::Unreadable(1),
                Row::Classified(1),
                Row::Unreadable(2)
            ]
        );
        let h = Heatmap::assemble(&Grid::new(Size::new(400, 200), 100, 100), &p);
        assert_eq!(h.get(Cell { col: 1, row: 0 }), None, "no map shows them");
    }
}
