//! A loss-curve PNG (training loss in blue, validation loss in orange), drawn with no plotting
//! library: axes, a light grid of 5 divisions and the two polylines.
use crate::error::{Result, TrainError};
use std::path::Path;

const W: usize = 640;
const H: usize = 400;
const MARGIN: usize = 40;
const TRAIN: [u8; 3] = [31, 119, 180];
const VAL: [u8; 3] = [255, 127, 14];

struct Canvas(Vec<u8>);

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            let i = (y as usize * W + x as usize) * 3;
            self.0[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Bresenham line, 2 pixels thick.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.put(x, y, c);
            self.put(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }
}

/// Draws `train` and `val` (`(step, loss)` points) into a PNG at `path`. Non-finite values are
/// left out.
pub fn write_loss_curve(path: &Path, train: &[(usize, f64)], val: &[(usize, f64)]) -> Result<()> {
    let finite = |s: &[(usize, f64)]| {
        s.iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect::<Vec<_>>()
    };
    let (train, val) = (finite(train), finite(val));
    let all: Vec<&(usize, f64)> = train.iter().chain(val.iter()).collect();
    let max_x = all.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (lo.min(0.0), lo.max(0.0) + 1.0)
    };
    let (pw, ph) = ((W - 2 * MARGIN) as f64, (H - 2 * MARGIN) as f64);
    let to_px = |(s, l): (usize, f64)| {
        let x = MARGIN as f64 + s as f64 / max_x * pw;
        let y = (H - MARGIN) as f64 - (l - lo) / (hi - lo) * ph;
        (x.round() as i64, y.round() as i64)
    };
    let mut c = Canvas(vec![255; W * H * 3]);
    for k in 0..=5 {
        let gx = (MARGIN as f64 + pw * k as f64 / 5.0) as i64;
        let gy = (MARGIN as f64 + ph * k as f64 / 5.0) as i64;
        c.line((gx, MARGIN as i64), (gx, (H - MARGIN) as i64), [225; 3]);
        c.line((MARGIN as i64, gy), ((W - MARGIN) as i64, gy), [225; 3]);
    }
    let (left, bottom) = (MARGIN as i64, (H - MARGIN) as i64);
    c.line((left, MARGIN as i64), (left, bottom), [0; 3]);
    c.line((left, bottom), ((W - MARGIN) as i64, bottom), [0; 3]);
    for (series, color) in [(&train, TRAIN), (&val, VAL)] {
        for w in series.windows(2) {
            c.line(to_px(w[0]), to_px(w[1]), color);
        }
        for &p in series.iter() {
            let (x, y) = to_px(p);
            for d in -2..=2 {
                c.put(x + d, y, color);
                c.put(x, y + d, color);
            }
        }
    }
    let file = std::fs::File::create(path).map_err(|e| TrainError::io(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let png_err =
        |e: png::EncodingError| TrainError::io(path, std::io::Error::other(e.to_string()));
    let mut w = enc.write_header().map_err(png_err)?;
    w.write_image_data(&c.0).map_err(png_err)?;
    w.finish().map_err(png_err)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_both_colours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        write_loss_curve(
            &p,
            &[(1, 3.0), (2, 2.5), (3, f64::NAN), (4, 2.0)],
            &[(2, 2.8), (4, 2.4)],
        )
        .unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (W as u32, H as u32));
        let has = |c: [u8; 3]| buf.chunks(3).any(|p| p == c);
        assert!(has(TRAIN) && has(VAL));
    }
}
