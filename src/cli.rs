//! The command line: one clap derive tree; every option also reads an `IMAGO_*` variable.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenRouter (`/api/v1/images`) and OpenAI (`/v1/images/generations`) APIs.
    Serve(Box<ServeArgs>),
    /// Generate images on this machine and write them as PNG files.
    Generate(Box<GenerateArgs>),
    /// List the built-in model catalog.
    Models,
    /// Print the OpenAPI document of the HTTP API.
    PrintOpenapi,
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
    /// Hugging Face repo id in the local cache, a diffusers folder, or a built-in id; without `ID=`
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

    /// Upstream providers, a TOML file of `[[providers]]` (slug, kind = "openrouter" | "openai",
    /// base_url, api_key_env, models): requests for their models are routed there, with fallback.
    #[arg(long, env = "IMAGO_PROVIDERS_FILE")]
    pub providers_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A diffusers folder, a Hugging Face repo id in the local HF cache (`org/name[@revision]`),
    /// or a built-in model (`imago/tiny-sd`, `imago/tiny-sdxl`).
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
}

/// Parses the command line, runs the command, and maps errors to a one-line message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(*args),
        Command::Generate(args) => commands::generate::run(*args),
        Command::Models => commands::models::run(),
        Command::PrintOpenapi => commands::print_openapi::run(),
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

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
