//! BLEU, chrF and ROUGE over 10,000 sentence pairs.
//!
//! `cargo bench --bench metrics`; the same pairs are scored by sacrebleu and rouge-score with
//! `tools/bench_metrics.py` (which also writes them: `out/bench-metrics/pairs.tsv`, or `$KILN_METRICS_PAIRS`).
//! Without that file, the pairs are generated here with the same recipe.

use criterion::{Criterion, criterion_group, criterion_main};
use kiln::eval::{Bleu, Chrf, Rouge, RougeType};

/// Pairs from `tools/bench_metrics.py` if present, else a deterministic stand-in.
fn pairs() -> (Vec<String>, Vec<[String; 1]>) {
    let path = std::env::var("KILN_METRICS_PAIRS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/out/bench-metrics/pairs.tsv").to_owned()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| generate(10_000));
    let mut hyps = Vec::new();
    let mut refs = Vec::new();
    for line in text.lines() {
        let (h, r) = line.split_once('\t').unwrap_or((line, ""));
        hyps.push(h.to_owned());
        refs.push([r.to_owned()]);
    }
    (hyps, refs)
}

fn generate(n: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "in",
        "model",
        "training",
        "data",
        "running",
        "results",
        "quickly",
        "is",
        "was",
        "a",
        "new",
        "language",
        "fine-tuning",
        "evaluation",
        "3.5",
        "1,234",
        "(see",
        "below)",
        "it's",
        "generalization",
        "connected",
        "happily",
        "we",
        "report",
        "scores",
        "on",
        "test",
        "set.",
    ];
    let mut state = 42u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut out = String::new();
    for _ in 0..n {
        let len = 8 + next() % 25;
        let hyp: Vec<&str> = (0..len).map(|_| WORDS[next() % WORDS.len()]).collect();
        let r: Vec<&str> = hyp
            .iter()
            .map(|w| {
                if next() % 4 == 0 {
                    WORDS[next() % WORDS.len()]
                } else {
                    w
                }
            })
            .collect();
        out.push_str(&format!("{}\t{}\n", hyp.join(" "), r.join(" ")));
    }
    out
}

fn bench(c: &mut Criterion) {
    let (hyps, refs) = pairs();
    // The values, to compare with what tools/bench_metrics.py prints for the Python tools.
    let rouge = Rouge::new(vec![RougeType::N(1), RougeType::N(2), RougeType::L], false);
    if let (Ok(b), Ok(ch), Ok(r)) = (
        Bleu::default().corpus_score(&hyps, &refs),
        Chrf::default().corpus_score(&hyps, &refs),
        rouge.corpus_score(&hyps, &refs),
    ) {
        eprintln!(
            "values: bleu={:.10} chrf={:.10} rouge1_f={:.10} rougeL_f={:.10}",
            b.score, ch.score, r.mean[0].fmeasure, r.mean[2].fmeasure
        );
    }
    let mut g = c.benchmark_group(format!("metrics_{}_pairs", hyps.len()));
    g.sample_size(10);
    let bleu = Bleu::default();
    g.bench_function("corpus_bleu_13a", |b| {
        b.iter(|| bleu.corpus_score(&hyps, &refs).map(|s| s.score))
    });
    let sbleu = Bleu::sentence();
    g.bench_function("sentence_bleu_13a", |b| {
        b.iter(|| sbleu.sentence_scores(&hyps, &refs).map(|s| s.len()))
    });
    let chrf = Chrf::default();
    g.bench_function("corpus_chrf", |b| {
        b.iter(|| chrf.corpus_score(&hyps, &refs).map(|s| s.score))
    });
    g.bench_function("rouge_1_2_L", |b| {
        b.iter(|| rouge.corpus_score(&hyps, &refs).map(|s| s.mean[0].fmeasure))
    });
    let rouge_stem = Rouge::new(vec![RougeType::N(1), RougeType::N(2), RougeType::L], true);
    g.bench_function("rouge_1_2_L_stem", |b| {
        b.iter(|| {
            rouge_stem
                .corpus_score(&hyps, &refs)
                .map(|s| s.mean[0].fmeasure)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
