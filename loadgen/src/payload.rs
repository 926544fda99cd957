//! Request bodies: images from a directory (cycled or shuffled), or one synthetic JPEG.

use std::io::Cursor;
use std::path::Path;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One request body and its content type.
#[derive(Clone, Debug)]
pub struct Payload {
    /// Encoded image.
    pub body: Bytes,
    /// `image/jpeg`, `image/png` or `image/webp`.
    pub content_type: &'static str,
}

/// The bodies a run sends.
#[derive(Debug)]
pub struct Payloads {
    items: Vec<Payload>,
    shuffle: Option<std::sync::Mutex<StdRng>>,
}

/// Why no payloads could be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The directory cannot be read.
    #[error("cannot read image directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    /// The directory holds no supported image.
    #[error("no JPEG, PNG or WebP images in {0}")]
    Empty(String),
    /// The synthetic image could not be encoded.
    #[error("cannot make the synthetic image: {0}")]
    Synthetic(String),
}

impl Payloads {
    /// Every `*.jpg|jpeg|png|webp` file of `dir`, in name order.
    pub fn from_dir(dir: &Path, shuffle: Option<u64>) -> Result<Self, PayloadError> {
        let entries = std::fs::read_dir(dir).map_err(|source| PayloadError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        let mut paths: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        let mut items = Vec::new();
        for path in paths {
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let content_type = match ext.as_deref() {
                Some("jpg" | "jpeg") => "image/jpeg",
                Some("png") => "image/png",
                Some("webp") => "image/webp",
                _ => continue,
            };
            let body = std::fs::read(&path).map_err(|source| PayloadError::Dir {
                path: path.display().to_string(),
                source,
            })?;
            items.push(Payload {
                body: body.into(),
                content_type,
            });
        }
        if items.is_empty() {
            return Err(PayloadError::Empty(dir.display().to_string()));
        }
        Ok(Self {
            items,
            shuffle: shuffle.map(|seed| std::sync::Mutex::new(StdRng::seed_from_u64(seed))),
        })
    }

    /// One synthetic JPEG of `width × height` (a smooth gradient with texture, ~photo-sized).
    pub fn synthetic(width: u32, height: u32) -> Result<Self, PayloadError> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27;
            image::Rgb([
                (x * 255 / width.max(1)) as u8,
                (y * 255 / height.max(1)) as u8,
                ((x + y) % 256) as u8 ^ noise as u8,
            ])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg)
            .map_err(|e| PayloadError::Synthetic(e.to_string()))?;
        Ok(Self {
            items: vec![Payload {
                body: out.into_inner().into(),
                content_type: "image/jpeg",
            }],
            shuffle: None,
        })
    }

    /// The body for the `i`-th request.
    pub fn get(&self, i: usize) -> Payload {
        let index = match &self.shuffle {
            Some(rng) => rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .random_range(0..self.items.len()),
            None => i % self.items.len(),
        };
        self.items[index].clone()
    }
}
