//! Class regions drawn on a slide. In: a QuPath GeoJSON export (a FeatureCollection, a
//! bare Feature or a list of Features; Polygon and MultiPolygon with holes; the class
//! from `properties.classification.name`, or `classification` as a bare string; any
//! `objectType`; level-0 pixel coordinates) and the pipeline's classes. Out:
//! [`Annotations`], which say how much of any level-0 rectangle each class covers.
//!
//! Coverage is exact: each ring is clipped to the rectangle (Sutherland–Hodgman, which
//! gives the right area for any simple ring against a convex window) and holes are
//! subtracted.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::map::geom::{L0Rect, Size};

type Ring = Vec<[f64; 2]>;

/// One polygon of one class: an outer ring and its holes, with their bounding box.
#[derive(Debug, Clone)]
struct Polygon {
    class: usize,
    outer: Ring,
    holes: Vec<Ring>,
    /// min x, min y, max x, max y.
    bbox: [f64; 4],
}

/// How annotation class names become pipeline classes.
#[derive(Debug, Clone, Default)]
pub struct ClassMap {
    /// Annotation name (lower case) → pipeline class name, from `--class-map`.
    pub renames: HashMap<String, String>,
    /// Leave out features of classes the pipeline does not have, instead of failing.
    pub skip_unknown: bool,
}

/// A slide's class regions.
#[derive(Debug, Clone, Default)]
pub struct Annotations {
    polygons: Vec<Polygon>,
    /// Features left out: of an unknown class (`skip_unknown`) or with no class.
    pub skipped: usize,
}

impl Annotations {
    /// Reads the QuPath GeoJSON at `path` for a slide of `slide` level-0 pixels, mapping
    /// class names (case-insensitively) to `classes` through `map`.
    pub fn read(path: &Path, classes: &[String], map: &ClassMap, slide: Size) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::dataset(path, format!("not valid JSON: {e}")))?;
        Self::parse(&json, classes, map, slide).map_err(|e| Error::dataset(path, e))
    }

    fn parse(
        json: &Value,
        classes: &[String],
        map: &ClassMap,
        slide: Size,
    ) -> std::result::Result<Self, String> {
        let features: Vec<&Value> = match json {
            Value::Array(a) => a.iter().collect(),
            Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                Some("FeatureCollection") => o
                    .get("features")
                    .and_then(Value::as_array)
                    .ok_or("a FeatureCollection without a features list")?
                    .iter()
                    .collect(),
                Some("Feature") => vec![json],
                other => return Err(format!("expected GeoJSON Features, found type {other:?}")),
            },
            _ => return Err("expected GeoJSON Features".into()),
        };
        let mut out = Annotations::default();
        for (i, f) in features.iter().enumerate() {
            let at = |msg: String| format!("feature {i}: {msg}");
            let Some(name) = class_name(f) else {
                out.skipped += 1;
                continue;
            };
            let wanted = map.renames.get(&name.to_lowercase()).unwrap_or(&name);
            let Some(class) = classes.iter().position(|c| c.eq_ignore_ascii_case(wanted)) else {
                if map.skip_unknown {
                    out.skipped += 1;
                    continue;
                }
                return Err(at(format!(
                    "class {name:?} is none of the pipeline's ({}); map it with --class-map, \
                     or pass --skip-unknown",
                    classes.join(", ")
                )));
            };
            let geometry = f.get("geometry").ok_or_else(|| at("no geometry".into()))?;
            let coords = geometry.get("coordinates");
            let polygons = match geometry.get("type").and_then(Value::as_str) {
                Some("Polygon") => vec![coords.ok_or_else(|| at("no coordinates".into()))?],
                Some("MultiPolygon") => coords
                    .and_then(Value::as_array)
                    .ok_or_else(|| at("no coordinates".into()))?
                    .iter()
                    .collect(),
                other => {
                    return Err(at(format!(
                        "geometry {other:?}: only Polygon and MultiPolygon regions are classes"
                    )));
                }
            };
            for p in polygons {
                let rings = p
                    .as_array()
                    .filter(|r| !r.is_empty())
                    .ok_or_else(|| at("a polygon without rings".into()))?;
                let mut rings = rings.iter().map(|r| ring(r, slide).map_err(&at));
                let outer = rings.next().expect("not empty")?;
                let holes = rings.collect::<std::result::Result<Vec<_>, _>>()?;
                out.polygons.push(Polygon {
                    class,
                    bbox: bbox(&outer),
                    outer,
                    holes,
                });
            }
        }
        Ok(out)
    }

    /// Whether any region was read.
    pub fn is_empty(&self) -> bool {
        self.polygons.is_empty()
    }

    /// The level-0 rectangle all regions lie in, if any.
    pub fn bounds(&self) -> Option<[f64; 4]> {
        self.polygons.iter().map(|p| p.bbox).reduce(|a, b| {
            [
                a[0].min(b[0]),
                a[1].min(b[1]),
                a[2].max(b[2]),
                a[3].max(b[3]),
            ]
        })
    }

    /// The share of `rect` each of `classes` classes covers (regions of one class that
    /// overlap count once at most: shares are capped at 1).
    pub fn coverage(&self, rect: L0Rect, classes: usize) -> Vec<f64> {
        let r = [
            f64::from(rect.origin.x),
            f64::from(rect.origin.y),
            f64::from(rect.right()),
            f64::from(rect.bottom()),
        ];
        let area = (r[2] - r[0]) * (r[3] - r[1]);
        let mut cover = vec![0f64; classes];
        for p in &self.polygons {
            let b = p.bbox;
            if b[0] >= r[2] || b[2] <= r[0] || b[1] >= r[3] || b[3] <= r[1] {
                continue;
            }
            let inside =
                clipped_area(&p.outer, r) - p.holes.iter().map(|h| clipped_area(h, r)).sum::<f64>();
            cover[p.class] += inside.max(0.0) / area;
        }
        cover.iter_mut().for_each(|c| *c = c.min(1.0));
        cover
    }

    /// Whether the level-0 point lies in a region of `class` (inside its outer ring and
    /// outside its holes).
    pub fn contains(&self, class: usize, x: f64, y: f64) -> bool {
        self.polygons.iter().any(|p| {
            p.class == class
                && point_in_ring(&p.outer, x, y)
                && !p.holes.iter().any(|h| point_in_ring(h, x, y))
        })
    }
}

/// A feature's class name: QuPath's `classification.name`, or `classification` as a
/// string (older exports and hand-written files).
fn class_name(feature: &Value) -> Option<String> {
    let c = feature.get("properties")?.get("classification")?;
    c.get("name")
        .and_then(Value::as_str)
        .or_else(|| c.as_str())
        .map(String::from)
}

/// A GeoJSON ring: closed (first point repeated last), at least a triangle, inside the
/// slide. Returned without the repeated point.
fn ring(value: &Value, slide: Size) -> std::result::Result<Ring, String> {
    let points = value
        .as_array()
        .ok_or("a ring that is not a list of points")?;
    let mut ring = Vec::with_capacity(points.len());
    for p in points {
        let xy = p
            .as_array()
            .filter(|xy| xy.len() >= 2)
            .and_then(|xy| Some([xy[0].as_f64()?, xy[1].as_f64()?]))
            .ok_or_else(|| format!("a point that is not [x, y]: {p}"))?;
        let (w, h) = (f64::from(slide.w), f64::from(slide.h));
        if !(0.0..=w).contains(&xy[0]) || !(0.0..=h).contains(&xy[1]) {
            return Err(format!(
                "point ({}, {}) lies outside the slide ({w} × {h} level-0 pixels): \
                 coordinates must be level-0 pixels of this slide",
                xy[0], xy[1]
            ));
        }
        ring.push(xy);
    }
    if ring.len() < 4 || ring.first() != ring.last() {
        return Err(format!(
            "a ring that does not close (GeoJSON repeats the first point last; {} points)",
            ring.len()
        ));
    }
    ring.pop();
    Ok(ring)
}

fn bbox(ring: &Ring) -> [f64; 4] {
    ring.iter().fold(
        [
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
        |b, p| {
            [
                b[0].min(p[0]),
                b[1].min(p[1]),
                b[2].max(p[0]),
                b[3].max(p[1]),
            ]
        },
    )
}

/// Area of `ring` inside the rectangle `r` (min x, min y, max x, max y).
fn clipped_area(ring: &Ring, r: [f64; 4]) -> f64 {
    // Keep the side of each of the four edges: x ≥ min x, x ≤ max x, y ≥ min y, y ≤ max y.
    let mut poly = ring.clone();
    for (axis, bound, keep_above) in [
        (0, r[0], true),
        (0, r[2], false),
        (1, r[1], true),
        (1, r[3], false),
    ] {
        let inside = |p: &[f64; 2]| {
            if keep_above {
                p[axis] >= bound
            } else {
                p[axis] <= bound
            }
        };
        let mut next = Vec::with_capacity(poly.len() + 4);
        for i in 0..poly.len() {
            let (a, b) = (poly[i], poly[(i + 1) % poly.len()]);
            let (ia, ib) = (inside(&a), inside(&b));
            if ia {
                next.push(a);
            }
            if ia != ib {
                let t = (bound - a[axis]) / (b[axis] - a[axis]);
                next.push([a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])]);
            }
        }
        poly = next;
        if poly.is_empty() {
            return 0.0;
        }
    }
    shoelace(&poly).abs()
}

fn shoelace(ring: &[[f64; 2]]) -> f64 {
    let n = ring.len();
    (0..n)
        .map(|i| {
            let (a, b) = (ring[i], ring[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum::<f64>()
        / 2.0
}

fn point_in_ring(ring: &Ring, x: f64, y: f64) -> bool {
    let mut inside = false;
    let n = ring.len();
    for i in 0..n {
        let (a, b) = (ring[i], ring[(i + 1) % n]);
        if (a[1] > y) != (b[1] > y) && x < a[0] + (y - a[1]) / (b[1] - a[1]) * (b[0] - a[0]) {
            inside = !inside;
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::geom::L0Point;
    use serde_json::json;

    const SLIDE: Size = Size { w: 1000, h: 1000 };

    fn classes() -> Vec<String> {
        vec!["TUMOR".into(), "STROMA".into()]
    }

    fn rect(x: u32, y: u32, side: u32) -> L0Rect {
        L0Rect {
            origin: L0Point { x, y },
            size: Size::new(side, side),
        }
    }

    fn square(x: f64, y: f64, s: f64) -> Value {
        json!([[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]])
    }

    #[test]
    fn coverage_is_exact_with_holes_concave_rings_and_multipolygons() {
        // Tumour: a 400 px square at (100, 100) with a 100 px hole at (200, 200); stroma:
        // an L of two squares, as one MultiPolygon of a bare-string class.
        let fc = json!({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"objectType": "annotation",
              "classification": {"name": "Tumor", "color": [200, 0, 0]}},
             "geometry": {"type": "Polygon",
              "coordinates": [square(100.0, 100.0, 400.0), square(200.0, 200.0, 100.0)]}},
            {"type": "Feature", "properties": {"classification": "stroma"},
             "geometry": {"type": "MultiPolygon",
              "coordinates": [[square(600.0, 600.0, 100.0)], [square(700.0, 600.0, 100.0)]]}},
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
              "coordinates": [square(0.0, 0.0, 10.0)]}}
        ]});
        let a = Annotations::parse(&fc, &classes(), &ClassMap::default(), SLIDE).unwrap();
        assert_eq!(a.skipped, 1, "the feature without a class");
        assert_eq!(a.coverage(rect(100, 100, 100), 2), [1.0, 0.0]);
        // Over the hole's corner: 3/4 tumour.
        assert_eq!(a.coverage(rect(150, 150, 100), 2), [0.75, 0.0]);
        assert_eq!(a.coverage(rect(200, 200, 100), 2), [0.0, 0.0]);
        // Half over the tumour's edge, and across the stroma's two squares.
        assert_eq!(a.coverage(rect(450, 100, 100), 2), [0.5, 0.0]);
        assert_eq!(a.coverage(rect(650, 600, 100), 2), [0.0, 1.0]);
        assert!(a.contains(0, 150.0, 150.0) && !a.contains(0, 250.0, 250.0));
        assert!(a.contains(1, 790.0, 650.0) && !a.contains(1, 650.0, 750.0));
    }

    #[test]
    fn bad_features_are_named() {
        let err =
            |v: Value, map: &ClassMap| Annotations::parse(&v, &classes(), map, SLIDE).unwrap_err();
        let feature = |class: &str, ring: Value| {
            json!({"type": "Feature", "properties": {"classification": {"name": class}},
                   "geometry": {"type": "Polygon", "coordinates": [ring]}})
        };
        let open = json!([[0, 0], [10, 0], [10, 10], [0, 10]]);
        assert!(err(json!([feature("Tumor", open)]), &ClassMap::default())
            .starts_with("feature 0: a ring that does not close"));
        let outside = square(900.0, 900.0, 200.0);
        assert!(
            err(json!([feature("Tumor", outside)]), &ClassMap::default())
                .contains("outside the slide")
        );
        let unknown = json!([
            feature("Tumor", square(0.0, 0.0, 5.0)),
            feature("Necrosis", square(0.0, 0.0, 5.0))
        ]);
        let e = err(unknown.clone(), &ClassMap::default());
        assert!(
            e.starts_with(
                "feature 1: class \"Necrosis\" is none of the pipeline's (TUMOR, STROMA)"
            ),
            "{e}"
        );
        let skip = ClassMap {
            skip_unknown: true,
            ..Default::default()
        };
        assert_eq!(
            Annotations::parse(&unknown, &classes(), &skip, SLIDE)
                .unwrap()
                .skipped,
            1
        );
        let renamed = ClassMap {
            renames: HashMap::from([("necrosis".into(), "STROMA".into())]),
            skip_unknown: false,
        };
        let a = Annotations::parse(&unknown, &classes(), &renamed, SLIDE).unwrap();
        assert_eq!(a.coverage(rect(0, 0, 5), 2), [1.0, 1.0]);
    }
}
