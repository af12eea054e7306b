//! Downloading from the Hugging Face Hub (feature `hub`) against a local server that answers as
//! the Hub does (`/api/models/{id}/revision/{rev}`, `/{id}/resolve/{rev}/{file}` with range
//! requests, `ETag`/`X-Repo-Commit` headers): no machine here reaches the real Hub. The files
//! served are the tiny sharded Llama that transformers wrote (`fixtures/tiny/llama_sharded`).
#![allow(clippy::unwrap_used)]
mod common;
use common::fixtures;
use kiln_models::hub::{HubOptions, download_hf_model};
use kiln_models::{CausalLm, DecoderInput, ModelError, Quantization, default_device};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const REPO: &str = "kiln-test/tiny-llama";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the fake Hub saw: request lines and their `Authorization` headers.
#[derive(Default)]
struct Seen {
    requests: Vec<String>,
    auth: Vec<Option<String>>,
}

/// A Hub on 127.0.0.1 serving `dir`'s files as repository [`REPO`] at commit [`COMMIT`], and
/// listing `extra` files it does not serve (a download of one of them fails the test).
fn fake_hub(dir: PathBuf, extra: &'static [&'static str]) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let (mut range, mut auth) = (None, None);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            let path = line.split_whitespace().nth(1).unwrap().to_string();
            {
                let mut s = log.lock().unwrap();
                s.requests.push(path.clone());
                s.auth.push(auth);
            }
            let (status, headers, body) = answer(&dir, extra, &path, range.as_deref());
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (url, seen)
}

type Answer = (&'static str, Vec<(&'static str, String)>, Vec<u8>);

fn answer(dir: &Path, extra: &[&str], path: &str, range: Option<&str>) -> Answer {
    let not_found = || {
        let body = br#"{"error":"Repository Not Found"}"#.to_vec();
        (
            "404 Not Found",
            vec![("Content-Type", "application/json".into())],
            body,
        )
    };
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    if path == format!("/api/models/{REPO}/revision/main") {
        let mut siblings: Vec<_> = names.iter().map(|n| n.as_str()).collect();
        siblings.extend(extra);
        let siblings: Vec<_> = siblings
            .iter()
            .map(|n| serde_json::json!({ "rfilename": n }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings });
        return ("200 OK", vec![], body.to_string().into_bytes());
    }
    let Some(file) = path.strip_prefix(&format!("/{REPO}/resolve/main/")) else {
        return not_found();
    };
    if !names.iter().any(|n| n == file) {
        return not_found();
    }
    let bytes = std::fs::read(dir.join(file)).unwrap();
    let etag: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let spec = range.and_then(|r| r.strip_prefix("bytes=")).unwrap_or("0-");
    let (a, b) = spec.split_once('-').unwrap();
    let a: usize = a.parse().unwrap();
    let b: usize = b
        .parse()
        .map_or(bytes.len() - 1, |b: usize| b.min(bytes.len() - 1));
    let headers = vec![
        ("ETag", format!("\"{etag}\"")),
        ("X-Repo-Commit", COMMIT.into()),
        ("Content-Range", format!("bytes {a}-{b}/{}", bytes.len())),
    ];
    ("206 Partial Content", headers, bytes[a..=b].to_vec())
}

fn options(endpoint: &str, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: endpoint.to_string(),
        cache: cache.to_path_buf(),
        token: Some("hf_kiln_test_token".into()),
        offline: false,
        progress: false,
    }
}

fn logits(dir: &Path) -> Vec<f32> {
    let model = CausalLm::load(dir, &default_device(), Quantization::default()).unwrap();
    let input = DecoderInput::new(vec![1, 5, 9, 13, 2, 7], 1, 6);
    let out = model.forward(&input).unwrap();
    out.into_data().try_into_vec().unwrap()
}

#[test]
fn a_hub_model_lands_in_the_hugging_face_cache_layout_and_loads() {
    let served = fixtures().join("tiny").join("llama_sharded");
    let (url, seen) = fake_hub(served.clone(), &["pytorch_model.bin", "README.md"]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = std::env::var_os("KILN_HUB_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let snapshot = download_hf_model(REPO, &options(&url, &cache)).unwrap();

    // huggingface_hub's layout: refs/main → commit, snapshot files pointing at blobs/<etag>.
    let root = cache.join("models--kiln-test--tiny-llama");
    assert_eq!(snapshot, root.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main")).unwrap(),
        COMMIT
    );
    let mut files = 0;
    for entry in std::fs::read_dir(&served).unwrap() {
        let name = entry.unwrap().file_name();
        let local = snapshot.join(&name);
        let link = std::fs::read_link(&local).unwrap();
        assert!(link.starts_with("../../blobs"), "{link:?}");
        let bytes = std::fs::read(&local).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(served.join(&name)).unwrap(),
            "{name:?}"
        );
        files += 1;
    }
    assert_eq!(files, 6);
    assert!(!snapshot.join("pytorch_model.bin").exists());
    // The bearer token reached the Hub on every request.
    let before = {
        let s = seen.lock().unwrap();
        assert!(
            s.auth
                .iter()
                .all(|a| a.as_deref() == Some("Bearer hf_kiln_test_token"))
        );
        assert!(!s.requests.iter().any(|r| r.contains("pytorch_model")));
        s.requests.len()
    };

    // The downloaded model computes what the fixture directory computes, bit for bit.
    assert_eq!(logits(&snapshot), logits(&served));

    // A second resolution is served by the cache without a request, also offline.
    let mut again = options(&url, &cache);
    assert_eq!(download_hf_model(REPO, &again).unwrap(), snapshot);
    again.offline = true;
    assert_eq!(download_hf_model(REPO, &again).unwrap(), snapshot);
    assert_eq!(seen.lock().unwrap().requests.len(), before);
}

#[test]
fn offline_without_a_cached_copy_and_unknown_repositories_are_typed_errors() {
    let (url, seen) = fake_hub(fixtures().join("tiny").join("llama_sharded"), &[]);
    let cache = tempfile::tempdir().unwrap();
    let mut opts = options(&url, cache.path());
    opts.offline = true;
    match download_hf_model(REPO, &opts) {
        Err(ModelError::Hub { repo, reason }) => {
            assert_eq!(repo, REPO);
            assert!(reason.contains("HF_HUB_OFFLINE"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(seen.lock().unwrap().requests.is_empty());

    opts.offline = false;
    match download_hf_model("kiln-test/no-such-model", &opts) {
        Err(ModelError::Hub { repo, reason }) => {
            assert_eq!(repo, "kiln-test/no-such-model");
            assert!(reason.contains("404"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing half-made is left to be mistaken for a snapshot.
    assert!(kiln_models::hub::resolve_hf_cache("kiln-test/no-such-model", cache.path()).is_err());
}
