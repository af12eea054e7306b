//! Golden tests: values written by sacrebleu 2.6.0, rouge-score 0.1.2 and NLTK 3.10.4
//! (`tools/fixtures/metrics.py`) on a fixed corpus with Unicode, empty hypotheses,
//! single-word lines, punctuation and numbers.
#![allow(clippy::unwrap_used)]

use kiln_eval::exact_match::Normalize;
use kiln_eval::{Bleu, BleuTokenizer, Chrf, Rouge, RougeType, Smooth, porter};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/metrics/");
const TOL: f64 = 1e-9;

fn load(name: &str) -> Value {
    let path = format!("{DIR}{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= TOL * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

struct Corpus {
    hyps: Vec<String>,
    streams: Vec<Vec<String>>,
}

impl Corpus {
    fn load() -> Self {
        let c = load("corpus.json");
        let streams = c["refs"]
            .as_array()
            .expect("refs")
            .iter()
            .map(strings)
            .collect();
        Self {
            hyps: strings(&c["hyps"]),
            streams,
        }
    }

    /// Per-example reference lists from the first `n` streams.
    fn refs(&self, n: usize) -> Vec<Vec<String>> {
        (0..self.hyps.len())
            .map(|i| self.streams[..n].iter().map(|s| s[i].clone()).collect())
            .collect()
    }
}

fn bleu_from(cfg: &Value) -> Bleu {
    let mut b = Bleu::default();
    if let Some(t) = cfg["tokenize"].as_str() {
        b = b.with_tokenizer(t.parse().expect("tokenizer"));
    }
    if let Some(lc) = cfg["lowercase"].as_bool() {
        b = b.with_lowercase(lc);
    }
    if let Some(m) = cfg["smooth_method"].as_str() {
        b = b.with_smooth(m.parse().expect("smooth"));
    }
    if let Some(e) = cfg["effective_order"].as_bool() {
        b = b.with_effective_order(e);
    }
    b
}

#[test]
fn bleu_corpus_and_sentence_match_sacrebleu() {
    let corpus = Corpus::load();
    let fx = load("bleu.json");
    let cases = fx["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 20);
    for case in cases {
        let cfg = &case["config"];
        let nrefs = case["nrefs"].as_u64().expect("nrefs") as usize;
        let refs = corpus.refs(nrefs);
        let bleu = bleu_from(cfg);
        let s = bleu.corpus_score(&corpus.hyps, &refs).expect("corpus bleu");
        let want = &case["corpus"];
        let what = format!("{cfg} nrefs={nrefs}");
        close(s.score, f(&want["score"]), &format!("{what} score"));
        close(s.bp, f(&want["bp"]), &format!("{what} bp"));
        assert_eq!(
            s.sys_len,
            want["sys_len"].as_u64().expect("sys_len"),
            "{what}"
        );
        assert_eq!(
            s.ref_len,
            want["ref_len"].as_u64().expect("ref_len"),
            "{what}"
        );
        let counts: Vec<u64> = want["counts"]
            .as_array()
            .expect("c")
            .iter()
            .map(|x| x.as_u64().expect("u"))
            .collect();
        // add-k reports the smoothed counts in sacrebleu; the raw counts are ours.
        if cfg["smooth_method"] != "add-k" {
            assert_eq!(s.counts, counts, "{what} counts");
        }
        for (g, w) in s
            .precisions
            .iter()
            .zip(want["precisions"].as_array().expect("p"))
        {
            close(*g, f(w), &format!("{what} precision"));
        }
        assert_eq!(
            s.signature,
            want["signature"].as_str().expect("sig"),
            "{what}"
        );

        let sb = bleu.clone().with_effective_order(true);
        let sent = sb
            .sentence_scores(&corpus.hyps, &refs)
            .expect("sentence bleu");
        for (i, (g, w)) in sent
            .iter()
            .zip(case["sentence"].as_array().expect("s"))
            .enumerate()
        {
            close(
                g.score,
                f(w),
                &format!("{what} sentence {i} {:?}", corpus.hyps[i]),
            );
        }
        assert_eq!(
            sent[0].signature,
            case["sentence_signature"].as_str().expect("sig")
        );
        let one = sb.sentence_score(&corpus.hyps[3], &refs[3]).expect("one");
        close(one.score, f(&case["sentence"][3]), &what);
    }
}

#[test]
fn tokenizers_match_sacrebleu() {
    let fx = load("bleu.json");
    let lines = strings(&fx["tokenized"]["lines"]);
    assert!(lines.len() > 1500);
    for (tok, name) in [
        (BleuTokenizer::Tok13a, "13a"),
        (BleuTokenizer::Intl, "intl"),
    ] {
        for (line, want) in lines.iter().zip(strings(&fx["tokenized"][name])) {
            let got = tok.tokenize(kiln_eval::text::py_rstrip(line));
            assert_eq!(got, want, "{name} on {line:?}");
        }
    }
}

#[test]
fn varying_reference_counts_match_sacrebleu_placeholders() {
    let corpus = Corpus::load();
    let fx = load("bleu.json");
    let var = &fx["varying_refs"];
    let streams = var["refs"].as_array().expect("refs");
    let refs: Vec<Vec<String>> = (0..corpus.hyps.len())
        .map(|i| {
            streams
                .iter()
                .filter_map(|s| s[i].as_str().map(str::to_owned))
                .collect()
        })
        .collect();
    assert!(refs.iter().any(|r| r.len() == 1) && refs.iter().any(|r| r.len() == 2));
    let s = Bleu::default()
        .corpus_score(&corpus.hyps, &refs)
        .expect("bleu");
    close(s.score, f(&var["corpus"]["score"]), "bleu var refs");
    assert_eq!(
        s.signature,
        var["corpus"]["signature"].as_str().expect("sig")
    );
    let c = Chrf::default()
        .corpus_score(&corpus.hyps, &refs)
        .expect("chrf");
    close(c.score, f(&var["chrf"]["score"]), "chrf var refs");
    assert_eq!(c.signature, var["chrf"]["signature"].as_str().expect("sig"));
}

#[test]
fn chrf_matches_sacrebleu() {
    let corpus = Corpus::load();
    let fx = load("chrf.json");
    for case in fx["cases"].as_array().expect("cases") {
        let cfg = &case["config"];
        let nrefs = case["nrefs"].as_u64().expect("n") as usize;
        let mut m = Chrf::default()
            .with_orders(6, cfg["word_order"].as_u64().expect("wo") as usize)
            .expect("orders")
            .with_lowercase(cfg["lowercase"].as_bool().expect("lc"));
        m.whitespace = cfg["whitespace"].as_bool().expect("ws");
        let refs = corpus.refs(nrefs);
        let what = format!("{cfg} nrefs={nrefs}");
        let s = m.corpus_score(&corpus.hyps, &refs).expect("chrf");
        close(s.score, f(&case["corpus"]), &what);
        assert_eq!(s.name, case["name"].as_str().expect("name"));
        assert_eq!(s.signature, case["signature"].as_str().expect("sig"));
        let sent = m
            .sentence_scores(&corpus.hyps, &refs)
            .expect("sentence chrf");
        for (i, (g, w)) in sent
            .iter()
            .zip(case["sentence"].as_array().expect("s"))
            .enumerate()
        {
            close(
                g.score,
                f(w),
                &format!("{what} sentence {i} {:?}", corpus.hyps[i]),
            );
        }
    }
}

fn check_rouge(got: &[kiln_eval::RougeScore], types: &[RougeType], want: &Value, what: &str) {
    for (t, g) in types.iter().zip(got) {
        let w = &want[t.name()];
        close(g.precision, f(&w[0]), &format!("{what} {} P", t.name()));
        close(g.recall, f(&w[1]), &format!("{what} {} R", t.name()));
        close(g.fmeasure, f(&w[2]), &format!("{what} {} F", t.name()));
    }
}

#[test]
fn rouge_matches_rouge_score() {
    let corpus = Corpus::load();
    let fx = load("rouge.json");
    let types = vec![
        RougeType::N(1),
        RougeType::N(2),
        RougeType::L,
        RougeType::Lsum,
        RougeType::N(3),
    ];
    let summaries = fx["summaries"].as_array().expect("summaries");
    for case in fx["cases"].as_array().expect("cases") {
        let stem = case["stem"].as_bool().expect("stem");
        let r = Rouge::new(types.clone(), stem);
        for (i, h) in corpus.hyps.iter().enumerate() {
            let what = format!("stem={stem} example {i} {h:?}");
            assert_eq!(r.tokenize(h), strings(&case["tokens"][i]), "{what} tokens");
            check_rouge(
                &r.score(h, &corpus.streams[0][i]),
                &types,
                &case["single"][i],
                &what,
            );
            let refs = [&corpus.streams[0][i], &corpus.streams[1][i]];
            check_rouge(
                &r.score_multi(h, &refs).expect("multi"),
                &types,
                &case["multi"][i],
                &what,
            );
        }
        for (i, pair) in summaries.iter().enumerate() {
            let (p, t) = (pair[0].as_str().expect("p"), pair[1].as_str().expect("t"));
            check_rouge(
                &r.score(p, t),
                &types,
                &case["summaries"][i],
                &format!("stem={stem} summary {i}"),
            );
        }
        // Corpus means are plain averages of the per-example scores.
        let c = r
            .corpus_score(&corpus.hyps, &corpus.refs(2))
            .expect("corpus");
        let n = corpus.hyps.len() as f64;
        let want_f1: f64 = case["multi"]
            .as_array()
            .expect("m")
            .iter()
            .map(|d| f(&d["rouge1"][2]))
            .sum::<f64>()
            / n;
        close(c.mean[0].fmeasure, want_f1, "mean rouge1 F");
    }
}

#[test]
fn porter_matches_nltk_on_word_list() {
    let fx = load("stemmer.json");
    let words = strings(&fx["words"]);
    let stems = strings(&fx["stems"]);
    assert!(words.len() > 3000, "word list has {}", words.len());
    let bad: Vec<String> = words
        .iter()
        .zip(&stems)
        .filter(|(w, s)| porter::stem(w) != **s)
        .map(|(w, s)| format!("{w}: got {} want {s}", porter::stem(w)))
        .collect();
    assert!(
        bad.is_empty(),
        "{} mismatches: {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
}

#[test]
fn squad_normalisation_matches_official_script() {
    let fx = load("squad.json");
    for (i, w) in strings(&fx["inputs"])
        .iter()
        .zip(strings(&fx["normalized"]))
    {
        assert_eq!(Normalize::squad().apply(i), w, "{i:?}");
    }
}

#[test]
fn smoothing_parse_roundtrip() {
    assert_eq!("exp".parse::<Smooth>().ok(), Some(Smooth::Exp));
}
