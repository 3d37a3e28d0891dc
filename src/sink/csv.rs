//! `predictions.csv`: one row per classified patch, level-0 coordinates.

use std::io::Write;
use std::path::Path;

use super::{Sink, SlideResult};
use crate::error::{Error, Result};
use crate::map::heatmap::argmax;
use crate::output::OutFile;

pub struct PredictionsCsv;

const FILE: &str = "predictions.csv";

impl Sink for PredictionsCsv {
    fn write(&self, r: &SlideResult, dir: &Path) -> Result<Vec<String>> {
        let path = dir.join(FILE);
        let mut f = OutFile::create(&path)?;
        let mut header = String::from("x,y,w,h,tissue_fraction");
        for c in r.classes {
            header.push_str(&format!(",{}", quote(&format!("prob_{}", c.name))));
        }
        header.push_str(",class\n");
        f.write(header.as_bytes())?;
        let grid = &r.plan.grid;
        for (i, &cell) in r.predictions.cells.iter().enumerate() {
            let rect = grid.rect(cell);
            let p = r.predictions.probs(i);
            let w = f.writer();
            let row = (|| -> std::io::Result<()> {
                write!(
                    w,
                    "{},{},{},{},{:.4}",
                    rect.origin.x, rect.origin.y, rect.size.w, rect.size.h, r.predictions.tissue[i]
                )?;
                for v in p {
                    write!(w, ",{v:.6}")?;
                }
                writeln!(w, ",{}", quote(&r.classes[argmax(p).0].name))
            })();
            row.map_err(|e| Error::io(&path, e))?;
        }
        f.finish()?;
        Ok(vec![FILE.into()])
    }
}

/// CSV field quoting (RFC 4180) for names that need it.
fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(super::quote("TUMOR"), "TUMOR");
        assert_eq!(super::quote("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}
