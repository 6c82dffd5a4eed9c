//! In-process `imago` servers for the HTTP tests: the engine and the router built as
//! `imago::run` builds them, served on 127.0.0.1:0 by a runtime shared by every test, so a server
//! outlives the test (and its runtime) that started it. Clients talk to it over loopback only.
#![allow(dead_code)]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use imago::api::auth::Auth;
use imago::api::{build_app, AppInner, AppState};
use imago::config::{ApiKey, Limits};
use imago::domain::caps::ModelCaps;
use imago::engine::{Engine, EngineConfig, ModelToLoad, PreviewDecoderToLoad};
use imago::providers::{LocalProvider, Provider, Registry, ServedModel};
use imago_models::device::{DTypeChoice, DeviceChoice};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

/// The runtime that serves every test server (tests' own runtimes end with each test).
fn server_runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imago-test-server")
            .enable_all()
            .build()
            .expect("test server runtime")
    })
}

/// A model to load under `id` from `source` (a built-in id or a folder).
pub fn model(id: &str, source: impl Into<String>) -> ModelToLoad {
    ModelToLoad {
        id: id.to_string(),
        source: source.into(),
    }
}

/// Starts an engine thread with `models`, as `imago serve` does (CPU, f32).
pub async fn start_engine(models: Vec<ModelToLoad>, max_queue: usize) -> (Engine, Vec<ModelCaps>) {
    start_engine_with_decoders(models, max_queue, Vec::new()).await
}

/// As [`start_engine`], with `--preview-decoder`s.
pub async fn start_engine_with_decoders(
    models: Vec<ModelToLoad>,
    max_queue: usize,
    preview_decoders: Vec<PreviewDecoderToLoad>,
) -> (Engine, Vec<ModelCaps>) {
    let config = EngineConfig {
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::F32,
        max_queue,
        preview_decoders,
        load_options: Default::default(),
        scheduling: Default::default(),
    };
    start_engine_with_config(config, models).await
}

/// Starts an engine thread with a full `config` (batching, timeouts, limits).
pub async fn start_engine_with_config(
    config: EngineConfig,
    models: Vec<ModelToLoad>,
) -> (Engine, Vec<ModelCaps>) {
    server_runtime()
        .spawn(Engine::start(config, models, Default::default()))
        .await
        .expect("engine start task")
        .expect("engine start")
}

/// A running server: its base URL (`http://127.0.0.1:PORT`).
#[derive(Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Engine,
    /// The served models' capabilities (to serve the same engine again with other settings).
    pub caps: Vec<ModelCaps>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Serves the app for `engine` (its models in `caps`) with `keys` and `limits` on a fresh port,
/// with the playground as `imago serve` has it by default.
pub async fn serve(
    engine: Engine,
    caps: Vec<ModelCaps>,
    keys: Vec<ApiKey>,
    limits: Limits,
) -> TestServer {
    serve_with_playground(engine, caps, keys, limits, true).await
}

/// As [`serve`], with the playground on or off (`--no-playground`).
pub async fn serve_with_playground(
    engine: Engine,
    caps: Vec<ModelCaps>,
    keys: Vec<ApiKey>,
    limits: Limits,
    playground: bool,
) -> TestServer {
    let local = Provider::Local(LocalProvider::new(engine.clone()));
    let registry = Registry::new(
        caps.iter()
            .cloned()
            .map(|caps| ServedModel {
                caps,
                provider: local.clone(),
            })
            .collect(),
    );
    let state = AppState::new(AppInner {
        registry,
        metrics: engine.metrics().clone(),
        public_metrics: false,
        auth: Auth::new(keys),
        limits,
        engine: engine.clone(),
        playground,
        shutdown: Default::default(),
    });
    let app = build_app(state);
    let addr = server_runtime()
        .spawn(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            tokio::spawn(async move {
                axum::serve(listener, app).await.expect("serve");
            });
            addr
        })
        .await
        .expect("serve task");
    TestServer { addr, engine, caps }
}

/// A server run by `imago::api::connections::serve` (the accept loop of `imago serve`, with its
/// timeouts and shutdown phases) instead of `axum::serve`; `stop` starts its shutdown and
/// `stopped` resolves when the loop has returned.
pub struct HardenedServer {
    pub server: TestServer,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub stopped: tokio::sync::oneshot::Receiver<()>,
}

/// As [`serve`], through the hardened accept loop with `connections`.
pub async fn serve_hardened(
    engine: Engine,
    caps: Vec<ModelCaps>,
    keys: Vec<ApiKey>,
    limits: Limits,
    connections: imago::api::connections::ConnectionLimits,
) -> HardenedServer {
    let local = Provider::Local(LocalProvider::new(engine.clone()));
    let registry = Registry::new(
        caps.iter()
            .cloned()
            .map(|caps| ServedModel {
                caps,
                provider: local.clone(),
            })
            .collect(),
    );
    let shutdown = imago::api::shutdown::Shutdown::default();
    let state = AppState::new(AppInner {
        registry,
        metrics: engine.metrics().clone(),
        public_metrics: false,
        auth: Auth::new(keys),
        limits,
        engine: engine.clone(),
        playground: false,
        shutdown: shutdown.clone(),
    });
    let app = build_app(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let addr = server_runtime()
        .spawn(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("local addr");
            tokio::spawn(async move {
                let signal = async {
                    let _ = stop_rx.await;
                };
                imago::api::connections::serve(listener, app, connections, shutdown, signal).await;
                let _ = stopped_tx.send(());
            });
            addr
        })
        .await
        .expect("serve task");
    HardenedServer {
        server: TestServer { addr, engine, caps },
        stop: Some(stop_tx),
        stopped: stopped_rx,
    }
}

/// A copy of a fixture model folder under the test's temporary folder, with its scheduler config
/// edited by `edit`; the folder lives as long as the process.
pub fn fixture_model_copy(
    fixture: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(fixture)
        .join("model");
    let root = tempfile::Builder::new()
        .prefix("imago-http-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let target = root.join(name);
    copy_dir(&source, &target);
    let config_path = target.join("scheduler/scheduler_config.json");
    let text = std::fs::read_to_string(&config_path).expect("read scheduler config");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("scheduler config JSON");
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).expect("write scheduler config");
    target
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy file");
        }
    }
}
