//! GeoJSON for QuPath (File › Import objects from file), level-0 pixel coordinates.
//!
//! `tiles.geojson`: one `tile` object per classified patch, with `classification`
//! (name and colour) and `measurements` (per-class probability, tissue fraction), one
//! per patch that could not be read, classified `Unreadable` with the reason in its
//! properties, followed by the class regions. `regions.geojson`: only the regions, one
//! `annotation` per class whose geometry dissolves all cells of that class, which is
//! what a pathologist looks at first.

use std::path::Path;

use geojson::{Feature, FeatureWriter, Geometry, GeometryValue as Value, JsonObject};
use serde_json::json;

use super::{Sink, SlideResult};
use crate::error::{Error, Result};
use crate::map::heatmap::{argmax, Row};
use crate::map::regions::dissolve;
use crate::output::OutFile;
use crate::pipeline::Class;

pub struct GeoJson;

pub const TILES: &str = "tiles.geojson";
pub const REGIONS: &str = "regions.geojson";

impl Sink for GeoJson {
    fn write(&self, r: &SlideResult, dir: &Path) -> Result<Vec<String>> {
        let regions = region_features(r);

        let path = dir.join(TILES);
        let mut file = OutFile::create(&path)?;
        let mut w = FeatureWriter::from_writer(file.writer());
        let grid = &r.plan.grid;
        let preds = r.predictions;
        for row in preds.rows() {
            let mut props = JsonObject::new();
            props.insert("objectType".into(), json!("tile"));
            let mut measurements = JsonObject::new();
            match row {
                Row::Classified(i) => {
                    let p = preds.probs(i);
                    for (c, v) in r.classes.iter().zip(p) {
                        measurements.insert(format!("prob {}", c.name), json!(round6(*v)));
                    }
                    props.insert(
                        "classification".into(),
                        classification(&r.classes[argmax(p).0]),
                    );
                }
                Row::Unreadable(j) => {
                    let u = &preds.unreadable[j];
                    // Grey, and a name no pipeline's class has.
                    let grey = json!({ "name": "Unreadable", "color": [128, 128, 128] });
                    props.insert("classification".into(), grey);
                    props.insert("status".into(), json!("unreadable"));
                    props.insert("error".into(), json!(u.error));
                }
            }
            let (cell, tissue) = preds.place(row);
            measurements.insert("tissue fraction".into(), json!(round6(tissue)));
            props.insert("measurements".into(), measurements.into());
            let rect = grid.rect(cell);
            let (x0, y0) = (f64::from(rect.origin.x), f64::from(rect.origin.y));
            let (x1, y1) = (f64::from(rect.right()), f64::from(rect.bottom()));
            let ring = vec![[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]];
            let feature = Feature {
                geometry: Some(Geometry::new(Value::new_polygon([ring]))),
                properties: Some(props),
                ..Default::default()
            };
            w.write_feature(&feature)
                .map_err(|e| Error::output(&path, e))?;
        }
        for f in &regions {
            w.write_feature(f).map_err(|e| Error::output(&path, e))?;
        }
        w.finish().map_err(|e| Error::output(&path, e))?;
        drop(w);
        file.finish()?;

        let path = dir.join(REGIONS);
        let mut file = OutFile::create(&path)?;
        let mut w = FeatureWriter::from_writer(file.writer());
        for f in &regions {
            w.write_feature(f).map_err(|e| Error::output(&path, e))?;
        }
        w.finish().map_err(|e| Error::output(&path, e))?;
        drop(w);
        file.finish()?;
        Ok(vec![TILES.into(), REGIONS.into()])
    }
}

fn classification(class: &Class) -> serde_json::Value {
    json!({ "name": class.name, "color": class.color })
}

fn round6(v: f32) -> f64 {
    (f64::from(v) * 1e6).round() / 1e6
}

/// One annotation per class present: its cells' cores dissolved, clipped to the slide.
fn region_features(r: &SlideResult) -> Vec<Feature> {
    let grid = &r.plan.grid;
    let h = r.heatmap;
    let labels = h.labels();
    let polygons = dissolve(&labels, h.cols as usize, h.rows as usize, r.classes.len());
    let (s, off) = (f64::from(grid.stride), grid.core_offset());
    let (w, hh) = (f64::from(grid.slide.w), f64::from(grid.slide.h));
    let to_l0 = |(c, row): (i64, i64)| {
        [
            (c as f64 * s + off).clamp(0.0, w),
            (row as f64 * s + off).clamp(0.0, hh),
        ]
    };
    let cell_area_um2 = s * s * r.um2_per_px();
    polygons
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(k, polys)| {
            let coords: Vec<Vec<Vec<[f64; 2]>>> = polys
                .iter()
                .map(|p| {
                    std::iter::once(&p.exterior)
                        .chain(&p.holes)
                        .map(|ring| ring.iter().map(|&v| to_l0(v)).collect())
                        .collect()
                })
                .collect();
            let cells = labels.iter().filter(|l| **l == Some(k)).count();
            let mut measurements = JsonObject::new();
            measurements.insert("cells".into(), json!(cells));
            measurements.insert(
                "area mm^2".into(),
                json!(cells as f64 * cell_area_um2 / 1e6),
            );
            let mut props = JsonObject::new();
            props.insert("objectType".into(), json!("annotation"));
            props.insert("name".into(), json!(r.classes[k].name));
            props.insert("classification".into(), classification(&r.classes[k]));
            props.insert("isLocked".into(), json!(true));
            props.insert("measurements".into(), measurements.into());
            Feature {
                geometry: Some(Geometry::new(Value::new_multi_polygon(coords))),
                properties: Some(props),
                ..Default::default()
            }
        })
        .collect()
}
