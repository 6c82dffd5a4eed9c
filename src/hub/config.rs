//! Where the hub is, who we are to it, and whether we may talk to it: from the environment
//! variables huggingface_hub reads, so one cache and one token serve both tools.
use std::fmt;
use std::path::PathBuf;

use imago_models::loader::{hf_home, hub_cache_dir};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Clone)]
pub struct HubConfig {
    /// `$HF_ENDPOINT` without a trailing `/`, default https://huggingface.co.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer` (gated repos such as FLUX.1-dev need one).
    pub token: Option<String>,
    /// Nothing is fetched: `--offline` or `HF_HUB_OFFLINE=1`.
    pub offline: bool,
    /// The hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Draw a progress bar on stderr (indicatif hides it when stderr is not a terminal).
    pub progress: bool,
}

impl fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("offline", &self.offline)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

impl HubConfig {
    /// From the environment; `offline_flag` is `--offline`, or-ed with `HF_HUB_OFFLINE`.
    pub fn from_env(offline_flag: bool) -> Self {
        Self::from_env_with(offline_flag, &env_var)
    }

    fn from_env_with(offline_flag: bool, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let endpoint = env("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        Self {
            endpoint,
            token: token(env),
            offline: offline_flag || env("HF_HUB_OFFLINE").is_some_and(|v| is_truthy(&v)),
            cache_dir: hub_cache_dir(),
            progress: true,
        }
    }
}

/// huggingface_hub's reading of boolean variables: 1, ON, YES, TRUE (any case).
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

fn env_var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// `$HF_TOKEN`, the legacy `$HUGGING_FACE_HUB_TOKEN`, else the file `hf auth login` writes
/// (`$HF_TOKEN_PATH`, default `$HF_HOME/token`).
fn token(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(token) = env("HF_TOKEN").or_else(|| env("HUGGING_FACE_HUB_TOKEN")) {
        return Some(token.trim().to_string());
    }
    let path = env("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_token_and_offline_come_from_the_environment() {
        let env = |k: &str| match k {
            "HF_ENDPOINT" => Some("http://127.0.0.1:9/".to_string()),
            "HF_TOKEN" => Some("hf_abc\n".to_string()),
            "HF_HUB_OFFLINE" => Some("yes".to_string()),
            _ => None,
        };
        let config = HubConfig::from_env_with(false, &env);
        assert_eq!(config.endpoint, "http://127.0.0.1:9");
        assert_eq!(config.token.as_deref(), Some("hf_abc"));
        assert!(config.offline);
        assert!(!format!("{config:?}").contains("hf_abc"));
        let env = |k: &str| (k == "HF_HUB_OFFLINE").then(|| "0".to_string());
        let config = HubConfig::from_env_with(false, &env);
        assert!(!config.offline);
        assert_eq!(config.endpoint, DEFAULT_ENDPOINT);
        assert!(HubConfig::from_env_with(true, &env).offline);
        for (v, truthy) in [
            ("1", true),
            ("on", true),
            ("TRUE", true),
            ("0", false),
            ("no", false),
        ] {
            assert_eq!(is_truthy(v), truthy, "{v}");
        }
    }
}
