//! Table → QA generator on the shipped census table: exact numbers, determinism, coverage.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kiln_data::qa::{self, QaOptions, Table, format_number};
use kiln_data::{DataError, Role};

fn census() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/japan_census_prefectures.csv"
    ))
}

#[test]
fn loads_census_columns() {
    let t = Table::from_csv(&census(), "prefecture").expect("table");
    assert_eq!(t.keys.len(), 47);
    let names: Vec<_> = t
        .columns
        .iter()
        .map(|c| (c.measure.as_str(), c.year, c.unit.as_deref(), c.integer))
        .collect();
    assert_eq!(
        names,
        vec![
            ("area", None, Some("km²"), false),
            ("population", Some(2015), None, true),
            ("population", Some(2020), None, true)
        ]
    );
    let total: f64 = t.columns[2].values.iter().sum();
    assert_eq!(total, 126_146_099.0, "official 2020 total (data/README.md)");
}

#[test]
fn numbers_are_formatted_consistently() {
    assert_eq!(format_number(126_146_099.0, 0), "126,146,099");
    assert_eq!(format_number(83_424.444, 2), "83,424.44");
    assert_eq!(format_number(-1_234.5, 1), "-1,234.5");
    assert_eq!(format_number(999.995, 0), "1,000");
    assert_eq!(format_number(0.0, 2), "0.00");
    assert_eq!(format_number(-0.04, 1), "0.0");
}

#[test]
fn answers_are_exact_and_generation_is_deterministic() {
    let t = Table::from_csv(&census(), "prefecture").expect("table");
    let opts = QaOptions {
        seed: 42,
        count: 600,
        system_prompt: Some("Answer from the census.".into()),
        follow_up: 0.5,
        derived: vec![qa::Derived::population_density()],
        ..QaOptions::default()
    };
    let convs = qa::generate(&t, &opts).expect("qa");
    assert_eq!(
        convs,
        qa::generate(&t, &opts).expect("qa"),
        "same seed, same data"
    );
    assert_ne!(
        convs,
        qa::generate(
            &t,
            &QaOptions {
                seed: 43,
                ..opts.clone()
            }
        )
        .expect("qa")
    );
    assert_eq!(convs.len(), 600);
    let pop2020 = |k: &str| t.columns[2].values[t.keys.iter().position(|x| x == k).expect("key")];
    let (mut lookups, mut follow_ups, mut kinds) = (0, 0, std::collections::BTreeSet::new());
    for c in &convs {
        assert_eq!(c[0].role, Role::System);
        assert!(c.len() >= 3 && c.len() % 2 == 1);
        for pair in c[1..].chunks(2) {
            assert_eq!((pair[0].role, pair[1].role), (Role::User, Role::Assistant));
            let (q, a) = (&pair[0].content, &pair[1].content);
            for (needle, kind) in [
                ("What was the population of", "lookup"),
                ("Give the", "lookup"),
                ("Tell me", "lookup"),
                ("Which had the larger", "comparison"),
                ("exceed that of", "difference"),
                ("How many times larger", "ratio"),
                ("By what percentage", "percent"),
                ("grow or shrink", "trend"),
                ("population density", "density"),
                ("total", "sum"),
                ("average", "mean"),
                ("had the largest", "max"),
                ("had the smallest", "min"),
                ("rank by", "rank"),
                ("List the", "top-k"),
                ("And ", "follow-up"),
            ] {
                if q.contains(needle) {
                    kinds.insert(kind);
                }
            }
            if q.starts_with("And ") {
                follow_ups += 1;
            }
            if let Some(rest) = a.strip_prefix("The population of ")
                && let Some((key, n)) = rest.split_once(" in 2020 was ")
            {
                assert_eq!(
                    n,
                    format!("{}.", format_number(pop2020(key), 0)),
                    "{q} -> {a}"
                );
                lookups += 1;
            }
            if q == "What was the total population of all 47 prefectures in 2020?" {
                assert_eq!(a, "The total was 126,146,099.");
            }
            if q == "Which prefecture had the largest population in 2020?" {
                assert_eq!(a, "Tokyo, with 14,047,594.");
            }
            // Python: 14047594 / 2194.03 = 6402.644...
            if q == "What was the population density of Tokyo in 2020?" {
                assert_eq!(
                    a,
                    "6,402.6 people per km² (14,047,594 people on 2,194.03 km²)."
                );
            }
        }
    }
    assert!(
        lookups > 5 && follow_ups > 5,
        "lookups {lookups}, follow-ups {follow_ups}"
    );
    assert_eq!(kinds.len(), 14, "every kind appears: {kinds:?}");
}

#[test]
fn table_errors_name_file_and_column() {
    // A missing file is an I/O error naming it, not a malformed CSV.
    let missing = Table::from_csv(std::path::Path::new("no/such/table.csv"), "prefecture")
        .expect_err("missing file")
        .to_string();
    assert!(
        missing.starts_with("no/such/table.csv: ") && !missing.contains("malformed"),
        "{missing}"
    );
    let err = Table::from_csv(&census(), "city").expect_err("no such key");
    assert!(
        matches!(&err, DataError::Table { column, .. } if column == "city"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("japan_census_prefectures.csv:1: column `city`"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("t.csv");
    std::fs::write(&p, "name,kind\na,x\nb,y\n").expect("write");
    assert!(
        Table::from_csv(&p, "name")
            .expect_err("no numbers")
            .to_string()
            .contains("no numeric column")
    );
}

#[test]
fn writes_messages_jsonl_that_the_reader_reads_back() {
    let t = Table::from_csv(&census(), "prefecture").expect("table");
    let convs = qa::generate(
        &t,
        &QaOptions {
            count: 20,
            ..QaOptions::default()
        },
    )
    .expect("qa");
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("qa.jsonl");
    qa::write_jsonl(&p, &convs).expect("write");
    let (recs, _) = kiln_data::Reader::open(&[p.display().to_string()])
        .expect("open")
        .read_all()
        .expect("read");
    let back: Vec<_> = recs
        .into_iter()
        .map(|r| match r {
            kiln_data::Record::Conversation(m) => m,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(back, convs);
}

#[test]
fn held_out_keys_kinds_context_and_short_answers() {
    use kiln_data::qa::{QaKind, generate_items};
    let t = Table::from_csv(&census(), "prefecture").expect("table");
    let held_out: Vec<String> = ["Tottori", "Kyoto", "Okinawa", "Saga"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let opts = QaOptions {
        seed: 3,
        count: 200,
        kinds: vec![
            QaKind::Lookup,
            QaKind::Larger,
            QaKind::GrowShrink,
            QaKind::Total,
        ],
        keys: Some(held_out.clone()),
        context: true,
        follow_up: 0.0,
        ..QaOptions::default()
    };
    let items = generate_items(&t, &opts).expect("items");
    // Distractor rows: per-key questions show their rows plus two others.
    let with = generate_items(
        &t,
        &QaOptions {
            distractors: 2,
            kinds: vec![QaKind::Lookup],
            ..opts.clone()
        },
    )
    .expect("items");
    for item in &with {
        let rows = item.messages[0]
            .content
            .lines()
            .filter(|l| l.contains(": area "))
            .count();
        assert_eq!(rows, 3, "{}", item.messages[0].content);
    }
    let pop2020 = |k: &str| t.columns[2].values[t.keys.iter().position(|x| x == k).expect("key")];
    let mut seen = std::collections::BTreeSet::new();
    for item in &items {
        seen.insert(item.kind);
        assert!(item.keys.iter().all(|k| held_out.contains(k)), "{item:?}");
        let q = &item.messages[0].content;
        assert!(q.starts_with("Data:\n"), "{q}");
        // The context holds every row the question needs.
        for k in &item.keys {
            assert!(q.contains(&format!("\n{k}: ")), "{k} missing in {q}");
        }
        let a = &item.messages[1].content;
        assert!(a.contains(&item.answer), "{a} lacks {}", item.answer);
        match item.kind {
            QaKind::Total if q.ends_with("population of all 4 prefectures in 2020?") => {
                let sum: f64 = held_out.iter().map(|k| pop2020(k)).sum();
                assert_eq!(item.answer, format_number(sum, 0));
            }
            QaKind::Total => assert!(q.contains("of all 4 prefectures"), "{q}"),
            QaKind::GrowShrink => assert!(["grew", "shrank"].contains(&item.answer.as_str())),
            QaKind::Larger => assert!(held_out.contains(&item.answer)),
            _ => {}
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    // Tottori's row, as the prompt shows it.
    let tottori = items
        .iter()
        .find(|i| i.keys == ["Tottori"] && i.kind == QaKind::Lookup)
        .expect("a Tottori lookup");
    assert!(
        tottori.messages[0].content.contains(
            "Tottori: area 3,507.14 km²; population in 2015 573,441; population in 2020 553,407."
        ),
        "{}",
        tottori.messages[0].content
    );
    let bad = QaOptions {
        keys: Some(vec!["Atlantis".into(), "Tokyo".into()]),
        ..QaOptions::default()
    };
    let err = generate_items(&t, &bad).unwrap_err().to_string();
    assert!(err.contains("Atlantis"), "{err}");
    assert_eq!(
        "percent_change".parse::<QaKind>().expect("kind"),
        QaKind::PercentChange
    );
    assert!("nope".parse::<QaKind>().is_err());
}

/// A kind no column of the table fits is an error naming the kinds, not an endless search: the
/// density kind needs a declared derived measure, the change kinds need a measure over years.
#[test]
fn kinds_the_table_cannot_ask_are_an_error() {
    use kiln_data::qa::QaKind;
    let t = Table::from_csv(&census(), "prefecture").expect("table");
    let ask = |kinds: Vec<QaKind>, derived: Vec<qa::Derived>| {
        qa::generate_items(
            &t,
            &QaOptions {
                count: 3,
                kinds,
                derived,
                ..QaOptions::default()
            },
        )
    };
    let err = ask(vec![QaKind::Density], vec![]).unwrap_err().to_string();
    assert!(
        err.contains("no question of the kinds [density] fits"),
        "{err}"
    );
    assert_eq!(
        ask(
            vec![QaKind::Density],
            vec![qa::Derived::population_density()]
        )
        .expect("declared")
        .len(),
        3
    );
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("no_years.csv");
    std::fs::write(&p, "city,area\nA,1\nB,2\nC,3\n").expect("write");
    let no_years = Table::from_csv(&p, "city").expect("table");
    let err = qa::generate_items(
        &no_years,
        &QaOptions {
            kinds: vec![QaKind::GrowShrink],
            ..QaOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("[grow_shrink]"), "{err}");
}

/// Time-series and multi-turn kinds on the census table, exact: Aomori 1,308,265 (2015) and
/// 1,237,984 (2020): −70,281 in 5 years, −14,056.2 a year (rounded to the column's integers).
#[test]
fn time_series_and_multi_turn_kinds_are_exact() {
    use kiln_data::qa::{QaKind, generate_items};
    let t = Table::from_csv(&census(), "prefecture").expect("table");
    let items = |kind: QaKind| {
        generate_items(
            &t,
            &QaOptions {
                seed: 5,
                count: 12,
                kinds: vec![kind],
                keys: Some(vec!["Aomori".into(), "Hokkaido".into()]),
                ..QaOptions::default()
            },
        )
        .expect("items")
    };
    let aomori = |kind| {
        items(kind)
            .into_iter()
            .find(|i| i.keys[0] == "Aomori")
            .expect("an Aomori item")
    };
    let it = aomori(QaKind::AnnualChange);
    assert_eq!(it.answer, "-14,056");
    assert_eq!(
        it.messages[0].content,
        "On average, by how much did the population of Aomori change per year between 2015 and 2020?"
    );
    assert_eq!(
        it.messages[1].content,
        "By -14,056 per year: from 1,308,265 in 2015 to 1,237,984 in 2020, -70,281 over 5 years."
    );
    let it = aomori(QaKind::Series);
    assert_eq!(it.answer, "2015: 1,308,265; 2020: 1,237,984");
    assert_eq!(it.messages[1].content, "2015: 1,308,265; 2020: 1,237,984.");
    // Multi-turn on a measure over years: the value, "And in 2015?", the change; the area
    // (no years) asks about a second key and which is larger.
    let (mut over_years, mut two_keys) = (0, 0);
    for it in items(QaKind::MultiTurn) {
        let m = &it.messages;
        assert_eq!(m.len(), 6, "{m:?}");
        assert!(m[1].content.contains(&it.answer));
        if it.keys.len() == 1 && it.keys[0] == "Aomori" {
            assert_eq!(it.answer, "1,237,984");
            assert_eq!(m[2].content, "And in 2015?");
            assert_eq!(
                m[3].content,
                "The population of Aomori in 2015 was 1,308,265."
            );
            assert_eq!(
                m[5].content,
                "It changed by -70,281, from 1,308,265 in 2015 to 1,237,984 in 2020."
            );
            over_years += 1;
        } else if it.keys.len() == 2 {
            two_keys += 1;
            assert_eq!(m[4].content, "Which of the two is larger?");
            // Hokkaido (83,424.44 km²) is larger than Aomori (9,645.64 km²).
            assert!(
                m[5].content.starts_with("Hokkaido, with 83,424.44 km²"),
                "{m:?}"
            );
        }
    }
    assert!(over_years > 0 && two_keys > 0, "{over_years} {two_keys}");
    assert_eq!(
        "multi_turn".parse::<QaKind>().expect("kind"),
        QaKind::MultiTurn
    );
    // A table without years has no time series.
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("no_years.csv");
    std::fs::write(&p, "city,area\nA,1\nB,2\nC,3\n").expect("write");
    let no_years = Table::from_csv(&p, "city").expect("table");
    for kind in [QaKind::AnnualChange, QaKind::Series] {
        let err = generate_items(
            &no_years,
            &QaOptions {
                kinds: vec![kind],
                ..QaOptions::default()
            },
        );
        assert!(err.is_err(), "{kind}");
    }
}

/// The census exact match (`QaItem::is_answered_by`), shared by `census_qa` and `census_rl`:
/// the first number that is not a year of the question, sign and `%` ignored; the first key or
/// grew/shrank mentioned.
#[test]
fn the_first_answer_of_its_type_decides_exact_match() {
    use kiln_data::Message;
    use kiln_data::qa::{QaItem, QaKind};
    let item = |kind, answer: &str, question: &str| QaItem {
        kind,
        keys: vec![],
        answer: answer.into(),
        messages: vec![
            Message::new(Role::System, "Answer from the census data."),
            Message::new(Role::User, question),
            Message::new(Role::Assistant, "-"),
        ],
    };
    let keys: Vec<String> = vec!["Niigata".into(), "Osaka".into()];
    let lookup = item(
        QaKind::Lookup,
        "6,222,666",
        "Data:\nChiba: population in 2015 6,222,666.\nQuestion: What was the population of Chiba in 2015?",
    );
    assert!(lookup.is_answered_by("In 2015 the population of Chiba was 6,222,666.", &keys));
    assert!(!lookup.is_answered_by("It was 6,284,480, up from 6,222,666.", &keys));
    assert!(!lookup.is_answered_by("I do not know.", &keys));
    let pct = item(
        QaKind::PercentChange,
        "-3.5%",
        "By what percentage did it change?",
    );
    assert!(pct.is_answered_by("It fell by 3.5%.", &keys));
    assert!(!pct.is_answered_by("It fell by 3.6%.", &keys));
    let trend = item(QaKind::GrowShrink, "shrank", "Did it grow or shrink?");
    assert!(trend.is_answered_by("It shrank; it did not grow.", &keys));
    assert!(!trend.is_answered_by("It grew, it never shrank.", &keys));
    let larger = item(QaKind::Larger, "Osaka", "Which had the larger population?");
    assert!(larger.is_answered_by("Osaka, with 8,837,685 against 2,201,272.", &keys));
    assert!(!larger.is_answered_by("Niigata had more people than Osaka.", &keys));
}
