//! The Hugging Face Hub's cache, and downloads into it (feature `hub`).
//!
//! Files land where `huggingface_hub` puts them (`models--org--name/blobs/<etag>`, the snapshot
//! `snapshots/<commit>/<file>` pointing at the blob, `refs/<revision>` holding the commit), so
//! Python and kiln share one cache in both directions. The client is the `hf-hub` crate's
//! blocking API (0.4, on `ureq`): loading a model is a blocking step of every example, and
//! hf-hub 1.x offers only an async client (reqwest, tokio, hf-xet), which would put an async
//! runtime and a second HTTP stack under a synchronous loader. `hf-hub` resumes partial
//! downloads, follows the Hub's redirects and shows an indicatif progress bar.
use crate::error::{ModelError, Result};
#[cfg(feature = "hub")]
use hf_hub::api::sync::ApiBuilder;
#[cfg(feature = "hub")]
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// The Hugging Face hub cache as `huggingface_hub` finds it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("huggingface").join("hub")
}

/// `org/name` or `org/name@revision`, each part of `[A-Za-z0-9._-]` (revisions may hold `/`).
pub(crate) fn looks_like_repo_id(s: &str) -> bool {
    let (repo, rev) = s.split_once('@').unwrap_or((s, "main"));
    let ok = |p: &str, slash: bool| {
        !p.is_empty()
            && p.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slash && c == '/')
            })
    };
    let mut parts = repo.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if ok(a, false) && ok(b, false) && !a.starts_with('.'))
        && ok(rev, true)
}

/// The snapshot directory of model `org/name[@revision]` in the Hugging Face cache `cache`, laid
/// out as `huggingface_hub` writes it: `models--org--name/refs/<revision>` holds a commit hash
/// and `models--org--name/snapshots/<commit>/` the files. The revision defaults to `main`; a
/// revision that is a snapshot's commit hash names it directly.
///
/// # Errors
/// [`ModelError::Io`] naming the ref file or snapshot directory that is missing.
pub fn resolve_hf_cache(repo: &str, cache: &Path) -> Result<PathBuf> {
    let (name, revision) = repo.split_once('@').unwrap_or((repo, "main"));
    let root = cache.join(format!("models--{}", name.replace('/', "--")));
    let snapshots = root.join("snapshots");
    let direct = snapshots.join(revision);
    let commit = if direct.is_dir() {
        revision.to_string()
    } else {
        let refs = root.join("refs").join(revision);
        std::fs::read_to_string(&refs)
            .map_err(|e| ModelError::io(&refs, e))?
            .trim()
            .to_string()
    };
    let dir = snapshots.join(&commit);
    if !dir.is_dir() {
        return Err(ModelError::io(
            &dir,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{repo}: snapshot {commit} is not in the Hugging Face cache"),
            ),
        ));
    }
    Ok(dir)
}

#[cfg(feature = "hub")]
/// Where and how to download: the Hub's address, the cache, the token, offline mode.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The Hub's address (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The Hugging Face hub cache ([`hf_hub_cache`]).
    pub cache: PathBuf,
    /// Bearer token for gated or private repositories (`HF_TOKEN`, else the token file
    /// `huggingface-cli login` writes).
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: never reach the network, use the cache only.
    pub offline: bool,
    /// Show a progress bar per file.
    pub progress: bool,
}

#[cfg(feature = "hub")]
impl HubOptions {
    /// The options `huggingface_hub` takes from the environment: `HF_ENDPOINT`,
    /// `HF_HUB_CACHE`/`HF_HOME`, `HF_TOKEN` (else `$HF_HOME/token`, else
    /// `~/.cache/huggingface/token`), `HF_HUB_OFFLINE` (`1`, `true`, `yes` or `on`).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from);
            home.unwrap_or_else(std::env::temp_dir)
                .join(".cache")
                .join("huggingface")
        });
        let token = var("HF_TOKEN").or_else(|| {
            let file = std::fs::read_to_string(home.join("token")).ok()?;
            Some(file.trim().to_string()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            cache: hf_hub_cache(),
            token,
            offline,
            progress: true,
        }
    }
}

/// The snapshot directory of `org/name[@revision]`: from the cache when it is there, else
/// downloaded from the Hub into the cache (unless [`HubOptions::offline`]).
///
/// What is downloaded: the files a loader reads (`*.json`, `*.safetensors`, `*.jinja`,
/// `tokenizer.model`, `*.txt`); other weight formats (`*.bin`, `*.pt`, `*.h5`, `*.msgpack`,
/// `*.onnx`, `*.gguf`) are skipped. A cached snapshot is used without asking the Hub whether
/// the revision moved (delete the snapshot to refresh).
///
/// # Errors
/// [`ModelError::Hub`] naming the repository: offline with nothing cached, the Hub refusing
/// the request (unknown repository, revision, missing token), a repository without
/// safetensors weights, a file that fails to download.
#[cfg(feature = "hub")]
pub fn download_hf_model(repo: &str, options: &HubOptions) -> Result<PathBuf> {
    if let Ok(dir) = resolve_hf_cache(repo, &options.cache) {
        return Ok(dir);
    }
    let err = |reason: String| ModelError::Hub {
        repo: repo.to_string(),
        reason,
    };
    if options.offline {
        return Err(err(format!(
            "HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache {}",
            options.cache.display()
        )));
    }
    let (name, revision) = repo.split_once('@').unwrap_or((repo, "main"));
    let api = ApiBuilder::new()
        .with_endpoint(options.endpoint.clone())
        .with_cache_dir(options.cache.clone())
        .with_token(options.token.clone())
        .with_progress(options.progress)
        .build()
        .map_err(|e| err(format!("cannot build the Hub client: {e}")))?;
    let handle = api.repo(Repo::with_revision(
        name.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = handle
        .info()
        .map_err(|e| err(format!("{}: {e}", options.endpoint)))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    for file in wanted_files(&files).map_err(err)? {
        handle
            .get(&file)
            .map_err(|e| err(format!("downloading `{file}`: {e}")))?;
    }
    // `hf-hub` wrote `refs/<revision>`; a revision given as a commit has its snapshot directly.
    resolve_hf_cache(repo, &options.cache)
}

/// The files of a repository a loader reads, or why the repository cannot be loaded.
#[cfg(feature = "hub")]
fn wanted_files(files: &[String]) -> std::result::Result<Vec<String>, String> {
    let wanted = |f: &str| {
        [".json", ".safetensors", ".jinja", ".txt"]
            .iter()
            .any(|ext| f.ends_with(ext))
            || f.rsplit('/').next() == Some("tokenizer.model")
    };
    let picked: Vec<String> = files.iter().filter(|f| wanted(f)).cloned().collect();
    if !picked.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(format!(
            "the repository holds no safetensors weights (files: {}); kiln reads safetensors \
             or a GGUF file given by path",
            files.join(", ")
        ));
    }
    if !picked.iter().any(|f| f == "config.json") {
        return Err("the repository has no config.json".into());
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "hub")]
    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[cfg(feature = "hub")]
    #[test]
    fn picks_what_a_loader_reads_and_skips_other_weight_formats() {
        let files = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "onnx/model.onnx",
            "tokenizer.json",
            "tokenizer.model",
            "merges.txt",
            "chat_template.jinja",
        ]);
        let got = wanted_files(&files).unwrap();
        assert_eq!(
            got,
            names(&[
                "config.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "tokenizer.json",
                "tokenizer.model",
                "merges.txt",
                "chat_template.jinja",
            ])
        );
    }

    #[cfg(feature = "hub")]
    #[test]
    fn a_repository_without_safetensors_or_config_is_refused_with_its_files() {
        let e = wanted_files(&names(&["config.json", "pytorch_model.bin"])).unwrap_err();
        assert!(
            e.contains("pytorch_model.bin") && e.contains("no safetensors"),
            "{e}"
        );
        let e = wanted_files(&names(&["model.safetensors"])).unwrap_err();
        assert!(e.contains("config.json"), "{e}");
    }

    #[test]
    fn resolves_refs_and_commits_in_the_hf_cache() {
        let cache = tempfile::tempdir().unwrap();
        let root = cache.path().join("models--org--tiny-model");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = root.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("blobs/abc"), "{}").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("../../blobs/abc", snap.join("config.json")).unwrap();
        std::fs::write(root.join("refs/main"), commit).unwrap();
        std::fs::write(root.join("refs/v1"), format!("{commit}\n")).unwrap();
        let p = |s: &str| resolve_hf_cache(s, cache.path());
        assert_eq!(p("org/tiny-model").unwrap(), snap);
        assert_eq!(p("org/tiny-model@v1").unwrap(), snap);
        assert_eq!(p(&format!("org/tiny-model@{commit}")).unwrap(), snap);
        let err = p("org/tiny-model@v2").unwrap_err().to_string();
        assert!(err.contains("refs/v2"), "{err}");
        let err = p("org/other").unwrap_err().to_string();
        assert!(err.contains("models--org--other"), "{err}");
        assert!(looks_like_repo_id(
            "HuggingFaceTB/SmolLM2-135M-Instruct@main"
        ));
        assert!(!looks_like_repo_id("./model.gguf"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
    }
}
