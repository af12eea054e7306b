//! Table → question/answer generator: exact answers computed from a CSV table.
//!
//! The table has a header, a key column (e.g. `prefecture`) and numeric columns. Columns named
//! `<measure>_<year>` (`population_2015`, `population_2020`) are one measure over years; `_km2`
//! gives the unit km². Measures derived from two columns (population density: `population` per
//! `area`) are declared in [`QaOptions::derived`]. Other non-numeric columns are ignored.
//!
//! Kinds: lookup, comparison, difference, ratio, percentage change, density, sum, mean, max,
//! min, rank, top-k and trend, each with several phrasings; lookups and densities can get a
//! follow-up turn ("And Kyoto?"). Time series (a measure over years): the average change per
//! year and the value in every year. Multi-turn: three questions that build on each other (a
//! value, "And in 2015?", "So how much did it change?"). Deterministic for a seed.
//!
//! Number format: thousands separators everywhere; integer-valued columns print as integers,
//! others with 2 decimals; means round to the column's precision; ratios 2 decimals;
//! percentages 1 decimal with an explicit sign; densities 1 decimal (people per km²). Rounding
//! is half away from zero on the exact value (computed in f64).

mod table;

pub use table::{Column, Table};

use std::path::Path;

use rand::seq::{IndexedRandom, SliceRandom};
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
    /// Question kinds to generate (empty: all).
    pub kinds: Vec<QaKind>,
    /// Keys questions may be about (`None`: every key). Aggregates (total, average, extremes,
    /// rank, top-k) are computed over these keys only, so a held-out set of keys gives a
    /// self-consistent test set.
    pub keys: Option<Vec<String>>,
    /// Open book: start the first question with the table rows it needs (`Data:` block), so
    /// the answer can be read and computed from the prompt.
    pub context: bool,
    /// Open book: this many other rows (from the allowed keys) are mixed into the `Data:`
    /// block, so the answer has to be picked out of several rows.
    pub distractors: usize,
    /// Measures derived from two columns, asked by the `density` kind (the first one is used);
    /// empty: no `density` questions. The census example declares
    /// [`Derived::population_density`].
    pub derived: Vec<Derived>,
}

/// A measure derived from two columns: `numerator / denominator` for a key, e.g. people per
/// km² from `population_<year>` (the latest year) and `area_km2`.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Its name in questions (`population density`).
    pub name: String,
    /// The numerator's measure (`population`); with several years, the latest.
    pub numerator: String,
    /// The denominator's measure, or the start of it (`area` matches `area_km2`'s `area`).
    pub denominator: String,
    /// The unit of the derived value (`people per km²`).
    pub unit: String,
    /// The unit of the numerator's values in answers (`people`).
    pub numerator_unit: String,
}

impl Derived {
    /// Population per km² of area: `population` over `area` (the census table's columns).
    pub fn population_density() -> Self {
        Self {
            name: "population density".into(),
            numerator: "population".into(),
            denominator: "area".into(),
            unit: "people per km²".into(),
            numerator_unit: "people".into(),
        }
    }
}

impl Default for QaOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            count: 1000,
            system_prompt: None,
            follow_up: 0.3,
            kinds: Vec::new(),
            keys: None,
            context: false,
            distractors: 0,
            derived: Vec::new(),
        }
    }
}

/// The kinds of question the generator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QaKind {
    Lookup,
    Larger,
    Difference,
    Ratio,
    PercentChange,
    GrowShrink,
    Density,
    Total,
    Average,
    Extreme,
    Rank,
    TopK,
    /// Time series: the average change per year between a measure's first and last year.
    AnnualChange,
    /// Time series: a key's value in every year of a measure.
    Series,
    /// Three turns that build on each other: a value, the same measure in another year (or of
    /// another key), then the change between the two (or which is larger).
    MultiTurn,
}

impl QaKind {
    pub const ALL: [QaKind; 15] = [
        QaKind::Lookup,
        QaKind::Larger,
        QaKind::Difference,
        QaKind::Ratio,
        QaKind::PercentChange,
        QaKind::GrowShrink,
        QaKind::Density,
        QaKind::Total,
        QaKind::Average,
        QaKind::Extreme,
        QaKind::Rank,
        QaKind::TopK,
        QaKind::AnnualChange,
        QaKind::Series,
        QaKind::MultiTurn,
    ];

    /// Name as written in configs and reports (`percent_change`).
    pub fn as_str(self) -> &'static str {
        match self {
            QaKind::Lookup => "lookup",
            QaKind::Larger => "larger",
            QaKind::Difference => "difference",
            QaKind::Ratio => "ratio",
            QaKind::PercentChange => "percent_change",
            QaKind::GrowShrink => "grow_shrink",
            QaKind::Density => "density",
            QaKind::Total => "total",
            QaKind::Average => "average",
            QaKind::Extreme => "extreme",
            QaKind::Rank => "rank",
            QaKind::TopK => "top_k",
            QaKind::AnnualChange => "annual_change",
            QaKind::Series => "series",
            QaKind::MultiTurn => "multi_turn",
        }
    }

    /// Whether the question is about one or two keys (not the whole table).
    pub fn is_per_key(self) -> bool {
        !matches!(
            self,
            QaKind::Total | QaKind::Average | QaKind::Extreme | QaKind::Rank | QaKind::TopK
        )
    }
}

impl std::fmt::Display for QaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QaKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        QaKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| DataError::UnknownName {
                what: "question kind",
                value: s.into(),
                expected: "lookup, larger, difference, ratio, percent_change, grow_shrink, \
                           density, total, average, extreme, rank, top_k, annual_change, \
                           series, multi_turn",
            })
    }
}

/// One generated conversation with what it asks about.
#[derive(Debug, Clone, PartialEq)]
pub struct QaItem {
    /// Kind of the first question.
    pub kind: QaKind,
    /// Keys the conversation is about, in order of appearance.
    pub keys: Vec<String>,
    /// The short answer of the first question: the number with its formatting (`553,407`,
    /// `+3.5%`, `2.41`), the key (`Tokyo`), `grew`/`shrank`, an ordinal (`5th`) or the top-k
    /// keys joined by `, `. Exact match compares a model's answer with this.
    pub answer: String,
    pub messages: Vec<Message>,
}

impl QaItem {
    /// Whether `reply` gives this item's short answer first, the census example's exact match:
    /// for a number, the reply's first number that is not a year named in the question
    /// (after `Question:` in open-book prompts), compared without thousands separators, sign
    /// or percent sign (a reply "fell by 3.5%" counts for `-3.5%`); for a key (any of `keys`)
    /// or `grew`/`shrank`/`stayed`, the first candidate the reply mentions (case-insensitive).
    pub fn is_answered_by(&self, reply: &str, keys: &[String]) -> bool {
        let gold = &self.answer;
        let question = self
            .messages
            .iter()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str());
        if let Some(g) = numbers(gold).first()
            && !keys.contains(gold)
        {
            let years: Vec<String> = numbers(question.rsplit("Question:").next().unwrap_or(""))
                .into_iter()
                .filter(|n| n.len() == 4 && n.starts_with("20"))
                .collect();
            return numbers(reply)
                .into_iter()
                .find(|n| !years.contains(n))
                .as_ref()
                == Some(g);
        }
        let candidates: Vec<&str> = if keys.contains(gold) {
            keys.iter().map(String::as_str).collect()
        } else {
            vec!["grew", "shrank", "stayed"]
        };
        let lower = reply.to_lowercase();
        let first = candidates
            .iter()
            .filter_map(|c| lower.find(&c.to_lowercase()).map(|at| (at, *c)))
            .min();
        first.is_some_and(|(_, c)| c == gold)
    }
}

/// Numbers in `text` (`-1,234.5` → `1234.5`, signs and `%` dropped), in order.
fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_ascii_digit() || (!cur.is_empty() && (c == ',' || c == '.') && next_digit) {
            if c != ',' {
                cur.push(c);
            }
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
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
    /// Key indices questions may use.
    allowed: Vec<usize>,
    kinds: Vec<QaKind>,
    derived: Vec<Derived>,
}

/// The turns of one conversation, its first kind, keys and short answer.
struct Conv {
    kind: QaKind,
    keys: Vec<usize>,
    answer: String,
    turns: Vec<(String, String)>,
}

impl<'a> Gen<'a> {
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
        self.allowed[self.rng.random_range(0..self.allowed.len())]
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

    /// Values of `c` restricted to the allowed keys, with their key indices.
    fn allowed_values(&self, c: &Column) -> Vec<(usize, f64)> {
        self.allowed.iter().map(|&k| (k, c.values[k])).collect()
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

    fn number(c: &Column, v: f64) -> String {
        format_number(v, if c.integer { 0 } else { 2 })
    }

    /// A kind among the requested ones.
    fn kind(&mut self) -> QaKind {
        if self.kinds.is_empty() {
            QaKind::ALL[self.rng.random_range(0..QaKind::ALL.len())]
        } else {
            self.kinds[self.rng.random_range(0..self.kinds.len())]
        }
    }

    /// `keys` plus up to `n` other allowed keys, in a random order.
    fn with_distractors(&mut self, keys: &[usize], n: usize) -> Vec<usize> {
        let mut others: Vec<usize> = self
            .allowed
            .iter()
            .copied()
            .filter(|k| !keys.contains(k))
            .collect();
        others.shuffle(&mut self.rng);
        let mut shown: Vec<usize> = keys
            .iter()
            .copied()
            .chain(others.into_iter().take(n))
            .collect();
        if n > 0 {
            shown.shuffle(&mut self.rng);
        }
        shown
    }

    /// The rows of `keys` as a `Data:` block: `Tottori: area 3,507.05 km²; population in
    /// 2015 573,441; population in 2020 553,407.`
    fn context(&self, keys: &[usize]) -> String {
        let mut out = String::from("Data:\n");
        for &k in keys {
            let cells: Vec<String> = self
                .t
                .columns
                .iter()
                .map(|c| {
                    format!(
                        "{}{} {}",
                        c.measure,
                        Self::when(c),
                        self.value(c, c.values[k])
                    )
                })
                .collect();
            out.push_str(&format!("{}: {}.\n", self.t.keys[k], cells.join("; ")));
        }
        out
    }

    /// One conversation: a question, its answer, maybe a follow-up; `None` when no requested
    /// kind fits the table after many draws (e.g. `grow_shrink` on a table without years).
    fn conversation(&mut self) -> Option<Conv> {
        (0..MAX_DRAWS).find_map(|_| self.try_conversation())
    }

    /// A conversation, or `None` when the drawn column does not fit the drawn kind. One
    /// function per kind below; each draws from the generator in a fixed order, so a seed gives
    /// the same conversations.
    fn try_conversation(&mut self) -> Option<Conv> {
        let t = self.t;
        let c = &t.columns[self.rng.random_range(0..t.columns.len())];
        let kind = self.kind();
        let (keys, answer, turns) = match kind {
            QaKind::Lookup => self.ask_lookup(c),
            QaKind::Larger | QaKind::Difference | QaKind::Ratio => self.ask_pair(kind, c)?,
            QaKind::PercentChange | QaKind::GrowShrink => self.ask_change(kind, c)?,
            QaKind::Density => self.ask_derived()?,
            QaKind::Total | QaKind::Average => self.ask_aggregate(kind, c),
            QaKind::Extreme => self.ask_extreme(c),
            QaKind::Rank => self.ask_rank(c),
            QaKind::TopK => self.ask_top_k(c),
            QaKind::AnnualChange => self.ask_annual_change(c)?,
            QaKind::Series => self.ask_series(c)?,
            QaKind::MultiTurn => self.ask_multi_turn(c),
        };
        Some(Conv {
            kind,
            keys,
            answer,
            turns,
        })
    }

    /// "What was the population of Kyoto in 2020?", maybe "And Osaka?".
    fn ask_lookup(&mut self, c: &Column) -> Asked {
        let (a, b) = self.two_keys();
        let mut turns = vec![self.lookup(c, a)];
        let mut keys = vec![a];
        if self.rng.random_bool(self.follow_up) {
            let (_, ans) = self.lookup(c, b);
            turns.push((format!("And {}?", self.t.keys[b]), ans));
            keys.push(b);
        }
        (keys, Self::number(c, c.values[a]), turns)
    }

    /// Two keys compared: which is larger, by how much, how many times.
    fn ask_pair(&mut self, kind: QaKind, c: &Column) -> Option<Asked> {
        let t = self.t;
        let (m, w) = (&c.measure, Self::when(c));
        let (a, b) = self.two_keys();
        let (va, vb) = (c.values[a], c.values[b]);
        let (ka, kb) = (&t.keys[a], &t.keys[b]);
        let (hi, lo, vh, vl) = if va >= vb {
            (ka, kb, va, vb)
        } else {
            (kb, ka, vb, va)
        };
        let (vhs, vls) = (self.value(c, vh), self.value(c, vl));
        let (turn, answer) = match kind {
            QaKind::Larger => (
                (
                    format!("Which had the larger {m}{w}, {ka} or {kb}?"),
                    format!("{hi}, with {vhs} against {vls} for {lo}."),
                ),
                hi.clone(),
            ),
            QaKind::Difference => (
                (
                    format!("By how much did the {m} of {hi} exceed that of {lo}{w}?"),
                    format!(
                        "By {}: {vhs} for {hi} against {vls} for {lo}.",
                        self.value(c, vh - vl)
                    ),
                ),
                Self::number(c, vh - vl),
            ),
            _ if vl != 0.0 => (
                (
                    format!("How many times larger was the {m} of {hi} than that of {lo}{w}?"),
                    format!("{} times ({vhs} / {vls}).", format_number(vh / vl, 2)),
                ),
                format_number(vh / vl, 2),
            ),
            _ => return None,
        };
        Some((vec![a, b], answer, vec![turn]))
    }

    /// The change of a measure between its first and last year: the percentage, or whether it
    /// grew or shrank.
    fn ask_change(&mut self, kind: QaKind, c: &Column) -> Option<Asked> {
        let t = self.t;
        let m = &c.measure;
        let years = self.years_of(c)?;
        let (first, last) = (years[0], years[years.len() - 1]);
        let k = self.key();
        let key = &t.keys[k];
        let (v0, v1) = (first.values[k], last.values[k]);
        let (y0, y1) = (first.year.unwrap_or(0), last.year.unwrap_or(0));
        if v0 == 0.0 {
            return None;
        }
        let pct = format!("{:+.1}%", (v1 - v0) / v0 * 100.0).replace("+-", "-");
        let pct = if pct.starts_with('-') || pct.starts_with('+') {
            pct
        } else {
            format!("+{pct}")
        };
        let (from, to) = (self.value(c, v0), self.value(c, v1));
        if kind == QaKind::PercentChange {
            let turn = (
                format!("By what percentage did the {m} of {key} change from {y0} to {y1}?"),
                format!("By {pct}, from {from} to {to}."),
            );
            return Some((vec![k], pct, vec![turn]));
        }
        let verb = if v1 > v0 {
            "grew"
        } else if v1 < v0 {
            "shrank"
        } else {
            "stayed the same"
        };
        let turn = (
            format!("Did the {m} of {key} grow or shrink between {y0} and {y1}?"),
            format!(
                "It {verb}, from {from} to {to} ({}, {pct}).",
                format_number(v1 - v0, if c.integer { 0 } else { 2 })
            ),
        );
        Some((vec![k], verb.to_string(), vec![turn]))
    }

    /// The columns of `c`'s measure over years, oldest first; `None` unless it has two years
    /// or more.
    fn years_of(&self, c: &Column) -> Option<Vec<&'a Column>> {
        let mut years: Vec<&Column> = self
            .t
            .columns
            .iter()
            .filter(|x| x.measure == c.measure && x.year.is_some())
            .collect();
        years.sort_by_key(|x| x.year);
        (years.len() >= 2 && years[0].year != years[years.len() - 1].year).then_some(years)
    }

    /// A number with an explicit sign (`+1,234`, `-31,424`), as changes are written.
    fn signed(c: &Column, v: f64) -> String {
        let n = Self::number(c, v);
        if n.starts_with('-') {
            n
        } else {
            format!("+{n}")
        }
    }

    /// Time series: "On average, by how much did the population of Aomori change per year
    /// between 2015 and 2020?" — (last − first) / years, signed, in the column's precision.
    fn ask_annual_change(&mut self, c: &Column) -> Option<Asked> {
        let years = self.years_of(c)?;
        let (first, last) = (years[0], years[years.len() - 1]);
        let (y0, y1) = (first.year?, last.year?);
        let k = self.key();
        let (key, m) = (&self.t.keys[k], &c.measure);
        let (v0, v1) = (first.values[k], last.values[k]);
        let per_year = Self::signed(c, (v1 - v0) / f64::from(y1 - y0));
        let unit = c.unit.as_ref().map_or(String::new(), |u| format!(" {u}"));
        let turn = (
            format!(
                "On average, by how much did the {m} of {key} change per year between {y0} and {y1}?"
            ),
            format!(
                "By {per_year}{unit} per year: from {} in {y0} to {} in {y1}, {} over {} years.",
                self.value(c, v0),
                self.value(c, v1),
                Self::signed(c, v1 - v0),
                y1 - y0
            ),
        );
        Some((vec![k], per_year, vec![turn]))
    }

    /// Time series: "Give the population of Aomori in each year from 2015 to 2020." — every
    /// year's value, oldest first (`2015: 1,308,265; 2020: 1,237,984`).
    fn ask_series(&mut self, c: &Column) -> Option<Asked> {
        let years = self.years_of(c)?;
        let (y0, y1) = (years[0].year?, years[years.len() - 1].year?);
        let k = self.key();
        let (key, m) = (&self.t.keys[k], &c.measure);
        let list: Vec<String> = years
            .iter()
            .map(|y| format!("{}: {}", y.year.unwrap_or(0), self.value(y, y.values[k])))
            .collect();
        let list = list.join("; ");
        let turn = (
            format!("Give the {m} of {key} in each year from {y0} to {y1}."),
            format!("{list}."),
        );
        Some((vec![k], list, vec![turn]))
    }

    /// Three turns: a value; "And in 2015?" (or "And Osaka?" for a measure without years);
    /// then the change between the two years (or which of the two keys is larger). The short
    /// answer is the first turn's.
    fn ask_multi_turn(&mut self, c: &Column) -> Asked {
        if let Some(years) = self.years_of(c) {
            let (old, new) = (years[0], years[years.len() - 1]);
            let (y0, y1) = (old.year.unwrap_or(0), new.year.unwrap_or(0));
            let k = self.key();
            let first = self.lookup(new, k);
            let (_, again) = self.lookup(old, k);
            let (v0, v1) = (old.values[k], new.values[k]);
            let change = (
                format!("So how much did it change between {y0} and {y1}?"),
                format!(
                    "It changed by {}, from {} in {y0} to {} in {y1}.",
                    Self::signed(c, v1 - v0),
                    self.value(c, v0),
                    self.value(c, v1)
                ),
            );
            let turns = vec![first, (format!("And in {y0}?"), again), change];
            return (vec![k], Self::number(new, v1), turns);
        }
        let (a, b) = self.two_keys();
        let first = self.lookup(c, a);
        let (_, second) = self.lookup(c, b);
        let (va, vb) = (c.values[a], c.values[b]);
        let (hi, vh, vl) = if va >= vb { (a, va, vb) } else { (b, vb, va) };
        let larger = (
            "Which of the two is larger?".to_string(),
            format!(
                "{}, with {} against {}.",
                self.t.keys[hi],
                self.value(c, vh),
                self.value(c, vl)
            ),
        );
        let turns = vec![first, (format!("And {}?", self.t.keys[b]), second), larger];
        (vec![a, b], Self::number(c, va), turns)
    }

    /// A measure the options derive from two columns ([`Derived`], e.g. population density),
    /// maybe with a follow-up; `None` when the table lacks its columns.
    fn ask_derived(&mut self) -> Option<Asked> {
        let t = self.t;
        let d = self.derived.first()?.clone();
        let per = t
            .columns
            .iter()
            .find(|x| x.measure.starts_with(&d.denominator))?;
        let of = t
            .columns
            .iter()
            .filter(|x| x.measure == d.numerator)
            .max_by_key(|x| x.year)?;
        let (a, b) = self.two_keys();
        let ratio = |k: usize| of.values[k] / per.values[k];
        let w = Self::when(of);
        let answer = |g: &Self, k: usize| {
            format!(
                "{} {} ({} {} on {}).",
                format_number(ratio(k), 1),
                d.unit,
                g.value(of, of.values[k]),
                d.numerator_unit,
                g.value(per, per.values[k])
            )
        };
        let mut turns = vec![(
            format!("What was the {} of {}{w}?", d.name, t.keys[a]),
            answer(self, a),
        )];
        let mut keys = vec![a];
        if self.rng.random_bool(self.follow_up) {
            turns.push((format!("And {}?", t.keys[b]), answer(self, b)));
            keys.push(b);
        }
        Some((keys, format_number(ratio(a), 1), turns))
    }

    /// The total or the mean over the allowed keys.
    fn ask_aggregate(&mut self, kind: QaKind, c: &Column) -> Asked {
        let (m, w) = (&c.measure, Self::when(c));
        let values = self.allowed_values(c);
        let n = values.len();
        let sum: f64 = values.iter().map(|(_, v)| v).sum();
        let plural = self.plural();
        let all = self.allowed.clone();
        if kind == QaKind::Total {
            let turn = (
                format!("What was the total {m} of all {n} {plural}{w}?"),
                format!("The total was {}.", self.value(c, sum)),
            );
            return (all, Self::number(c, sum), vec![turn]);
        }
        let mean = sum / n as f64;
        let turn = (
            format!("What was the average {m} of the {n} {plural}{w}?"),
            format!("The average was {}.", self.value(c, mean)),
        );
        (all, Self::number(c, mean), vec![turn])
    }

    /// The key with the largest or smallest value.
    fn ask_extreme(&mut self, c: &Column) -> Asked {
        let t = self.t;
        let (m, w) = (&c.measure, Self::when(c));
        let largest = self.rng.random_bool(0.5);
        let order = ranking(&self.allowed_values(c));
        let k = if largest {
            order[0]
        } else {
            order[order.len() - 1]
        };
        let word = if largest { "largest" } else { "smallest" };
        let kc = t.key_column.replace('_', " ");
        let turn = (
            format!("Which {kc} had the {word} {m}{w}?"),
            format!("{}, with {}.", t.keys[k], self.value(c, c.values[k])),
        );
        (self.allowed.clone(), t.keys[k].clone(), vec![turn])
    }

    /// A key's rank, largest first.
    fn ask_rank(&mut self, c: &Column) -> Asked {
        let t = self.t;
        let (m, w) = (&c.measure, Self::when(c));
        let order = ranking(&self.allowed_values(c));
        let k = self.key();
        let rank = order.iter().position(|&i| i == k).unwrap_or(0) + 1;
        let turn = (
            format!("Where did {} rank by {m}{w}, largest first?", t.keys[k]),
            format!(
                "{} ranked {} of {}, with {}.",
                t.keys[k],
                Self::ordinal(rank),
                order.len(),
                self.value(c, c.values[k])
            ),
        );
        (self.allowed.clone(), Self::ordinal(rank), vec![turn])
    }

    /// The 3 to 5 keys with the largest values, in order.
    fn ask_top_k(&mut self, c: &Column) -> Asked {
        let t = self.t;
        let (m, w) = (&c.measure, Self::when(c));
        let order = ranking(&self.allowed_values(c));
        let top = self.rng.random_range(3..=5usize).min(order.len());
        let list: Vec<String> = order[..top]
            .iter()
            .enumerate()
            .map(|(i, &k)| format!("{}. {} ({})", i + 1, t.keys[k], self.value(c, c.values[k])))
            .collect();
        let names: Vec<&str> = order[..top].iter().map(|&k| t.keys[k].as_str()).collect();
        let turn = (
            format!("List the {top} {} with the largest {m}{w}.", self.plural()),
            format!("{}.", list.join("; ")),
        );
        (self.allowed.clone(), names.join(", "), vec![turn])
    }
}

/// What a kind's function returns: the keys asked about, the short answer, the turns.
type Asked = (Vec<usize>, String, Vec<(String, String)>);

/// Draws before the generator gives up on the requested kinds (each draw that fails picks a
/// column and a kind at random; a kind that fits any column is found within a few dozen).
const MAX_DRAWS: usize = 10_000;

/// Keys sorted by value, largest first (ties keep table order).
fn ranking(values: &[(usize, f64)]) -> Vec<usize> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.into_iter().map(|(k, _)| k).collect()
}

/// Generates `opts.count` conversations (messages) from a table; errors as
/// [`generate_items`].
pub fn generate(table: &Table, opts: &QaOptions) -> Result<Vec<Vec<Message>>> {
    Ok(generate_items(table, opts)?
        .into_iter()
        .map(|i| i.messages)
        .collect())
}

/// Generates `opts.count` conversations with their kind, keys and short answer.
///
/// Errors when `opts.keys` names a key the table does not have, or leaves fewer than two keys
/// (comparisons need two), or when the table has no key or no numeric column.
pub fn generate_items(table: &Table, opts: &QaOptions) -> Result<Vec<QaItem>> {
    let allowed: Vec<usize> = match &opts.keys {
        None => (0..table.keys.len()).collect(),
        Some(keys) => keys
            .iter()
            .map(|k| {
                table
                    .keys
                    .iter()
                    .position(|x| x == k)
                    .ok_or_else(|| DataError::InvalidOption {
                        option: "keys",
                        message: format!("the table has no key {k:?}"),
                    })
            })
            .collect::<Result<_>>()?,
    };
    if allowed.len() < 2 || table.columns.is_empty() {
        return Err(DataError::InvalidOption {
            option: "keys",
            message: format!(
                "questions need at least two keys and one numeric column; have {} keys and {} \
                 numeric columns",
                allowed.len(),
                table.columns.len()
            ),
        });
    }
    let mut g = Gen {
        t: table,
        rng: rand::rngs::StdRng::seed_from_u64(opts.seed),
        follow_up: if opts.follow_up.is_nan() {
            0.0
        } else {
            opts.follow_up.clamp(0.0, 1.0)
        },
        allowed,
        kinds: opts.kinds.clone(),
        derived: opts.derived.clone(),
    };
    (0..opts.count)
        .map(|_| {
            let conv = g.conversation().ok_or_else(|| DataError::InvalidOption {
                option: "kinds",
                message: format!(
                    "no question of the kinds [{}] fits this table (years, derived measures)",
                    opts.kinds
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
            let mut messages = Vec::new();
            if let Some(s) = &opts.system_prompt {
                messages.push(Message::new(Role::System, s.clone()));
            }
            let shown = g.with_distractors(&conv.keys, opts.distractors);
            for (i, (q, a)) in conv.turns.into_iter().enumerate() {
                let q = if i == 0 && opts.context {
                    format!("{}\nQuestion: {q}", g.context(&shown))
                } else {
                    q
                };
                messages.push(Message::new(Role::User, q));
                messages.push(Message::new(Role::Assistant, a));
            }
            Ok(QaItem {
                kind: conv.kind,
                keys: conv.keys.iter().map(|&k| table.keys[k].clone()).collect(),
                answer: conv.answer,
                messages,
            })
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
