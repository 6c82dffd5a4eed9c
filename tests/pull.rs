//! `imago pull` and download-on-load against a fake Hugging Face hub on 127.0.0.1: the cache
//! layout huggingface_hub writes, resuming a dropped download with a Range request, refusing a
//! corrupted file, offline errors, and the same image from the cache as from the folder.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use sha1::Sha1;
use sha2::{Digest, Sha256};

const REPO: &str = "stabilityai/sd-turbo";
const COMMIT: &str = "4f5c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b";

fn fixture_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/sd-turbo-1step/model")
}

/// One file the fake hub serves.
#[derive(Clone)]
struct HubFile {
    bytes: Vec<u8>,
    /// LFS files are named by sha256 (`x-linked-etag`), others by their git blob sha1 (`etag`).
    lfs: bool,
}

impl HubFile {
    fn etag(&self) -> String {
        if self.lfs {
            hex(&Sha256::digest(&self.bytes))
        } else {
            let mut sha1 = Sha1::new();
            sha1.update(format!("blob {}\0", self.bytes.len()).as_bytes());
            sha1.update(&self.bytes);
            hex(&sha1.finalize())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct Behaviour {
    /// The first GET of this path sends half the body, then drops the connection.
    drop_once: Option<String>,
    /// GETs of this path send the right number of wrong bytes.
    corrupt: Option<String>,
}

/// What a request was: method, path, Range header, Authorization header.
type Logged = (String, String, Option<String>, Option<String>);

struct HubState {
    files: BTreeMap<String, HubFile>,
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<Logged>>,
}

/// The hub's API and resolve endpoints for one repo at one commit, on a loopback port.
struct FakeHub {
    url: String,
    state: Arc<HubState>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeHub {
    /// The fixture model under the sd-turbo catalog id: the text encoder under the fp16 variant
    /// name the catalog lists, the UNet and VAE only at full precision (the catalog's fp16 names
    /// must fall back to them).
    fn start(behaviour: Behaviour) -> Self {
        let root = fixture_model();
        let mut files = BTreeMap::new();
        for path in walk(&root) {
            let mut rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "text_encoder/model.safetensors" {
                rel = "text_encoder/model.fp16.safetensors".into();
            }
            let file = HubFile {
                bytes: std::fs::read(&path).unwrap(),
                lfs: rel.ends_with(".safetensors"),
            };
            files.insert(rel, file);
        }
        // A pickle the catalog does not fetch.
        files.insert(
            "unet/diffusion_pytorch_model.bin".into(),
            HubFile {
                bytes: b"not to be fetched".to_vec(),
                lfs: true,
            },
        );
        let state = Arc::new(HubState {
            files,
            behaviour: Mutex::new(behaviour),
            log: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}"),
            state,
            _runtime: runtime,
        }
    }

    fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    fn downloads(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|(method, path, ..)| method == "GET" && path.contains("/resolve/"))
            .collect()
    }

    fn file(&self, path: &str) -> &HubFile {
        &self.state.files[path]
    }
}

async fn handle(
    State(state): State<Arc<HubState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    state.log.lock().unwrap().push((
        method.to_string(),
        uri.path().to_string(),
        header("range"),
        header("authorization"),
    ));
    let path = uri.path();
    let api_prefix = format!("/api/models/{REPO}/revision/");
    if let Some(revision) = path.strip_prefix(&api_prefix) {
        if revision != "main" && revision != COMMIT {
            return status(StatusCode::NOT_FOUND);
        }
        let siblings: Vec<serde_json::Value> = state
            .files
            .iter()
            .map(|(name, file)| {
                let mut sibling = serde_json::json!({
                    "rfilename": name,
                    "size": file.bytes.len(),
                    "blobId": if file.lfs { "0".repeat(40) } else { file.etag() },
                });
                if file.lfs {
                    sibling["lfs"] = serde_json::json!({
                        "sha256": file.etag(),
                        "size": file.bytes.len(),
                        "pointerSize": 134,
                    });
                }
                sibling
            })
            .collect();
        let body = serde_json::json!({ "id": REPO, "sha": COMMIT, "siblings": siblings });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    let resolve_prefix = format!("/{REPO}/resolve/");
    let Some(rest) = path.strip_prefix(&resolve_prefix) else {
        return status(StatusCode::NOT_FOUND);
    };
    let Some((revision, file_path)) = rest.split_once('/') else {
        return status(StatusCode::NOT_FOUND);
    };
    let Some(file) = state.files.get(file_path) else {
        return status(StatusCode::NOT_FOUND);
    };
    if revision != "main" && revision != COMMIT {
        return status(StatusCode::NOT_FOUND);
    }
    let mut bytes = file.bytes.clone();
    let (drop_now, corrupt) = {
        let mut behaviour = state.behaviour.lock().unwrap();
        let drop_now = method == Method::GET && behaviour.drop_once.as_deref() == Some(file_path);
        if drop_now {
            behaviour.drop_once = None;
        }
        (drop_now, behaviour.corrupt.as_deref() == Some(file_path))
    };
    if corrupt {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
    }
    let total = bytes.len();
    let start = header("range").and_then(|r| {
        r.strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse::<usize>()
            .ok()
    });
    let etag = format!("\"{}\"", file.etag());
    let mut builder = Response::builder()
        .header("x-repo-commit", COMMIT)
        .header("accept-ranges", "bytes")
        .header("etag", &etag);
    if file.lfs {
        builder = builder
            .header("x-linked-etag", &etag)
            .header("x-linked-size", total.to_string());
    }
    let body_bytes = match start {
        Some(start) if start < total => {
            builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
                "content-range",
                format!("bytes {start}-{}/{total}", total - 1),
            );
            bytes[start..].to_vec()
        }
        Some(_) => return status(StatusCode::RANGE_NOT_SATISFIABLE),
        None => bytes,
    };
    builder = builder.header("content-length", body_bytes.len().to_string());
    if method == Method::HEAD {
        return builder.body(Body::empty()).unwrap();
    }
    if drop_now {
        // Half the body, a pause so it reaches the client, then a dropped connection.
        let half = body_bytes[..body_bytes.len() / 2].to_vec();
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(half)]).chain(
            futures_util::stream::once(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(std::io::Error::other("connection dropped by the fake hub"))
            }),
        );
        return builder.body(Body::from_stream(stream)).unwrap();
    }
    builder.body(Body::from(body_bytes)).unwrap()
}

use futures_util::StreamExt as _;

fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `imago ARGS` with HF_HOME and the hub endpoint set, and no inherited hub/offline settings.
fn imago(args: &[&str], hf_home: &Path, endpoint: &str, extra_env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imago"));
    command
        .args(args)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_TOKEN_PATH", hf_home.join("no-token"))
        .env_remove("IMAGO_LOG")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("IMAGO_OFFLINE");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command.output().expect("run imago")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn repo_dir(hf_home: &Path) -> PathBuf {
    hf_home.join("hub/models--stabilityai--sd-turbo")
}

/// The catalog's files and where each lands in the snapshot (fp16 names fall back).
fn expected_snapshot_files() -> Vec<&'static str> {
    vec![
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
}

fn snapshot_files(snapshot: &Path) -> Vec<String> {
    walk(snapshot)
        .iter()
        .map(|p| {
            p.strip_prefix(snapshot)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn pull_writes_the_hf_cache_layout() {
    let hub = FakeHub::start(Behaviour::default());
    let home = tempfile::tempdir().unwrap();
    let out = imago(
        &["pull", REPO, "--quiet"],
        home.path(),
        &hub.url,
        &[("HF_TOKEN", "hf_test_token")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(COMMIT), "{stdout}");

    let repo = repo_dir(home.path());
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    let mut expected: Vec<String> = expected_snapshot_files()
        .into_iter()
        .map(String::from)
        .collect();
    expected.sort();
    assert_eq!(
        snapshot_files(&snapshot),
        expected,
        "only the catalog's files"
    );
    for rel in &expected {
        let link = snapshot.join(rel);
        let target = std::fs::read_link(&link).unwrap();
        let file = hub.file(rel);
        let depth = rel.split('/').count();
        assert_eq!(
            target,
            PathBuf::from(format!("{}blobs/{}", "../".repeat(depth + 1), file.etag())),
            "{rel}: a relative link to the blob named by its etag"
        );
        assert_eq!(std::fs::read(&link).unwrap(), file.bytes, "{rel}");
    }
    let blobs: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), expected.len());
    assert!(blobs.iter().all(|b| !b.ends_with(".incomplete")));
    // The token went to the hub as a bearer token.
    assert!(hub
        .log()
        .iter()
        .all(|(.., auth)| auth.as_deref() == Some("Bearer hf_test_token")));

    // `imago models` reports it cached, with its snapshot.
    let models = imago(&["models"], home.path(), &hub.url, &[]);
    let listing = String::from_utf8_lossy(&models.stdout);
    let line = listing
        .lines()
        .find(|l| l.starts_with(REPO))
        .expect("sd-turbo listed");
    assert!(line.contains(" cached "), "{line}");
    assert!(line.contains(&snapshot.display().to_string()), "{line}");
    let line = listing
        .lines()
        .find(|l| l.starts_with("stabilityai/sdxl-turbo"))
        .unwrap();
    assert!(line.contains("not cached"), "{line}");

    // A second pull asks the API for the commit and downloads nothing.
    let before = hub.downloads().len();
    let out = imago(&["pull", REPO, "--quiet"], home.path(), &hub.url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hub.downloads().len(), before);

    // A file lost from the snapshot and its blob: `models` says partial, a pull fetches just it.
    let lost = "vae/config.json";
    std::fs::remove_file(snapshot.join(lost)).unwrap();
    std::fs::remove_file(repo.join("blobs").join(hub.file(lost).etag())).unwrap();
    let models = imago(&["models"], home.path(), &hub.url, &[]);
    let listing = String::from_utf8_lossy(&models.stdout);
    let line = listing.lines().find(|l| l.starts_with(REPO)).unwrap();
    assert!(line.contains("partial 11/12"), "{line}");
    let out = imago(&["pull", REPO, "--quiet"], home.path(), &hub.url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let fetched: Vec<String> = hub.downloads()[before..]
        .iter()
        .map(|(_, path, ..)| path.clone())
        .collect();
    assert_eq!(fetched, [format!("/{REPO}/resolve/{COMMIT}/{lost}")]);
    assert_eq!(
        std::fs::read(snapshot.join(lost)).unwrap(),
        hub.file(lost).bytes
    );

    // A repo outside the catalog is refused, naming the catalog, before any request.
    let requests = hub.log().len();
    let out = imago(&["pull", "someone/else"], home.path(), &hub.url, &[]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("--all") && e.contains(REPO), "{e}");
    assert_eq!(hub.log().len(), requests);
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let unet = "unet/diffusion_pytorch_model.safetensors";
    let hub = FakeHub::start(Behaviour {
        drop_once: Some(unet.into()),
        ..Behaviour::default()
    });
    let home = tempfile::tempdir().unwrap();
    let out = imago(&["pull", REPO, "--quiet"], home.path(), &hub.url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gets: Vec<Logged> = hub
        .downloads()
        .into_iter()
        .filter(|(_, path, ..)| path.ends_with(unet))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].2, None, "the first request is for the whole file");
    let size = hub.file(unet).bytes.len();
    let offset: usize = gets[1]
        .2
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .unwrap_or_else(|| panic!("the second request continues with a Range: {gets:?}"));
    assert!(offset > 0 && offset < size, "offset {offset} of {size}");
    let snapshot = repo_dir(home.path()).join("snapshots").join(COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join(unet)).unwrap(),
        hub.file(unet).bytes
    );
}

#[test]
fn a_corrupted_file_is_refused_and_never_reaches_the_snapshot() {
    let vae = "vae/diffusion_pytorch_model.safetensors";
    let hub = FakeHub::start(Behaviour {
        corrupt: Some(vae.into()),
        ..Behaviour::default()
    });
    let home = tempfile::tempdir().unwrap();
    let out = imago(&["pull", REPO, "--quiet"], home.path(), &hub.url, &[]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(vae) && e.contains("sha256"), "{e}");
    let repo = repo_dir(home.path());
    let snapshot = repo.join("snapshots").join(COMMIT);
    assert!(!snapshot.join(vae).exists() && !snapshot.join(vae).is_symlink());
    let etag = hub.file(vae).etag();
    assert!(!repo.join("blobs").join(&etag).exists());
    assert!(!repo
        .join("blobs")
        .join(format!("{etag}.incomplete"))
        .exists());
    assert!(
        !repo.join("refs/main").exists(),
        "no ref to a partial snapshot"
    );
    let files = snapshot_files(&snapshot);
    assert!(!files.is_empty() && !files.iter().any(|f| f.contains("vae/diffusion")));
}

#[test]
fn offline_pull_with_an_empty_cache_says_so() {
    let hub = FakeHub::start(Behaviour::default());
    let home = tempfile::tempdir().unwrap();
    for (args, env) in [
        (vec!["pull", REPO, "--offline"], vec![]),
        (vec!["pull", REPO], vec![("HF_HUB_OFFLINE", "1")]),
    ] {
        let out = imago(&args, home.path(), &hub.url, &env);
        assert!(!out.status.success(), "{args:?} {env:?}");
        let e = stderr(&out);
        assert!(e.contains("offline"), "{e}");
        assert!(e.contains(&format!("imago pull {REPO}")), "{e}");
        assert!(
            e.contains(&repo_dir(home.path()).display().to_string()),
            "{e}"
        );
    }
    assert!(hub.log().is_empty(), "nothing is fetched offline");
}

/// The generate arguments of the parity case (64x64, one step) with `model`.
fn generate_args(model: &str, out: &Path) -> Vec<String> {
    [
        "generate",
        "--model",
        model,
        "--prompt",
        "a photo of a cat",
        "--seed",
        "7",
        "--steps",
        "1",
        "--guidance",
        "0",
        "--width",
        "64",
        "--height",
        "64",
        "--device",
        "cpu",
        "--quiet",
        "--out-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn generate(model: &str, home: &Path, endpoint: &str, env: &[(&str, &str)]) -> (Output, PathBuf) {
    let out = tempfile::tempdir().unwrap().keep();
    let args = generate_args(model, &out);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (imago(&refs, home, endpoint, env), out.join("0.png"))
}

#[test]
fn generate_downloads_once_then_loads_offline_like_the_folder() {
    let hub = FakeHub::start(Behaviour::default());
    let home = tempfile::tempdir().unwrap();

    // Offline with an empty cache: a clear error naming the cache path and the pull command.
    let (out, _) = generate(REPO, home.path(), &hub.url, &[("HF_HUB_OFFLINE", "1")]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("offline")
            && e.contains(&format!("imago pull {REPO}"))
            && e.contains(&repo_dir(home.path()).display().to_string()),
        "{e}"
    );
    assert!(hub.log().is_empty());

    // Online and not cached: downloaded, then generated.
    let (out, online_png) = generate(REPO, home.path(), &hub.url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!hub.downloads().is_empty());

    // Offline from the cache: no request, and the same bytes as the folder itself gives.
    let requests = hub.log().len();
    let (out, offline_png) = generate(REPO, home.path(), &hub.url, &[("HF_HUB_OFFLINE", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hub.log().len(), requests, "offline: no request");
    let folder = fixture_model();
    let (out, folder_png) = generate(folder.to_str().unwrap(), home.path(), &hub.url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let folder_bytes = std::fs::read(&folder_png).unwrap();
    assert!(!folder_bytes.is_empty());
    assert_eq!(std::fs::read(&offline_png).unwrap(), folder_bytes);
    assert_eq!(std::fs::read(&online_png).unwrap(), folder_bytes);
    for png in [online_png, offline_png, folder_png] {
        let _ = std::fs::remove_dir_all(png.parent().unwrap());
    }
}

#[test]
fn a_partial_file_left_by_an_earlier_run_is_continued() {
    let vae = "vae/diffusion_pytorch_model.safetensors";
    let hub = FakeHub::start(Behaviour::default());
    let home = tempfile::tempdir().unwrap();
    let blobs = repo_dir(home.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let file = hub.file(vae);
    let kept = file.bytes.len() / 3;
    std::fs::write(
        blobs.join(format!("{}.incomplete", file.etag())),
        &file.bytes[..kept],
    )
    .unwrap();
    let out = imago(&["pull", REPO, "--quiet"], home.path(), &hub.url, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gets: Vec<Logged> = hub
        .downloads()
        .into_iter()
        .filter(|(_, path, ..)| path.ends_with(vae))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].2, Some(format!("bytes={kept}-")));
    let snapshot = repo_dir(home.path()).join("snapshots").join(COMMIT);
    assert_eq!(std::fs::read(snapshot.join(vae)).unwrap(), file.bytes);
}
