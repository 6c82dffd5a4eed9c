//! The command line: one clap derive tree; every option also reads an `IMAGO_*` variable.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use imago_models::bench::Architecture;
use imago_models::device::{DTypeChoice, DeviceChoice};
use imago_models::schedulers::SchedulerChoice;

use crate::commands;

#[derive(Debug, Parser)]
#[command(
    name = "imago",
    version,
    about = "Self-hosted image generation: OpenRouter/OpenAI Images APIs on a local diffusion engine"
)]
pub struct Cli {
    /// Log filter for stderr (tracing's EnvFilter syntax, e.g. `info` or `imago=debug`).
    #[arg(long, env = "IMAGO_LOG", default_value = "warn", global = true)]
    pub log: String,

    /// Log line format on stderr: text, or json (one JSON object per line, with the span fields
    /// such as `request_id`).
    #[arg(long, env = "IMAGO_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenRouter (`/api/v1/images`) and OpenAI (`/v1/images/generations`) APIs.
    Serve(Box<ServeArgs>),
    /// Generate images on this machine and write them as PNG files.
    Generate(Box<GenerateArgs>),
    /// List the model catalog with what the local Hugging Face cache holds of each model.
    Models,
    /// Download a catalog model's files from the Hugging Face hub into the local cache
    /// (`$HF_HOME/hub`, as huggingface_hub lays it out).
    Pull(PullArgs),
    /// Print the OpenAPI document of the HTTP API.
    PrintOpenapi,
    /// Time a real architecture built with random weights (nothing is downloaded): text
    /// encoding, one denoising step and one VAE decode, and with --throughput whole generations.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (`0.0.0.0` for every interface).
    #[arg(long, env = "IMAGO_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,

    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, env = "IMAGO_PORT", default_value_t = 8080)]
    pub port: u16,

    /// A model to serve, `[ID=]SOURCE` (repeatable, or comma-separated in IMAGO_MODELS): SOURCE is a
    /// Hugging Face repo id (from the local cache; downloaded first when missing and online), a diffusers folder, or a built-in id; without `ID=`
    /// the id is the repo id or the folder's name. Default: stabilityai/sd-turbo when cached, else imago/tiny-sd.
    #[arg(long = "model", env = "IMAGO_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// An API key clients must send as `Authorization: Bearer KEY` (repeatable, or comma-separated in IMAGO_API_KEYS).
    #[arg(
        long = "api-key",
        env = "IMAGO_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<crate::config::Secret>,

    /// A TOML file of keys: `[[keys]]` with `name`, `key` and an optional `models` allow-list.
    #[arg(long, env = "IMAGO_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, env = "IMAGO_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,

    /// auto (f32 on CPU, f16 on GPU), f32, f16 or bf16.
    #[arg(long, env = "IMAGO_DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,

    /// Jobs that may wait for the engine; beyond, requests get 429 with Retry-After.
    #[arg(long, env = "IMAGO_MAX_QUEUE", default_value_t = 16)]
    pub max_queue: usize,

    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "IMAGO_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Let `input_references` URLs reach loopback and private addresses (off: only public ones are fetched).
    #[arg(long, env = "IMAGO_ALLOW_PRIVATE_URLS")]
    pub allow_private_urls: bool,

    /// A tiny autoencoder for previews, `[MODEL_ID=]SOURCE` (repeatable): a diffusers
    /// AutoencoderTiny folder or HF repo id in the cache (madebyollin/taesd for SD 1/2,
    /// madebyollin/taesdxl for SDXL). Without MODEL_ID it serves every model with its latent channels.
    /// Used for `preview: "taesd"`, and for `auto` on a GPU (on the CPU, auto uses the linear preview).
    #[arg(
        long = "preview-decoder",
        env = "IMAGO_PREVIEW_DECODERS",
        value_delimiter = ','
    )]
    pub preview_decoders: Vec<String>,

    /// Serve `/metrics` without an API key (it needs one when keys are configured).
    #[arg(long, env = "IMAGO_PUBLIC_METRICS")]
    pub public_metrics: bool,

    /// FLUX: release the T5 encoder after each prompt and load it again (memory-mapped) for the
    /// next one, so it does not stay resident beside the transformer.
    #[arg(long, env = "IMAGO_LOW_MEMORY")]
    pub low_memory: bool,

    /// Turn off the browser playground at `/` (the page that tries the API from a browser).
    #[arg(long, env = "IMAGO_NO_PLAYGROUND")]
    pub no_playground: bool,

    // Scheduling (engine).
    /// Compatible waiting requests (same model, size, steps, guidance, scheduler; text-to-image)
    /// run together as one engine batch of up to this many requests; 1 turns batching off.
    #[arg(long, env = "IMAGO_MAX_BATCH", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_batch: u64,

    /// Seconds a request may wait and run; past it the job stops and the client gets 504.
    #[arg(long, env = "IMAGO_REQUEST_TIMEOUT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,

    /// Most pixels (n x width x height) one request may ask for; default: an estimate from the
    /// memory available at start-up (CPU; unlimited on GPUs).
    #[arg(long, env = "IMAGO_MAX_PIXELS")]
    pub max_pixels: Option<u64>,

    /// On SIGTERM, seconds to let accepted requests finish before cancelling what still runs.
    #[arg(long, env = "IMAGO_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Never contact the Hugging Face hub (also HF_HUB_OFFLINE=1): a `--model` repo missing from
    /// the cache is an error instead of a download.
    #[arg(long, env = "IMAGO_OFFLINE")]
    pub offline: bool,

    // --- hostile-input limits and connection timeouts (issue 7, http7) ---
    /// Most output pixels one request may ask for, n x width x height (400 beyond).
    #[arg(long, env = "IMAGO_MAX_PIXELS_PER_REQUEST", default_value_t = crate::config::DEFAULT_MAX_PIXELS_PER_REQUEST)]
    pub max_pixels_per_request: u64,

    /// Largest encoded reference image in bytes, data URL or download (400 beyond).
    #[arg(long, env = "IMAGO_MAX_REFERENCE_BYTES", default_value_t = crate::imaging::ReferenceLimits::default().max_bytes)]
    pub max_reference_bytes: usize,

    /// Most pixels of a reference image, read from its header before decoding (400 beyond).
    #[arg(long, env = "IMAGO_MAX_REFERENCE_PIXELS", default_value_t = crate::imaging::ReferenceLimits::default().max_pixels)]
    pub max_reference_pixels: u64,

    /// Seconds a client has to send a request's headers, counted from when the connection is
    /// ready for a request (so idle keep-alive connections close after it too).
    #[arg(long, env = "IMAGO_HEADER_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub header_timeout: std::time::Duration,

    /// Seconds of silence from a client the server waits through: between request body chunks
    /// (408 beyond), and for a response write to progress (the connection is closed beyond).
    #[arg(long, env = "IMAGO_IDLE_TIMEOUT", default_value = "60", value_parser = parse_seconds)]
    pub idle_timeout: std::time::Duration,

    /// Upstream providers, a TOML file of `[[providers]]` (slug, kind = "openrouter" | "openai",
    /// base_url, api_key_env, models): requests for their models are routed there, with fallback.
    #[arg(long, env = "IMAGO_PROVIDERS_FILE")]
    pub providers_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The repo id (`org/name`) of a catalog model (`imago models` lists them).
    pub repo: String,

    /// Branch, tag or commit to download (default: the catalog's, `main`).
    #[arg(long)]
    pub revision: Option<String>,

    /// Every file of the repo (pickle weights excepted) instead of the catalog's list; needed for
    /// a repo that is not in the catalog.
    #[arg(long)]
    pub all: bool,

    /// Never contact the hub (also HF_HUB_OFFLINE=1): only report whether the cache holds the model.
    #[arg(long, env = "IMAGO_OFFLINE")]
    pub offline: bool,

    /// No progress bar.
    #[arg(long, env = "IMAGO_QUIET")]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The architecture: sd1 (SD 1.5), sd2 (SD 2.1-base), sdxl (SDXL base 1.0) or flux
    /// (FLUX.1-schnell).
    #[arg(long, env = "IMAGO_BENCH_FAMILY")]
    pub family: Architecture,

    /// Image side in pixels (square images): 512, 768 or 1024.
    #[arg(long, env = "IMAGO_BENCH_TIER", default_value_t = 512, value_parser = parse_tier)]
    pub tier: usize,

    /// auto (f32 on CPU, f16 on GPU), f32, f16 or bf16.
    #[arg(long, env = "IMAGO_DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,

    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, env = "IMAGO_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,

    /// Timed runs of each stage after one warm-up run; the median is reported.
    #[arg(long, env = "IMAGO_BENCH_ITERS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub iters: u64,

    /// Print one JSON object instead of a table.
    #[arg(long, env = "IMAGO_BENCH_JSON")]
    pub json: bool,

    /// Also run whole generations at the model's default steps and guidance, batches of 1 and
    /// 4, and report images per second.
    #[arg(long, env = "IMAGO_BENCH_THROUGHPUT")]
    pub throughput: bool,

    /// Component configs from this folder (`unet.json`, `vae.json`..., or a diffusers model
    /// folder's `unet/config.json`...) instead of the real ones built in for --family.
    #[arg(long, env = "IMAGO_BENCH_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Refuse a configuration whose estimated memory exceeds this many gigabytes (default: the
    /// memory available now; checked on the CPU only).
    #[arg(long, env = "IMAGO_BENCH_MEMORY_LIMIT", value_parser = parse_gigabytes)]
    pub memory_limit: Option<u64>,
}

/// `--tier`: one of the sides the benchmarks are reported at.
fn parse_tier(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(side @ (512 | 768 | 1024)) => Ok(side),
        _ => Err(format!("expected 512, 768 or 1024, got {text:?}")),
    }
}

/// A positive number of gigabytes (10^9 bytes, fractions allowed), in bytes.
fn parse_gigabytes(text: &str) -> Result<u64, String> {
    match text.trim().parse::<f64>() {
        Ok(gb) if gb > 0.0 && gb.is_finite() && gb < 1e9 => Ok((gb * 1e9) as u64),
        _ => Err(format!(
            "expected a positive number of gigabytes, got {text:?}"
        )),
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A positive number of seconds, fractions allowed (`0.5`).
fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() && s <= 86_400.0 => {
            Ok(std::time::Duration::from_secs_f64(s))
        }
        _ => Err(format!(
            "expected a number of seconds between 0 and 86400, got {text:?}"
        )),
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A diffusers folder, a Hugging Face repo id (`org/name[@revision]`: from the local HF cache,
    /// downloaded first when missing and online), or a built-in model (`imago/tiny-sd`, `imago/tiny-sdxl`).
    #[arg(long, env = "IMAGO_MODEL", default_value = "imago/tiny-sd")]
    pub model: String,

    /// What to draw.
    #[arg(long, env = "IMAGO_PROMPT")]
    pub prompt: String,

    /// What to steer away from (used when guidance > 1).
    #[arg(long, env = "IMAGO_NEGATIVE_PROMPT")]
    pub negative_prompt: Option<String>,

    /// Seed of the noise (same seed and parameters, same image as diffusers); random when absent.
    #[arg(long, env = "IMAGO_SEED")]
    pub seed: Option<u64>,

    /// Denoising steps; the model's default when absent.
    #[arg(long, env = "IMAGO_STEPS")]
    pub steps: Option<usize>,

    /// Classifier-free guidance scale (<= 1 runs no unconditional pass); the model's default when absent.
    #[arg(long, env = "IMAGO_GUIDANCE")]
    pub guidance: Option<f64>,

    /// Output width in pixels (a multiple of 8); the model's default, or the input image's.
    #[arg(long, env = "IMAGO_WIDTH")]
    pub width: Option<usize>,

    /// Output height in pixels (a multiple of 8); the model's default, or the input image's.
    #[arg(long, env = "IMAGO_HEIGHT")]
    pub height: Option<usize>,

    /// Number of images, generated as one batch.
    #[arg(
        short = 'n',
        long = "num-images",
        env = "IMAGO_NUM_IMAGES",
        default_value_t = 1
    )]
    pub num_images: usize,

    /// Start from this image (image-to-image).
    #[arg(long, env = "IMAGO_IMAGE")]
    pub image: Option<PathBuf>,

    /// How much of the input image is repainted, in (0, 1] (image-to-image only).
    #[arg(long, env = "IMAGO_STRENGTH", requires = "image")]
    pub strength: Option<f64>,

    /// Scheduler instead of the model's: euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras, euler_karras
    /// (Stable Diffusion families; FLUX uses its flow-matching Euler scheduler).
    #[arg(long, env = "IMAGO_SCHEDULER")]
    pub scheduler: Option<SchedulerChoice>,

    /// FLUX: T5 tokens the prompt is padded or truncated to (at most 512; default: the model's,
    /// 256 for schnell, 512 for dev).
    #[arg(long, env = "IMAGO_MAX_SEQUENCE_LENGTH")]
    pub max_sequence_length: Option<usize>,

    /// FLUX: release the T5 encoder once the prompt is encoded, before denoising.
    #[arg(long, env = "IMAGO_LOW_MEMORY")]
    pub low_memory: bool,

    /// auto, cpu, cuda, cuda:N or metal.
    #[arg(long, env = "IMAGO_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,

    /// auto (f32 on CPU, f16 on GPU), f32, f16 or bf16.
    #[arg(long, env = "IMAGO_DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,

    /// Folder for 0.png .. {n-1}.png (created if missing).
    #[arg(long, env = "IMAGO_OUT_DIR")]
    pub out_dir: PathBuf,

    /// No progress bar.
    #[arg(long, env = "IMAGO_QUIET")]
    pub quiet: bool,

    /// Never contact the Hugging Face hub (also HF_HUB_OFFLINE=1): a `--model` repo missing from
    /// the cache is an error instead of a download.
    #[arg(long, env = "IMAGO_OFFLINE")]
    pub offline: bool,
}

/// Parses the command line, runs the command, and maps errors to a one-line message and exit code.
pub fn main() -> ExitCode {
    // Process-wide engine settings, while this is the only thread.
    imago_models::candle_pool::limit_idle_spinning();
    imago_models::allocator::keep_tensor_pages();
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(*args),
        Command::Generate(args) => commands::generate::run(*args),
        Command::Models => commands::models::run(),
        Command::Pull(args) => commands::pull::run(args),
        Command::PrintOpenapi => commands::print_openapi::run(),
        Command::Bench(args) => commands::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            if err
                .downcast_ref::<imago_models::ModelError>()
                .is_some_and(|e| matches!(e, imago_models::ModelError::Cancelled))
            {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, without repeating a cause its parent already quotes.
fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
