//! Raster backend: plain (strip or tiled) TIFF, PNG and JPEG, the images OpenSlide
//! refuses, such as Kather's 5000×5000 RGB TIFFs. A TIFF region read decodes only the
//! strips or tiles it touches; a small cache of decoded chunks serves neighbouring
//! patches, so a strip is decoded about once per row of patches. PNG and JPEG cannot
//! be read in parts and are decoded whole, only below a size limit.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use image::RgbImage;
use tiff::decoder::ifd::Value;
use tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use tiff::tags::{PlanarConfiguration, ResolutionUnit, Tag};
use tiff::ColorType;

use super::{Level, SlideInfo, SlideSource};
use crate::error::{Error, Result};
use crate::map::geom::{L0Point, Size};

/// Longest side accepted from any raster file; beyond this the header is corrupt or the
/// image belongs in a pyramidal format.
const MAX_SIDE: u32 = 1 << 20;
/// PNG and JPEG are decoded whole: refuse more pixels than this.
const MAX_WHOLE_DECODE_PIXELS: u64 = 1 << 27;
/// Decoded TIFF chunks kept for neighbouring patches.
const CHUNK_CACHE_BYTES: usize = 96 << 20;

pub struct RasterSource {
    info: SlideInfo,
    pixels: Pixels,
}

enum Pixels {
    Whole(RgbImage),
    Tiff(TiffChunks),
}

/// True when the file starts with a TIFF or BigTIFF header.
pub fn is_tiff(path: &Path) -> Result<bool> {
    let mut head = [0u8; 4];
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    if file.read_exact(&mut head).is_err() {
        return Ok(false);
    }
    Ok(matches!(
        head,
        [b'I', b'I', 42 | 43, 0] | [b'M', b'M', 0, 42 | 43]
    ))
}

/// Whether a JPEG file ends with its end-of-image marker (FF D9), allowing the zero
/// padding some writers append.
fn ends_with_jpeg_eoi(path: &Path) -> Result<bool> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let tail_len = len.min(4096);
    file.seek(SeekFrom::Start(len - tail_len))
        .map_err(|e| Error::io(path, e))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    file.read_to_end(&mut tail)
        .map_err(|e| Error::io(path, e))?;
    let end = tail.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    Ok(tail[..end].ends_with(&[0xFF, 0xD9]))
}

impl RasterSource {
    pub fn open(path: &Path) -> Result<Self> {
        if is_tiff(path)? {
            let (chunks, mpp) = TiffChunks::open(path)?;
            let info = single_level_info(path, "tiff", chunks.size, mpp);
            return Ok(Self {
                info,
                pixels: Pixels::Tiff(chunks),
            });
        }
        let reader = image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| Error::io(path, e))?;
        let format = reader
            .format()
            .map(|f| format!("{f:?}").to_ascii_lowercase())
            .ok_or_else(|| Error::slide(path, "unrecognised image format"))?;
        let (w, h) = image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| Error::io(path, e))?
            .into_dimensions()
            .map_err(|e| Error::slide(path, format!("cannot read image header: {e}")))?;
        check_dimensions(path, w, h)?;
        // The JPEG decoder fills a truncated file's missing rows with grey, which would
        // be mapped as if it were tissue-free glass.
        if format == "jpeg" && !ends_with_jpeg_eoi(path)? {
            return Err(Error::slide(
                path,
                "truncated JPEG: the file does not end with an end-of-image marker",
            ));
        }
        if u64::from(w) * u64::from(h) > MAX_WHOLE_DECODE_PIXELS {
            return Err(Error::slide(
                path,
                format!(
                    "{w}×{h} {format} is too large to decode whole; convert it to a tiled pyramidal TIFF \
                     (e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg`)"
                ),
            ));
        }
        let image = reader
            .decode()
            .map_err(|e| Error::slide(path, format!("cannot decode {format}: {e}")))?
            .into_rgb8();
        let info = single_level_info(path, &format, Size::new(w, h), None);
        Ok(Self {
            info,
            pixels: Pixels::Whole(image),
        })
    }
}

const RASTER_READER: &str = "histomap raster (image, tiff)";

fn single_level_info(path: &Path, format: &str, size: Size, mpp: Option<f64>) -> SlideInfo {
    SlideInfo {
        path: path.to_path_buf(),
        format: format.to_string(),
        reader: RASTER_READER.into(),
        size,
        levels: vec![Level {
            size,
            downsample: 1.0,
        }],
        mpp,
        objective_power: None,
        icc_profile_bytes: None,
    }
}

fn check_dimensions(path: &Path, w: u32, h: u32) -> Result<()> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(Error::slide(
            path,
            format!("absurd image dimensions {w}×{h} (each side must be 1..={MAX_SIDE})"),
        ));
    }
    Ok(())
}

impl SlideSource for RasterSource {
    fn info(&self) -> &SlideInfo {
        &self.info
    }

    fn read_region(&self, origin: L0Point, level: usize, size: Size) -> Result<RgbImage> {
        if level != 0 {
            return Err(Error::slide(
                self.path(),
                format!("level {level} does not exist"),
            ));
        }
        let mut out = RgbImage::from_pixel(size.w, size.h, image::Rgb([255, 255, 255]));
        match &self.pixels {
            Pixels::Whole(img) => blit(img, L0Point { x: 0, y: 0 }, &mut out, origin),
            Pixels::Tiff(chunks) => chunks.read_into(&self.info.path, origin, &mut out)?,
        }
        Ok(out)
    }
}

type TiffDecoder = Decoder<BufReader<File>>;

/// A TIFF read in strips or tiles ("chunks"), decoded to RGB on demand.
struct TiffChunks {
    size: Size,
    chunk: Size,
    chunks_across: u32,
    samples: usize,
    /// Idle decoders, one per reader thread at most; each owns its file handle.
    decoders: Mutex<Vec<TiffDecoder>>,
    cache: Mutex<ChunkCache>,
    path: std::path::PathBuf,
}

#[derive(Default)]
struct ChunkCache {
    map: HashMap<u32, Arc<RgbImage>>,
    order: VecDeque<u32>,
    bytes: usize,
}

impl TiffChunks {
    fn open(path: &Path) -> Result<(Self, Option<f64>)> {
        let mut dec = Self::decoder(path)?;
        let bad =
            |e: tiff::TiffError| Error::slide(path, format!("invalid or truncated TIFF: {e}"));
        let (w, h) = dec.dimensions().map_err(bad)?;
        check_dimensions(path, w, h)?;
        let samples = match dec.colortype().map_err(bad)? {
            ColorType::RGB(8) => 3,
            ColorType::RGBA(8) => 4,
            ColorType::Gray(8) => 1,
            other => {
                return Err(Error::slide(
                    path,
                    format!(
                        "unsupported TIFF pixel type {other:?} (8-bit RGB, RGBA or grey expected)"
                    ),
                ))
            }
        };
        let planar = dec
            .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
            .map_err(bad)?;
        if planar == Some(PlanarConfiguration::Planar.to_u16()) {
            return Err(Error::slide(
                path,
                "planar (separate-plane) TIFFs are not supported",
            ));
        }
        let (cw, ch) = dec.chunk_dimensions();
        if cw == 0 || ch == 0 {
            return Err(Error::slide(
                path,
                "invalid TIFF: zero-sized strips or tiles",
            ));
        }
        let chunks_across = match dec.get_chunk_type() {
            ChunkType::Strip => 1,
            ChunkType::Tile => w.div_ceil(cw),
        };
        let mpp = tiff_mpp(&mut dec);
        let chunks = Self {
            size: Size::new(w, h),
            chunk: Size::new(cw, ch),
            chunks_across,
            samples,
            decoders: Mutex::new(vec![dec]),
            cache: Mutex::new(ChunkCache::default()),
            path: path.to_path_buf(),
        };
        Ok((chunks, mpp))
    }

    fn decoder(path: &Path) -> Result<TiffDecoder> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut limits = Limits::default();
        limits.decoding_buffer_size = 512 << 20;
        Decoder::new(BufReader::new(file))
            .map(|d| d.with_limits(limits))
            .map_err(|e| Error::slide(path, format!("invalid or truncated TIFF: {e}")))
    }

    fn read_into(&self, path: &Path, origin: L0Point, out: &mut RgbImage) -> Result<()> {
        let x1 = (origin.x + out.width()).min(self.size.w);
        let y1 = (origin.y + out.height()).min(self.size.h);
        if origin.x >= x1 || origin.y >= y1 {
            return Ok(());
        }
        let (c0, c1) = (origin.x / self.chunk.w, (x1 - 1) / self.chunk.w);
        let (r0, r1) = (origin.y / self.chunk.h, (y1 - 1) / self.chunk.h);
        for row in r0..=r1 {
            for col in c0..=c1 {
                let chunk = self.chunk(path, row * self.chunks_across + col)?;
                let at = L0Point {
                    x: col * self.chunk.w,
                    y: row * self.chunk.h,
                };
                blit(&chunk, at, out, origin);
            }
        }
        Ok(())
    }

    fn chunk(&self, path: &Path, index: u32) -> Result<Arc<RgbImage>> {
        if let Some(hit) = self.cache.lock().expect("cache lock").map.get(&index) {
            return Ok(hit.clone());
        }
        let idle = self.decoders.lock().expect("decoder lock").pop();
        let mut dec = match idle {
            Some(d) => d,
            None => Self::decoder(path)?,
        };
        // A decoder that failed may be left mid-chunk: retry once on a fresh one, and
        // keep only a decoder whose last read succeeded.
        let decoded = match self.decode(&mut dec, index) {
            Err(_) => {
                dec = Self::decoder(path)?;
                self.decode(&mut dec, index)
            }
            ok => ok,
        };
        if decoded.is_ok() {
            self.decoders.lock().expect("decoder lock").push(dec);
        }
        let img = Arc::new(decoded?);

        let mut cache = self.cache.lock().expect("cache lock");
        let bytes = img.as_raw().len();
        if cache.map.insert(index, img.clone()).is_none() {
            cache.order.push_back(index);
            cache.bytes += bytes;
        }
        while cache.bytes > CHUNK_CACHE_BYTES && cache.order.len() > 1 {
            let old = cache.order.pop_front().expect("non-empty");
            if let Some(gone) = cache.map.remove(&old) {
                cache.bytes -= gone.as_raw().len();
            }
        }
        Ok(img)
    }

    fn decode(&self, dec: &mut TiffDecoder, index: u32) -> Result<RgbImage> {
        let (w, h) = dec.chunk_data_dimensions(index);
        let data = match dec.read_chunk(index) {
            Ok(DecodingResult::U8(v)) => v,
            Ok(_) => {
                return Err(Error::slide(
                    &self.path,
                    "unexpected sample type in TIFF chunk",
                ))
            }
            Err(e) => {
                return Err(Error::slide(
                    &self.path,
                    format!("cannot decode TIFF chunk {index}: {e}"),
                ))
            }
        };
        let n = w as usize * h as usize;
        if data.len() < n * self.samples {
            return Err(Error::slide(
                &self.path,
                format!(
                    "TIFF chunk {index} is truncated ({} of {} bytes)",
                    data.len(),
                    n * self.samples
                ),
            ));
        }
        let rgb: Vec<u8> = match self.samples {
            3 => {
                let mut v = data;
                v.truncate(n * 3);
                v
            }
            4 => data
                .chunks_exact(4)
                .take(n)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
            _ => data.iter().take(n).flat_map(|&g| [g, g, g]).collect(),
        };
        Ok(RgbImage::from_raw(w, h, rgb).expect("length checked above"))
    }
}

/// Copies the overlap of `src` (its top-left corner at `src_at`) and `out` (at
/// `out_at`), both placed in level-0 pixels, row by row.
fn blit(src: &RgbImage, src_at: L0Point, out: &mut RgbImage, out_at: L0Point) {
    let x0 = src_at.x.max(out_at.x);
    let y0 = src_at.y.max(out_at.y);
    let x1 = (src_at.x + src.width()).min(out_at.x + out.width());
    let y1 = (src_at.y + src.height()).min(out_at.y + out.height());
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    let len = 3 * (x1 - x0) as usize;
    let (src_w, out_w) = (src.width() as usize, out.width() as usize);
    let (src_raw, out_raw) = (src.as_raw(), &mut **out);
    for y in y0..y1 {
        let s = 3 * ((y - src_at.y) as usize * src_w + (x0 - src_at.x) as usize);
        let d = 3 * ((y - out_at.y) as usize * out_w + (x0 - out_at.x) as usize);
        out_raw[d..d + len].copy_from_slice(&src_raw[s..s + len]);
    }
}

/// Microns per pixel from the TIFF resolution tags, when they are plausible.
fn tiff_mpp(dec: &mut TiffDecoder) -> Option<f64> {
    let xres = match dec.find_tag(Tag::XResolution).ok()?? {
        Value::Rational(n, d) if d != 0 => f64::from(n) / f64::from(d),
        Value::Float(v) => f64::from(v),
        Value::Double(v) => v,
        _ => return None,
    };
    let unit = dec
        .find_tag_unsigned::<u16>(Tag::ResolutionUnit)
        .ok()
        .flatten();
    let microns_per_unit = match unit {
        Some(u) if u == ResolutionUnit::Centimeter.to_u16() => 10_000.0,
        Some(u) if u == ResolutionUnit::Inch.to_u16() => 25_400.0,
        // No unit (1) or missing: the default 2 is inch per the spec, but writers that
        // omit it rarely mean it; better unknown than wrong.
        _ => return None,
    };
    let mpp = microns_per_unit / xres;
    // Screen resolutions (72 dpi = 353 µm) are not microscope scales.
    (mpp.is_finite() && mpp > 0.01 && mpp < 100.0).then_some(mpp)
}
