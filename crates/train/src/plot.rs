//! A loss-curve PNG (training loss in blue, validation loss in orange), drawn with no plotting
//! library: axes titled `STEP` and `LOSS`, a legend, a light grid labelled with steps (whole
//! numbers at a 1-2-5 spacing) and loss values (a 3 × 5 pixel digit font and a 5 × 7 capital
//! font for the few words, drawn at twice their size), and the two polylines.
use crate::error::{Result, TrainError};
use std::path::Path;

const W: usize = 640;
const H: usize = 400;
const MARGIN: usize = 40;
/// Left margin: room for the loss labels.
const LEFT: usize = 72;
/// Glyph pixels are drawn as `SCALE × SCALE` squares.
const SCALE: i64 = 2;
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

/// The digits 0–9 as 3 × 5 glyphs: each character is one row of 3 bits (most significant bit
/// on the left), top row first.
const DIGITS: [&str; 10] = [
    "75557", "26227", "71747", "71717", "55711", "74717", "74757", "71111", "75757", "75717",
];

/// The glyph of `ch` (digits, `.` and `-`) as 5 rows of 3 bits.
fn glyph(ch: char) -> Option<[u8; 5]> {
    let rows = match ch {
        '.' => "00002",
        '-' => "00700",
        _ => DIGITS[ch.to_digit(10)? as usize],
    };
    let mut out = [0u8; 5];
    for (o, r) in out.iter_mut().zip(rows.bytes()) {
        *o = r - b'0';
    }
    Some(out)
}

/// The capitals the titles and the legend use, as 5 × 7 glyphs (rows of 5 bits, top first).
const LETTERS: [(char, [u8; 7]); 12] = [
    ('A', [14, 17, 17, 31, 17, 17, 17]),
    ('D', [30, 17, 17, 17, 17, 17, 30]),
    ('E', [31, 16, 16, 30, 16, 16, 31]),
    ('I', [14, 4, 4, 4, 4, 4, 14]),
    ('L', [16, 16, 16, 16, 16, 16, 31]),
    ('N', [17, 25, 21, 19, 17, 17, 17]),
    ('O', [14, 17, 17, 17, 17, 17, 14]),
    ('P', [30, 17, 17, 30, 16, 16, 16]),
    ('R', [30, 17, 17, 30, 20, 18, 17]),
    ('S', [15, 16, 16, 14, 1, 1, 30]),
    ('T', [31, 4, 4, 4, 4, 4, 4]),
    ('V', [17, 17, 17, 17, 17, 10, 4]),
];

/// Width in pixels of a word drawn by [`Canvas::word`].
fn word_width(word: &str) -> i64 {
    word.chars().count() as i64 * 6 * SCALE - SCALE
}

/// Width in pixels of `text` drawn by [`Canvas::text`].
fn text_width(text: &str) -> i64 {
    text.chars().count() as i64 * 4 * SCALE - SCALE
}

impl Canvas {
    /// Draws one glyph of `rows` (top first, `width` bits each, most significant on the left)
    /// with its top-left corner at `(x, y)`, each bit a `SCALE × SCALE` square.
    fn glyph(&mut self, x: i64, y: i64, rows: &[u8], width: i64, c: [u8; 3]) {
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..width {
                if bits & (1 << (width - 1 - col)) != 0 {
                    for (dx, dy) in (0..SCALE).flat_map(|a| (0..SCALE).map(move |b| (a, b))) {
                        self.put(x + col * SCALE + dx, y + r as i64 * SCALE + dy, c);
                    }
                }
            }
        }
    }

    /// Draws `text` (digits, `.`, `-`) with its top-left corner at `(x, y)`.
    fn text(&mut self, x: i64, y: i64, text: &str, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            if let Some(rows) = glyph(ch) {
                self.glyph(x + i as i64 * 4 * SCALE, y, &rows, 3, c);
            }
        }
    }

    /// Draws `word` (capitals of [`LETTERS`]) with its top-left corner at `(x, y)`.
    fn word(&mut self, x: i64, y: i64, word: &str, c: [u8; 3]) {
        for (i, ch) in word.chars().enumerate() {
            if let Some((_, rows)) = LETTERS.iter().find(|(l, _)| *l == ch) {
                self.glyph(x + i as i64 * 6 * SCALE, y, rows, 5, c);
            }
        }
    }
}

/// The spacing of step ticks: the smallest of 1, 2, 5, 10, 20, 50, … that puts at most 6
/// intervals on `0..=max_step`, so every tick is a whole step.
fn step_tick(max_step: usize) -> usize {
    let mut tick = 1;
    for m in [2, 5, 10].iter().cycle().scan(1usize, |base, &m| {
        let t = *base * m;
        if m == 10 {
            *base *= 10;
        }
        Some(t)
    }) {
        if max_step.div_ceil(tick) <= 6 {
            break;
        }
        tick = m;
    }
    tick
}

/// `v` with enough decimals to tell grid lines `step` apart.
fn label(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step.is_finite() {
        (1.0 - step.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        2
    };
    format!("{v:.decimals$}")
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
    let (pw, ph) = ((W - LEFT - MARGIN) as f64, (H - 2 * MARGIN) as f64);
    let to_px = |(s, l): (usize, f64)| {
        let x = LEFT as f64 + s as f64 / max_x * pw;
        let y = (H - MARGIN) as f64 - (l - lo) / (hi - lo) * ph;
        (x.round() as i64, y.round() as i64)
    };
    let mut c = Canvas(vec![255; W * H * 3]);
    // Steps under the x axis at whole-step ticks; losses left of the y axis (top = highest).
    let tick = step_tick(max_x as usize);
    for s in (0..=max_x as usize).step_by(tick) {
        let gx = to_px((s, lo)).0;
        c.line((gx, MARGIN as i64), (gx, (H - MARGIN) as i64), [225; 3]);
        let step = s.to_string();
        c.text(
            gx - text_width(&step) / 2,
            (H - MARGIN) as i64 + 6,
            &step,
            [0; 3],
        );
    }
    for k in 0..=5 {
        let gy = (MARGIN as f64 + ph * k as f64 / 5.0) as i64;
        c.line((LEFT as i64, gy), ((W - MARGIN) as i64, gy), [225; 3]);
        let loss = label(hi - (hi - lo) * k as f64 / 5.0, (hi - lo) / 5.0);
        c.text(LEFT as i64 - 8 - text_width(&loss), gy - 5, &loss, [0; 3]);
    }
    // Axis titles and the legend (a short line in each series' colour before its name).
    let x_mid = (LEFT + W - MARGIN) as i64 / 2;
    c.word(
        x_mid - word_width("STEP") / 2,
        (H - 16) as i64,
        "STEP",
        [0; 3],
    );
    c.word(8, 12, "LOSS", [0; 3]);
    let mut x = (W - MARGIN) as i64;
    for (name, color, shown) in [("VALIDATION", VAL, !val.is_empty()), ("TRAIN", TRAIN, true)] {
        if shown {
            x -= word_width(name);
            c.word(x, 12, name, [0; 3]);
            c.line((x - 24, 18), (x - 8, 18), color);
            x -= 40;
        }
    }
    let (left, bottom) = (LEFT as i64, (H - MARGIN) as i64);
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
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let png_err =
        |e: png::EncodingError| TrainError::io(path, std::io::Error::other(e.to_string()));
    let mut w = enc.write_header().map_err(png_err)?;
    w.write_image_data(&c.0).map_err(png_err)?;
    w.finish().map_err(png_err)?;
    // A temporary file renamed over `path`: a failed write never destroys an earlier plot.
    kiln_eval::io::write_atomic(path, &bytes)?;
    Ok(())
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
        // Labels: black pixels left of the y axis and under the x axis, nowhere else outside.
        let black = |x: usize, y: usize| buf[(y * W + x) * 3..][..3] == [0, 0, 0];
        let left = (0..LEFT - 4).any(|x| (MARGIN..H - MARGIN).any(|y| black(x, y)));
        let under = (LEFT..W).any(|x| (H - MARGIN + 4..H).any(|y| black(x, y)));
        assert!(left && under, "axis labels drawn");
        // The title row holds `LOSS` at the left and the legend at the right, nothing between.
        let top = |xs: std::ops::Range<usize>| {
            xs.into_iter().any(|x| (0..MARGIN - 8).any(|y| black(x, y)))
        };
        assert!(top(0..LEFT) && top(W - MARGIN - 60..W - MARGIN));
        assert!(!top(LEFT + 20..W / 2 - 60));
        // Step ticks 0, 1, 2, 3, 4 (whole steps): each tick's gridline is drawn.
        let grey = |x: usize| {
            (MARGIN..H - MARGIN)
                .filter(|&y| buf[(y * W + x) * 3..][..3] == [225, 225, 225])
                .count()
        };
        for s in 1..=4 {
            let x = (LEFT as f64 + s as f64 / 4.0 * (W - LEFT - MARGIN) as f64).round() as usize;
            assert!(grey(x) > (H - 2 * MARGIN) / 2, "tick {s}");
            assert!(
                grey(x - 3) <= 12,
                "between ticks: only the 6 loss gridlines"
            );
        }
        // Written through a temporary file that is gone afterwards.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = write_loss_curve(&file.join("loss.png"), &[(1, 1.0)], &[]).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn step_ticks_are_whole_steps_at_a_1_2_5_spacing() {
        let got: Vec<_> = [1, 4, 6, 8, 12, 30, 60, 61, 1000, 2999]
            .map(step_tick)
            .to_vec();
        assert_eq!(got, [1, 1, 1, 2, 2, 5, 10, 20, 200, 500]);
        assert!(LETTERS.iter().all(|(_, rows)| rows.iter().all(|r| *r < 32)));
        assert_eq!(word_width("STEP"), 46);
    }

    #[test]
    fn labels_have_the_decimals_the_grid_needs() {
        assert_eq!(label(2.8, 0.16), "2.80");
        assert_eq!(label(0.049, 0.018), "0.049");
        assert_eq!(label(1000.0, 200.0), "1000");
        assert_eq!(label(1.5, f64::NAN), "1.50");
        // Every character a label or a step number can hold has a glyph.
        for t in [label(-0.125, 0.01), format!("{}", 1234567890.0f64.round())] {
            assert!(t.chars().all(|c| glyph(c).is_some()), "{t}");
        }
        assert_eq!(text_width("10"), 14);
        assert_eq!(glyph('4'), Some([5, 5, 7, 1, 1]));
        assert_eq!(glyph('.'), Some([0, 0, 0, 0, 2]));
        assert_eq!(glyph('x'), None);
    }
}
