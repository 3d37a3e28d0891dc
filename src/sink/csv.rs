//! `predictions.csv`: one row per tissue patch, level-0 coordinates. `status` is `ok`
//! for a classified patch and `unreadable` for one that could not be read, whose
//! probabilities and class are empty.

use std::io::Write;
use std::path::Path;

use super::{Sink, SlideResult};
use crate::error::{Error, Result};
use crate::map::heatmap::{argmax, Row};
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
        header.push_str(",class,status\n");
        f.write(header.as_bytes())?;
        let grid = &r.plan.grid;
        let preds = r.predictions;
        for row in preds.rows() {
            let (cell, tissue) = preds.place(row);
            let rect = grid.rect(cell);
            let w = f.writer();
            let line = (|| -> std::io::Result<()> {
                write!(
                    w,
                    "{},{},{},{},{tissue:.4}",
                    rect.origin.x, rect.origin.y, rect.size.w, rect.size.h
                )?;
                match row {
                    Row::Classified(i) => {
                        let p = preds.probs(i);
                        for v in p {
                            write!(w, ",{v:.6}")?;
                        }
                        writeln!(w, ",{},ok", quote(&r.classes[argmax(p).0].name))
                    }
                    Row::Unreadable(_) => {
                        writeln!(w, "{},unreadable", ",".repeat(r.classes.len() + 1))
                    }
                }
            })();
            line.map_err(|e| Error::io(&path, e))?;
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
