//! Table → question/answer generator: exact answers computed from a CSV table.
//!
//! The table has a header, a key column (e.g. `prefecture`) and numeric columns. Columns named
//! `<measure>_<year>` (`population_2015`, `population_2020`) are one measure over years; a
//! column whose name starts with `area` enables density questions; `_km2` gives the unit km².
//! Other non-numeric columns are ignored.
//!
//! Kinds: lookup, comparison, difference, ratio, percentage change, density, sum, mean, max,
//! min, rank, top-k and trend, each with several phrasings; lookups and densities can get a
//! follow-up turn ("And Kyoto?"). Deterministic for a seed.
//!
//! Number format: thousands separators everywhere; integer-valued columns print as integers,
//! others with 2 decimals; means round to the column's precision; ratios 2 decimals;
//! percentages 1 decimal with an explicit sign; densities 1 decimal (people per km²). Rounding
//! is half away from zero on the exact value (computed in f64).

mod table;

pub use table::{Column, Table};

use std::path::Path;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::error::{DataError, Result};
use crate::record::{Message, Role};

/// Generator options.
#[derive(Debug, Clone)]
pub struct QaOptions {
    pub seed: u64,
    /// Number of conversations to generate.
    pub count: usize,
    /// Prepended as a system message when set.
    pub system_prompt: Option<String>,
    /// Probability that a lookup or density question gets a follow-up turn.
    pub follow_up: f64,
}

impl Default for QaOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            count: 1000,
            system_prompt: None,
            follow_up: 0.3,
        }
    }
}

/// Formats with thousands separators and `decimals` decimals (half away from zero).
pub fn format_number(v: f64, decimals: usize) -> String {
    let scale = 10f64.powi(decimals as i32);
    let r = (v.abs() * scale).round() / scale;
    let s = format!("{r:.decimals$}");
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let sign = if v < 0.0 && r != 0.0 { "-" } else { "" };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

struct Gen<'a> {
    t: &'a Table,
    rng: rand::rngs::StdRng,
    follow_up: f64,
}

impl Gen<'_> {
    fn value(&self, c: &Column, v: f64) -> String {
        let n = format_number(v, if c.integer { 0 } else { 2 });
        match &c.unit {
            Some(u) => format!("{n} {u}"),
            None => n,
        }
    }

    fn when(c: &Column) -> String {
        c.year.map_or(String::new(), |y| format!(" in {y}"))
    }

    fn key(&mut self) -> usize {
        self.rng.random_range(0..self.t.keys.len())
    }

    fn two_keys(&mut self) -> (usize, usize) {
        let a = self.key();
        let mut b = self.key();
        while b == a {
            b = self.key();
        }
        (a, b)
    }

    fn pick<'s>(&mut self, options: &[&'s str]) -> &'s str {
        options.choose(&mut self.rng).copied().unwrap_or("")
    }

    fn plural(&self) -> String {
        format!("{}s", self.t.key_column.replace('_', " "))
    }

    fn ordinal(n: usize) -> String {
        let suffix = match (n % 10, n % 100) {
            (_, 11..=13) => "th",
            (1, _) => "st",
            (2, _) => "nd",
            (3, _) => "rd",
            _ => "th",
        };
        format!("{n}{suffix}")
    }

    fn lookup(&mut self, c: &Column, k: usize) -> (String, String) {
        let (key, m, w) = (&self.t.keys[k], &c.measure, Self::when(c));
        let q = match self.pick(&["what", "give", "tell"]) {
            "what" => format!("What was the {m} of {key}{w}?"),
            "give" => format!("Give the {m} of {key}{w}."),
            _ => format!("Tell me {key}'s {m}{w}."),
        };
        let a = format!("The {m} of {key}{w} was {}.", self.value(c, c.values[k]));
        (q, a)
    }

    /// One conversation: a question, its answer, maybe a follow-up.
    fn conversation(&mut self) -> Vec<(String, String)> {
        let t = self.t;
        let c = &t.columns[self.rng.random_range(0..t.columns.len())];
        let kind = self.rng.random_range(0..12u32);
        let (m, w) = (&c.measure, Self::when(c));
        let mut turns = Vec::new();
        match kind {
            0 => {
                let (a, b) = self.two_keys();
                turns.push(self.lookup(c, a));
                if self.rng.random_bool(self.follow_up) {
                    let (_, ans) = self.lookup(c, b);
                    turns.push((format!("And {}?", t.keys[b]), ans));
                }
            }
            1..=3 => {
                let (a, b) = self.two_keys();
                let (va, vb) = (c.values[a], c.values[b]);
                let (ka, kb) = (&t.keys[a], &t.keys[b]);
                let (hi, lo, vh, vl) = if va >= vb {
                    (ka, kb, va, vb)
                } else {
                    (kb, ka, vb, va)
                };
                let pair = match kind {
                    1 => (
                        format!("Which had the larger {m}{w}, {ka} or {kb}?"),
                        format!(
                            "{hi}, with {} against {} for {lo}.",
                            self.value(c, vh),
                            self.value(c, vl)
                        ),
                    ),
                    2 => (
                        format!("By how much did the {m} of {hi} exceed that of {lo}{w}?"),
                        format!(
                            "By {}: {} for {hi} against {} for {lo}.",
                            self.value(c, vh - vl),
                            self.value(c, vh),
                            self.value(c, vl)
                        ),
                    ),
                    _ if vl != 0.0 => (
                        format!("How many times larger was the {m} of {hi} than that of {lo}{w}?"),
                        format!(
                            "{} times ({} / {}).",
                            format_number(vh / vl, 2),
                            self.value(c, vh),
                            self.value(c, vl)
                        ),
                    ),
                    _ => return self.conversation(),
                };
                turns.push(pair);
            }
            4 | 5 => {
                // Change of a measure between two years.
                let years: Vec<&Column> = t
                    .columns
                    .iter()
                    .filter(|x| x.measure == c.measure && x.year.is_some())
                    .collect();
                let (Some(first), Some(last)) = (years.first(), years.last()) else {
                    return self.conversation();
                };
                if first.year == last.year {
                    return self.conversation();
                }
                let k = self.key();
                let key = &t.keys[k];
                let (v0, v1) = (first.values[k], last.values[k]);
                let (y0, y1) = (first.year.unwrap_or(0), last.year.unwrap_or(0));
                if v0 == 0.0 {
                    return self.conversation();
                }
                let pct = format!("{:+.1}%", (v1 - v0) / v0 * 100.0).replace("+-", "-");
                let pct = if pct.starts_with('-') || pct.starts_with('+') {
                    pct
                } else {
                    format!("+{pct}")
                };
                if kind == 4 {
                    turns.push((
                        format!(
                            "By what percentage did the {m} of {key} change from {y0} to {y1}?"
                        ),
                        format!(
                            "By {pct}, from {} to {}.",
                            self.value(c, v0),
                            self.value(c, v1)
                        ),
                    ));
                } else {
                    let verb = if v1 > v0 {
                        "grew"
                    } else if v1 < v0 {
                        "shrank"
                    } else {
                        "stayed the same"
                    };
                    turns.push((
                        format!("Did the {m} of {key} grow or shrink between {y0} and {y1}?"),
                        format!(
                            "It {verb}, from {} to {} ({}, {pct}).",
                            self.value(c, v0),
                            self.value(c, v1),
                            format_number(v1 - v0, if c.integer { 0 } else { 2 })
                        ),
                    ));
                }
            }
            6 => {
                let area = t.columns.iter().find(|x| x.measure.starts_with("area"));
                let pop = t
                    .columns
                    .iter()
                    .filter(|x| x.measure == "population")
                    .max_by_key(|x| x.year);
                let (Some(area), Some(pop)) = (area, pop) else {
                    return self.conversation();
                };
                let (a, b) = self.two_keys();
                let density = |k: usize| pop.values[k] / area.values[k];
                let pw = Self::when(pop);
                let answer = |g: &Self, k: usize| {
                    format!(
                        "{} people per km² ({} people on {}).",
                        format_number(density(k), 1),
                        g.value(pop, pop.values[k]),
                        g.value(area, area.values[k])
                    )
                };
                turns.push((
                    format!("What was the population density of {}{pw}?", t.keys[a]),
                    answer(self, a),
                ));
                if self.rng.random_bool(self.follow_up) {
                    turns.push((format!("And {}?", t.keys[b]), answer(self, b)));
                }
            }
            7 | 8 => {
                let n = c.values.len();
                let sum: f64 = c.values.iter().sum();
                let plural = self.plural();
                if kind == 7 {
                    turns.push((
                        format!("What was the total {m} of all {n} {plural}{w}?"),
                        format!("The total was {}.", self.value(c, sum)),
                    ));
                } else {
                    turns.push((
                        format!("What was the average {m} of the {n} {plural}{w}?"),
                        format!("The average was {}.", self.value(c, sum / n as f64)),
                    ));
                }
            }
            9 => {
                let largest = self.rng.random_bool(0.5);
                let order = ranking(c);
                let k = if largest {
                    order[0]
                } else {
                    order[order.len() - 1]
                };
                let word = if largest { "largest" } else { "smallest" };
                let kc = t.key_column.replace('_', " ");
                turns.push((
                    format!("Which {kc} had the {word} {m}{w}?"),
                    format!("{}, with {}.", t.keys[k], self.value(c, c.values[k])),
                ));
            }
            10 => {
                let order = ranking(c);
                let k = self.key();
                let rank = order.iter().position(|&i| i == k).unwrap_or(0) + 1;
                turns.push((
                    format!("Where did {} rank by {m}{w}, largest first?", t.keys[k]),
                    format!(
                        "{} ranked {} of {}, with {}.",
                        t.keys[k],
                        Self::ordinal(rank),
                        order.len(),
                        self.value(c, c.values[k])
                    ),
                ));
            }
            _ => {
                let order = ranking(c);
                let top = self.rng.random_range(3..=5usize).min(order.len());
                let list: Vec<String> = order[..top]
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| {
                        format!("{}. {} ({})", i + 1, t.keys[k], self.value(c, c.values[k]))
                    })
                    .collect();
                turns.push((
                    format!("List the {top} {} with the largest {m}{w}.", self.plural()),
                    format!("{}.", list.join("; ")),
                ));
            }
        }
        turns
    }
}

/// Keys sorted by value, largest first (ties keep table order).
fn ranking(c: &Column) -> Vec<usize> {
    let mut order: Vec<usize> = (0..c.values.len()).collect();
    order.sort_by(|&a, &b| c.values[b].total_cmp(&c.values[a]));
    order
}

/// Generates `opts.count` conversations (messages) from a table.
pub fn generate(table: &Table, opts: &QaOptions) -> Vec<Vec<Message>> {
    let mut g = Gen {
        t: table,
        rng: rand::rngs::StdRng::seed_from_u64(opts.seed),
        follow_up: if opts.follow_up.is_nan() {
            0.0
        } else {
            opts.follow_up.clamp(0.0, 1.0)
        },
    };
    (0..opts.count)
        .map(|_| {
            let mut msgs = Vec::new();
            if let Some(s) = &opts.system_prompt {
                msgs.push(Message::new(Role::System, s.clone()));
            }
            for (q, a) in g.conversation() {
                msgs.push(Message::new(Role::User, q));
                msgs.push(Message::new(Role::Assistant, a));
            }
            msgs
        })
        .collect()
}

/// Writes conversations as JSON Lines `{"messages": [...]}` records.
pub fn write_jsonl(path: &Path, conversations: &[Vec<Message>]) -> Result<()> {
    use std::io::Write;
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for c in conversations {
        let line = serde_json::json!({ "messages": c }).to_string();
        writeln!(f, "{line}").map_err(io)?;
    }
    f.flush().map_err(io)
}
