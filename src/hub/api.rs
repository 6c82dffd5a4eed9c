//! The hub's HTTP API: which commit a revision is and which files it holds, with their sizes and
//! hashes (`GET /api/models/{repo}/revision/{rev}?blobs=true`, as huggingface_hub's
//! `model_info(files_metadata=True)`), and the URL a file is downloaded from.
use reqwest::{Client, RequestBuilder, Response};
use serde::Deserialize;

use super::config::HubConfig;
use super::error::HubError;

#[derive(Debug, Deserialize)]
pub struct RepoInfo {
    /// The commit the revision resolves to.
    pub sha: String,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default)]
    pub size: Option<u64>,
    /// The git blob id (sha1 of `blob <len>\0<content>`): the etag of a file not in LFS.
    #[serde(default, rename = "blobId")]
    pub blob_id: Option<String>,
    #[serde(default)]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
pub struct LfsInfo {
    /// The sha256 of the content: the etag (`x-linked-etag`) of an LFS file.
    pub sha256: String,
    pub size: u64,
}

pub fn client() -> Result<Client, HubError> {
    Client::builder()
        .user_agent(concat!("imago/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30))
        // Per read, not per request: multi-GB downloads take as long as they take.
        .read_timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|source| HubError::Network {
            url: "(client)".into(),
            source,
        })
}

/// A request with the token, when there is one. reqwest drops it on redirects to another host
/// (the hub sends LFS downloads to a CDN).
pub fn authorized(config: &HubConfig, request: RequestBuilder) -> RequestBuilder {
    match &config.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

pub async fn repo_info(
    client: &Client,
    config: &HubConfig,
    repo_id: &str,
    revision: &str,
) -> Result<RepoInfo, HubError> {
    let url = format!(
        "{}/api/models/{repo_id}/revision/{}?blobs=true",
        config.endpoint,
        encode_segment(revision)
    );
    let response = send(authorized(config, client.get(&url)), &url).await?;
    let response = check_status(response, &url, repo_id)?;
    let text = response.text().await.map_err(|source| HubError::Network {
        url: url.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| HubError::InvalidResponse {
        url,
        message: e.to_string(),
    })
}

/// `{endpoint}/{repo}/resolve/{commit}/{path}`, each path segment percent-encoded.
pub fn resolve_url(config: &HubConfig, repo_id: &str, commit: &str, path: &str) -> String {
    let path: Vec<String> = path.split('/').map(encode_segment).collect();
    format!(
        "{}/{repo_id}/resolve/{commit}/{}",
        config.endpoint,
        path.join("/")
    )
}

pub async fn send(request: RequestBuilder, url: &str) -> Result<Response, HubError> {
    request.send().await.map_err(|source| HubError::Network {
        url: url.to_string(),
        source,
    })
}

/// A success, or an error that says what the status means for a hub user.
pub fn check_status(response: Response, url: &str, repo_id: &str) -> Result<Response, HubError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let hint = match status.as_u16() {
        401 | 403 => format!(
            " (a gated or private repo: accept its terms on the hub, then set HF_TOKEN to a token \
             that may read {repo_id})"
        ),
        404 => " (no such repo, revision or file)".to_string(),
        429 => " (rate-limited by the hub; try again later)".to_string(),
        _ => String::new(),
    };
    Err(HubError::Status {
        url: url.to_string(),
        status: status.as_u16(),
        hint,
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters (`refs/pr/1` -> `refs%2Fpr%2F1`).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_revisions_and_paths() {
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode_segment("v1.0_a-b~"), "v1.0_a-b~");
        let config = HubConfig {
            endpoint: "http://127.0.0.1:1".into(),
            token: None,
            offline: false,
            cache_dir: "/tmp".into(),
            progress: false,
        };
        assert_eq!(
            resolve_url(&config, "a/b", "c0ffee", "unet/my file.json"),
            "http://127.0.0.1:1/a/b/resolve/c0ffee/unet/my%20file.json"
        );
    }

    #[test]
    fn sibling_metadata_parses() {
        let info: RepoInfo = serde_json::from_str(
            r#"{"sha":"0123","siblings":[{"rfilename":"a.json","size":3,"blobId":"abc"},
            {"rfilename":"w.safetensors","size":9,"blobId":"def","lfs":{"sha256":"5e","size":9,"pointerSize":130}}]}"#,
        )
        .unwrap();
        assert_eq!(info.siblings[1].lfs.as_ref().unwrap().sha256, "5e");
        assert_eq!(info.siblings[0].blob_id.as_deref(), Some("abc"));
    }
}
