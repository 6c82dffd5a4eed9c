//! The server's configuration, resolved from the command line: models to load, keys, limits.
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::loader::{cached_snapshot, hub_cache_dir, ModelSource};
use serde::Deserialize;

use crate::engine::{ModelToLoad, PreviewDecoderToLoad};
use crate::imaging::ReferenceLimits;

/// The model served when `--model` is not given and it is in the local HF cache.
pub const PREFERRED_DEFAULT_MODEL: &str = "stabilityai/sd-turbo";
/// The weights-free fallback.
pub const BUILTIN_DEFAULT_MODEL: &str = "imago/tiny-sd";

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("an API key cannot be empty".into());
        }
        Ok(Self(s.to_string()))
    }
}

/// One API key and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub secret: Secret,
    /// `None`: every model.
    pub models: Option<Vec<String>>,
    /// Quota and rate (`quota_images`, `rate_per_minute` in the keys file).
    pub limits: KeyLimits,
}

/// Per-key usage bounds, counted in memory (a restart resets them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Images the key may generate in all (402 beyond).
    pub quota_images: Option<u64>,
    /// Generation requests the key may send in any 60 s (429 with Retry-After beyond).
    pub rate_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    key: String,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    quota_images: Option<u64>,
    #[serde(default)]
    rate_per_minute: Option<u32>,
}

/// Reads `--api-keys-file`:
/// ```toml
/// [[keys]]
/// name = "alice"
/// key = "sk-alice-..."
/// models = ["stabilityai/sd-turbo"]   # optional allow-list
/// quota_images = 1000                   # optional: images in all (402 beyond)
/// rate_per_minute = 30                  # optional: generation requests per minute (429 beyond)
/// ```
pub fn read_keys_file(path: &Path) -> Result<Vec<ApiKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --api-keys-file {}", path.display()))?;
    let file: KeysFile = toml::from_str(&text)
        .with_context(|| format!("invalid --api-keys-file {}", path.display()))?;
    let mut keys = Vec::new();
    for (i, entry) in file.keys.into_iter().enumerate() {
        if entry.key.trim().is_empty() {
            bail!(
                "invalid --api-keys-file {}: keys[{i}] ({}) has an empty key",
                path.display(),
                entry.name
            );
        }
        if entry.rate_per_minute == Some(0) {
            bail!(
                "invalid --api-keys-file {}: keys[{i}] ({}) has rate_per_minute = 0; use quota_images = 0 to block a key",
                path.display(),
                entry.name
            );
        }
        keys.push(ApiKey {
            name: entry.name,
            secret: Secret(entry.key),
            models: entry.models,
            limits: KeyLimits {
                quota_images: entry.quota_images,
                rate_per_minute: entry.rate_per_minute,
            },
        });
    }
    Ok(keys)
}

/// Limits on what one request may bring.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Size, pixels, time and addresses for `input_references`.
    pub reference: ReferenceLimits,
    /// Most output pixels (n x width x height) one request may ask for.
    pub max_pixels_per_request: u64,
    /// Longest gap between request body chunks (`--idle-timeout`).
    pub idle_timeout: std::time::Duration,
}

/// Default `--max-pixels-per-request`: ten 1024x1024 images (SDXL's largest n at its native size).
pub const DEFAULT_MAX_PIXELS_PER_REQUEST: u64 = 10 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            reference: ReferenceLimits::default(),
            max_pixels_per_request: DEFAULT_MAX_PIXELS_PER_REQUEST,
            idle_timeout: crate::api::connections::ConnectionLimits::default().idle_timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub models: Vec<ModelToLoad>,
    pub keys: Vec<ApiKey>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub max_queue: usize,
    pub limits: Limits,
    /// Header, idle and shutdown timeouts of client connections.
    pub connections: crate::api::connections::ConnectionLimits,
    /// Serve `/metrics` without an API key.
    pub public_metrics: bool,
    pub preview_decoders: Vec<PreviewDecoderToLoad>,
    /// FLUX: release the T5 encoder between prompts.
    pub low_memory: bool,
    /// Serve the browser playground at `/`.
    pub playground: bool,
    /// Batching, request timeout and pixel limit of the engine.
    pub scheduling: crate::engine::Scheduling,
    /// Upstream providers from `--providers-file`.
    pub upstreams: Vec<UpstreamConfig>,
}

/// `--preview-decoder [MODEL_ID=]SOURCE`.
pub fn parse_preview_decoder_arg(arg: &str) -> Result<PreviewDecoderToLoad> {
    match arg.split_once('=') {
        Some((id, source)) if !id.trim().is_empty() && !source.trim().is_empty() => {
            Ok(PreviewDecoderToLoad {
                model: Some(id.trim().to_string()),
                source: source.trim().to_string(),
            })
        }
        Some(_) => bail!("invalid --preview-decoder {arg:?}: expected MODEL_ID=SOURCE or SOURCE"),
        None => Ok(PreviewDecoderToLoad {
            model: None,
            source: arg.trim().to_string(),
        }),
    }
}

/// `--model [ID=]SOURCE`: without `ID=`, the id is the repo id, the built-in id, or the folder's name.
pub fn parse_model_arg(arg: &str) -> Result<ModelToLoad> {
    let (id, source) = match arg.split_once('=') {
        Some((id, source)) => {
            let (id, source) = (id.trim(), source.trim());
            if id.is_empty() || source.is_empty() {
                bail!("invalid --model {arg:?}: expected ID=SOURCE or SOURCE");
            }
            (id.to_string(), source.to_string())
        }
        None => (default_id(arg)?, arg.trim().to_string()),
    };
    Ok(ModelToLoad { id, source })
}

fn default_id(source: &str) -> Result<String> {
    Ok(
        match ModelSource::parse(source).with_context(|| format!("invalid --model {source:?}"))? {
            ModelSource::BuiltIn(builtin) => builtin.to_string(),
            ModelSource::HubRepo { repo_id, .. } => repo_id,
            ModelSource::Folder(path) => {
                let path = path.canonicalize().unwrap_or(path);
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| source.to_string())
            }
        },
    )
}

/// Without `--model`: SD-Turbo when it is in the HF cache, else the built-in tiny model (with a
/// log line that says how to get a real one).
pub fn default_models() -> Vec<ModelToLoad> {
    let cache = hub_cache_dir();
    if let Ok(Some(_)) = cached_snapshot(&cache, PREFERRED_DEFAULT_MODEL, None) {
        tracing::info!(
            "no --model given: serving {PREFERRED_DEFAULT_MODEL} from the local Hugging Face cache"
        );
        return vec![ModelToLoad {
            id: PREFERRED_DEFAULT_MODEL.into(),
            source: PREFERRED_DEFAULT_MODEL.into(),
        }];
    }
    tracing::warn!(
        "no --model given and {PREFERRED_DEFAULT_MODEL} is not in the Hugging Face cache ({}): serving the built-in \
         {BUILTIN_DEFAULT_MODEL} (random weights, noise-like pictures). For real images run \
         `imago pull {PREFERRED_DEFAULT_MODEL}` and restart, or pass --model PATH_OR_REPO",
        cache.display()
    );
    vec![ModelToLoad {
        id: BUILTIN_DEFAULT_MODEL.into(),
        source: BUILTIN_DEFAULT_MODEL.into(),
    }]
}

/// Two `--model`s with one id would make requests ambiguous.
pub fn check_unique_ids(models: &[ModelToLoad]) -> Result<()> {
    for (i, m) in models.iter().enumerate() {
        if models[..i].iter().any(|other| other.id == m.id) {
            bail!(
                "two --model arguments have the id {:?}; give one of them another with ID=SOURCE",
                m.id
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Upstream providers (`--providers-file`)
// ---------------------------------------------------------------------------------------------

/// The API an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// OpenRouter's Images API (`POST {base_url}/images`, `GET {base_url}/images/models`): OpenRouter
    /// itself or another imago (`base_url = "http://host:port/api/v1"`).
    OpenRouter,
    /// OpenAI's Images API (`POST {base_url}/images/generations`, `GET {base_url}/models`).
    OpenAi,
}

/// One upstream provider, its key already read from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamConfig {
    /// The name clients use in `provider.order/only/ignore/options`.
    pub slug: String,
    pub kind: UpstreamKind,
    /// Without a trailing slash; the router appends fixed paths, never anything from a request.
    pub base_url: String,
    /// Sent as `Authorization: Bearer KEY`; `None` when the file names no `api_key_env`.
    pub api_key: Option<Secret>,
    /// The model ids it serves (requests for them may go there).
    pub models: Vec<String>,
    /// openrouter kind: the slug under which the upstream reads `provider.options.<this slug>`
    /// (`local` for an imago upstream, the default).
    pub options_slug: String,
    /// Longest wait for a response or for the next bytes of one (a timeout is an upstream failure).
    pub timeout: std::time::Duration,
}

/// Seconds an upstream may stay silent before it counts as failed.
pub const DEFAULT_UPSTREAM_TIMEOUT_S: u64 = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[serde(default)]
    providers: Vec<ProviderEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderEntry {
    slug: String,
    kind: UpstreamKind,
    base_url: String,
    #[serde(default)]
    api_key_env: Option<String>,
    models: Vec<String>,
    #[serde(default)]
    options_slug: Option<String>,
    #[serde(default)]
    timeout_s: Option<u64>,
}

/// Reads `--providers-file`, taking each key from the variable its `api_key_env` names:
/// ```toml
/// [[providers]]
/// slug = "lab-gpu"
/// kind = "openrouter"                  # or "openai"
/// base_url = "http://gpu-box:8080/api/v1"
/// api_key_env = "LAB_GPU_KEY"          # optional; the key never sits in the file
/// models = ["stabilityai/sdxl-turbo"]
/// ```
pub fn read_providers_file(path: &Path) -> Result<Vec<UpstreamConfig>> {
    read_providers_file_with(path, |name| std::env::var(name).ok())
}

/// As [`read_providers_file`], with the environment given (for tests).
pub fn read_providers_file_with(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<UpstreamConfig>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --providers-file {}", path.display()))?;
    let file: ProvidersFile = toml::from_str(&text)
        .with_context(|| format!("invalid --providers-file {}", path.display()))?;
    let mut upstreams: Vec<UpstreamConfig> = Vec::new();
    for (i, entry) in file.providers.into_iter().enumerate() {
        let at = format!("--providers-file {}: providers[{i}]", path.display());
        let slug = entry.slug.trim().to_string();
        if slug.is_empty() || slug.eq_ignore_ascii_case("local") {
            bail!(
                "{at}: slug {:?} is empty or the reserved \"local\"",
                entry.slug
            );
        }
        if upstreams.iter().any(|u| u.slug.eq_ignore_ascii_case(&slug)) {
            bail!("{at}: slug {slug:?} is used twice");
        }
        let base_url = entry.base_url.trim().trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base_url)
            .with_context(|| format!("{at} ({slug}): base_url {base_url:?} is not a URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            bail!("{at} ({slug}): base_url {base_url:?} must be an http(s) URL with a host");
        }
        if entry.models.is_empty() || entry.models.iter().any(|m| m.trim().is_empty()) {
            bail!("{at} ({slug}): models must list at least one non-empty model id");
        }
        let api_key = match entry.api_key_env {
            None => None,
            Some(name) => match env(&name) {
                Some(key) if !key.trim().is_empty() => Some(Secret(key)),
                _ => bail!(
                    "{at} ({slug}): the environment variable {name} (its api_key_env) is not set or empty"
                ),
            },
        };
        upstreams.push(UpstreamConfig {
            slug,
            kind: entry.kind,
            base_url,
            api_key,
            models: entry.models,
            options_slug: entry.options_slug.unwrap_or_else(|| "local".into()),
            timeout: std::time::Duration::from_secs(
                entry.timeout_s.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_S).max(1),
            ),
        });
    }
    Ok(upstreams)
}

#[cfg(test)]
mod providers_file_tests {
    use super::*;

    fn read(text: &str, env: &[(&str, &str)]) -> Result<Vec<UpstreamConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("providers.toml");
        std::fs::write(&path, text).unwrap();
        read_providers_file_with(&path, |name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    const LAB: &str = "[[providers]]\nslug = \"lab\"\nkind = \"openrouter\"\n\
        base_url = \"http://127.0.0.1:9/api/v1/\"\napi_key_env = \"LAB_KEY\"\nmodels = [\"m\"]\n";

    #[test]
    fn keys_come_from_the_environment_and_never_print() {
        let up = read(LAB, &[("LAB_KEY", "sk-lab")]).unwrap();
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].base_url, "http://127.0.0.1:9/api/v1");
        assert_eq!(up[0].api_key, Some(Secret("sk-lab".into())));
        assert_eq!(up[0].options_slug, "local");
        assert_eq!(up[0].kind, UpstreamKind::OpenRouter);
        assert!(!format!("{up:?}").contains("sk-lab"));
        let err = read(LAB, &[]).unwrap_err().to_string();
        assert!(err.contains("LAB_KEY") && err.contains("lab"), "{err}");
    }

    #[test]
    fn bad_entries_are_refused_by_name() {
        let cases = [
            (LAB.replace("\"lab\"", "\"local\""), "local"),
            (
                LAB.replace("http://127.0.0.1:9/api/v1/", "ftp://x/"),
                "ftp://x",
            ),
            (LAB.replace("[\"m\"]", "[]"), "models"),
            (LAB.replace("openrouter", "anthropic"), "anthropic"),
            (format!("{LAB}{LAB}"), "twice"),
            (LAB.replace("models", "api_key = \"sk\"\nmodels"), "api_key"),
        ];
        for (text, needle) in cases {
            let err = format!("{:#}", read(&text, &[("LAB_KEY", "k")]).unwrap_err());
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_args_take_an_optional_id() {
        let m = parse_model_arg("fast=imago/tiny-sd").unwrap();
        assert_eq!(
            (m.id.as_str(), m.source.as_str()),
            ("fast", "imago/tiny-sd")
        );
        let m = parse_model_arg("imago/tiny-sdxl").unwrap();
        assert_eq!(m.id, "imago/tiny-sdxl");
        let m = parse_model_arg("stabilityai/sdxl-turbo").unwrap();
        assert_eq!(m.id, "stabilityai/sdxl-turbo");
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("my-finetune");
        std::fs::create_dir(&folder).unwrap();
        assert_eq!(
            parse_model_arg(folder.to_str().unwrap()).unwrap().id,
            "my-finetune"
        );
        assert!(parse_model_arg("=x").is_err());
        assert!(check_unique_ids(&[
            parse_model_arg("a=imago/tiny-sd").unwrap(),
            parse_model_arg("a=imago/tiny-sdxl").unwrap()
        ])
        .is_err());
    }

    #[test]
    fn keys_file_parses_and_secrets_do_not_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            "[[keys]]\nname = \"alice\"\nkey = \"sk-123\"\nmodels = [\"imago/tiny-sd\"]\n",
        )
        .unwrap();
        let keys = read_keys_file(&path).unwrap();
        assert_eq!(
            keys[0].models.as_deref(),
            Some(&["imago/tiny-sd".to_string()][..])
        );
        assert!(!format!("{keys:?}").contains("sk-123"));
        std::fs::write(&path, "[[keys]]\nname = \"bob\"\nkey = \"\"\n").unwrap();
        assert!(read_keys_file(&path)
            .unwrap_err()
            .to_string()
            .contains("bob"));
        std::fs::write(&path, "[[keys]]\nname = \"bob\"\nsecret = \"x\"\n").unwrap();
        assert!(read_keys_file(&path).is_err());
        std::fs::write(
            &path,
            "[[keys]]\nname = \"carol\"\nkey = \"k\"\nquota_images = 5\nrate_per_minute = 2\n",
        )
        .unwrap();
        assert_eq!(
            read_keys_file(&path).unwrap()[0].limits,
            KeyLimits {
                quota_images: Some(5),
                rate_per_minute: Some(2)
            }
        );
        std::fs::write(
            &path,
            "[[keys]]\nname = \"dan\"\nkey = \"k\"\nrate_per_minute = 0\n",
        )
        .unwrap();
        assert!(read_keys_file(&path)
            .unwrap_err()
            .to_string()
            .contains("rate_per_minute = 0"));
    }
}
