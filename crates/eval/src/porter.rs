//! The Porter stemmer exactly as NLTK's `PorterStemmer()` (mode `NLTK_EXTENSIONS`), which
//! rouge-score applies to tokens longer than three characters.
//!
//! Porter, M. "An algorithm for suffix stripping", Program 14.3 (1980), plus the NLTK
//! departures: an irregular-forms table, `ies`/`ied` on four-letter words, `y -> i` only after
//! a consonant in a stem of two or more letters, `alli`, `fulli` and `logi` in step 2, and the
//! two-letter `*o` condition.

use crate::text::py_lower;

type W = Vec<char>;

/// Stem one word (lowercased first, as NLTK does).
pub fn stem(word: &str) -> String {
    let lower = py_lower(word);
    if let Some(s) = irregular(&lower) {
        return s.to_owned();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: W = lower.chars().collect();
    w = step1a(w);
    w = step1b(w);
    w = step1c(w);
    w = step2(w);
    w = step3(w);
    w = step4(w);
    w = step5a(w);
    w = step5b(w);
    w.into_iter().collect()
}

fn irregular(w: &str) -> Option<&'static str> {
    Some(match w {
        "sky" | "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "news" => "news",
        "innings" | "inning" => "inning",
        "outings" | "outing" => "outing",
        "cannings" | "canning" => "canning",
        "howe" => "howe",
        "proceed" => "proceed",
        "exceed" => "exceed",
        "succeed" => "succeed",
        _ => return None,
    })
}

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// Consonant flags for every position (`y` is a consonant at the start or after a vowel).
fn consonants(w: &[char]) -> Vec<bool> {
    let mut f: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let cons = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !f[i - 1]
        } else {
            true
        };
        f.push(cons);
    }
    f
}

fn is_cons(w: &[char], i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// The measure m of `[C](VC){m}[V]`: the number of vowel-to-consonant transitions.
fn measure(w: &[char]) -> usize {
    consonants(w).windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(w: &[char]) -> bool {
    consonants(w).iter().any(|&c| !c)
}

fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_cons(w, n - 1)
}

/// `*o`: ends consonant-vowel-consonant, last not w/x/y; or (NLTK) a two-letter vowel-consonant word.
fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    if n >= 3 {
        let f = consonants(w);
        if f[n - 3] && !f[n - 2] && f[n - 1] && !matches!(w[n - 1], 'w' | 'x' | 'y') {
            return true;
        }
    }
    n == 2 && {
        let f = consonants(w);
        !f[0] && f[1]
    }
}

fn ends(w: &[char], suffix: &str) -> bool {
    let n = suffix.chars().count();
    w.len() >= n && w[w.len() - n..].iter().copied().eq(suffix.chars())
}

fn cut(w: &[char], suffix: &str) -> W {
    w[..w.len() - suffix.chars().count()].to_vec()
}

fn with(mut stem: W, add: &str) -> W {
    stem.extend(add.chars());
    stem
}

type Cond<'a> = &'a dyn Fn(&[char]) -> bool;

/// The first rule whose suffix matches decides: replaced if its condition holds, else unchanged.
fn apply_rules(w: W, rules: &[(&str, &str, Option<Cond>)]) -> W {
    for &(suffix, rep, cond) in rules {
        if ends(&w, suffix) {
            let stem = cut(&w, suffix);
            return if cond.is_none_or(|c| c(&stem)) {
                with(stem, rep)
            } else {
                w
            };
        }
    }
    w
}

fn m_gt0(s: &[char]) -> bool {
    measure(s) > 0
}

fn m_gt1(s: &[char]) -> bool {
    measure(s) > 1
}

fn step1a(w: W) -> W {
    if ends(&w, "ies") && w.len() == 4 {
        return with(cut(&w, "ies"), "ie");
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", None),
            ("ies", "i", None),
            ("ss", "ss", None),
            ("s", "", None),
        ],
    )
}

fn step1b(w: W) -> W {
    if ends(&w, "ied") {
        return with(cut(&w, "ied"), if w.len() == 4 { "ie" } else { "i" });
    }
    if ends(&w, "eed") {
        let stem = cut(&w, "eed");
        return if measure(&stem) > 0 {
            with(stem, "ee")
        } else {
            w
        };
    }
    let mut stem = None;
    for suffix in ["ed", "ing"] {
        if ends(&w, suffix) {
            let s = cut(&w, suffix);
            if contains_vowel(&s) {
                stem = Some(s);
                break;
            }
        }
    }
    let Some(s) = stem else { return w };
    for (suffix, rep) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if ends(&s, suffix) {
            return with(cut(&s, suffix), rep);
        }
    }
    if ends_double_consonant(&s) {
        let last = s[s.len() - 1];
        return if matches!(last, 'l' | 's' | 'z') {
            s
        } else {
            s[..s.len() - 1].to_vec()
        };
    }
    if measure(&s) == 1 && ends_cvc(&s) {
        with(s, "e")
    } else {
        s
    }
}

fn step1c(w: W) -> W {
    let cond = |s: &[char]| s.len() > 1 && is_cons(s, s.len() - 1);
    apply_rules(w, &[("y", "i", Some(&cond))])
}

fn step2(w: W) -> W {
    if ends(&w, "alli") && m_gt0(&cut(&w, "alli")) {
        return step2(with(cut(&w, "alli"), "al"));
    }
    let word = w.clone();
    let logi = move |_: &[char]| m_gt0(&word[..word.len() - 3]);
    let m: Option<Cond> = Some(&m_gt0);
    apply_rules(
        w,
        &[
            ("ational", "ate", m),
            ("tional", "tion", m),
            ("enci", "ence", m),
            ("anci", "ance", m),
            ("izer", "ize", m),
            ("bli", "ble", m),
            ("alli", "al", m),
            ("entli", "ent", m),
            ("eli", "e", m),
            ("ousli", "ous", m),
            ("ization", "ize", m),
            ("ation", "ate", m),
            ("ator", "ate", m),
            ("alism", "al", m),
            ("iveness", "ive", m),
            ("fulness", "ful", m),
            ("ousness", "ous", m),
            ("aliti", "al", m),
            ("iviti", "ive", m),
            ("biliti", "ble", m),
            ("fulli", "ful", m),
            ("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(w: W) -> W {
    let m: Option<Cond> = Some(&m_gt0);
    apply_rules(
        w,
        &[
            ("icate", "ic", m),
            ("ative", "", m),
            ("alize", "al", m),
            ("iciti", "ic", m),
            ("ical", "ic", m),
            ("ful", "", m),
            ("ness", "", m),
        ],
    )
}

fn step4(w: W) -> W {
    let m: Option<Cond> = Some(&m_gt1);
    let ion = |s: &[char]| m_gt1(s) && matches!(s.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            ("al", "", m),
            ("ance", "", m),
            ("ence", "", m),
            ("er", "", m),
            ("ic", "", m),
            ("able", "", m),
            ("ible", "", m),
            ("ant", "", m),
            ("ement", "", m),
            ("ment", "", m),
            ("ent", "", m),
            ("ion", "", Some(&ion)),
            ("ou", "", m),
            ("ism", "", m),
            ("ate", "", m),
            ("iti", "", m),
            ("ous", "", m),
            ("ive", "", m),
            ("ize", "", m),
        ],
    )
}

fn step5a(w: W) -> W {
    if ends(&w, "e") {
        let stem = cut(&w, "e");
        let m = measure(&stem);
        if m > 1 || (m == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    w
}

fn step5b(w: W) -> W {
    if ends(&w, "ll") && measure(&w[..w.len() - 1]) > 1 {
        return with(cut(&w, "ll"), "l");
    }
    w
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::stem;

    #[test]
    fn classic_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("agreed", "agre"),
            ("hopping", "hop"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalization", "gener"),
            ("controlling", "control"),
            ("dying", "die"),
            ("analogousli", "analog"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
