//! What a benchmark needs in memory, estimated before anything is built (so a configuration that
//! cannot fit is refused in a second instead of swapping for an hour), and what it used.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::architecture::Architecture;
use crate::error::Result;
use crate::flux::{FluxTransformer2DModel, FluxTransformerConfig};
use crate::pipeline::ComponentStore;
use crate::text::{ClipTextConfig, ClipTextModel, T5Config, T5EncoderModel};
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};

/// Channels of the widest full-resolution activation of the VAE decoder (every supported
/// family's `block_out_channels` is [128, 256, 512, 512]: 256 channels reach full resolution).
const DECODER_FULL_RES_CHANNELS: u64 = 256;
/// Full-resolution tensors of that width alive at once in a decoder resnet: input, normalized
/// copy, convolution output, and the convolution's unfolded input (9 values per input value for
/// a 3x3 kernel, counted as 9 tensors).
const DECODER_LIVE_TENSORS: u64 = 12;
/// Attention tensors of `heads x tokens x tokens` alive at once: the scores and their softmax.
const ATTENTION_LIVE_TENSORS: u64 = 2;

/// A candle VarBuilder backend that allocates nothing: it adds up the size of every tensor a
/// model asks for and hands back one broadcast zero, so building a 12B-parameter model with it
/// takes no memory.
#[derive(Clone, Default)]
struct ParameterCounter {
    total: Arc<AtomicU64>,
}

impl SimpleBackend for ParameterCounter {
    fn get(
        &self,
        s: Shape,
        _name: &str,
        _hint: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.total
            .fetch_add(s.elem_count() as u64, Ordering::Relaxed);
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("the parameter counter needs a shape for tensor {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The parameters of each weighted component of `arch`'s configs in `store`, counted by
/// building the models without weights.
pub fn count_parameters(
    store: &ComponentStore,
    arch: Architecture,
) -> Result<Vec<(&'static str, u64)>> {
    arch.components()
        .iter()
        .map(|&component| {
            let counter = ParameterCounter::default();
            // f64: no packed CPU kernel takes it, so the layers keep the broadcast placeholders
            // instead of packing (allocating) a copy of every weight.
            let vb = VarBuilder::from_backend(Box::new(counter.clone()), DType::F64, Device::Cpu);
            match component {
                "unet" => {
                    let config: UNetConfig = store.config(component)?;
                    UNet2DConditionModel::new(vb, &config)?;
                }
                "vae" => {
                    let config: VaeConfig = store.config(component)?;
                    AutoencoderKL::new(vb, &config)?;
                }
                "transformer" => {
                    let config: FluxTransformerConfig = store.config(component)?;
                    FluxTransformer2DModel::new(vb, &config)?;
                }
                "text_encoder_2" if arch == Architecture::Flux => {
                    let config: T5Config = store.config(component)?;
                    T5EncoderModel::new(vb, &config)?;
                }
                _ => {
                    let config: ClipTextConfig = store.config(component)?;
                    ClipTextModel::new(vb, &config)?;
                }
            }
            Ok((component, counter.total.load(Ordering::Relaxed)))
        })
        .collect()
}

/// Bytes a benchmark run needs, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    /// The largest transient working set: the VAE decode or the denoiser's widest attention.
    pub activations: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights + self.activations
    }

    /// `store`'s models at `dtype` for `batch` images of `width` x `height` (`cfg`: the
    /// denoiser runs on twice the batch).
    pub fn new(
        store: &ComponentStore,
        arch: Architecture,
        dtype: DType,
        width: usize,
        height: usize,
        batch: usize,
        cfg: bool,
    ) -> Result<Self> {
        let vae: VaeConfig = store.config("vae")?;
        // The pipelines run the VAE in f32 when a float16 model's VAE asks for it.
        let vae_dtype = if dtype == DType::F16 && vae.force_upcast {
            DType::F32
        } else {
            dtype
        };
        let bytes = |dt: DType| dt.size_in_bytes() as u64;
        let weights = count_parameters(store, arch)?
            .into_iter()
            .map(|(component, n)| n * bytes(if component == "vae" { vae_dtype } else { dtype }))
            .sum();
        let pixels = (width * height * batch) as u64;
        let decode = pixels * DECODER_FULL_RES_CHANNELS * DECODER_LIVE_TENSORS * bytes(vae_dtype);
        let rows = (batch * if cfg { 2 } else { 1 }) as u64;
        let (heads, tokens) = widest_attention(store, arch, width, height)?;
        let attention = ATTENTION_LIVE_TENSORS * rows * heads * tokens * tokens * bytes(dtype);
        Ok(Self {
            weights,
            activations: decode.max(attention),
        })
    }
}

/// Heads and tokens of the denoiser's largest attention: the UNet's highest-resolution
/// attention block, or FLUX's joint text+image sequence (T5 tokens at the spec's length).
fn widest_attention(
    store: &ComponentStore,
    arch: Architecture,
    width: usize,
    height: usize,
) -> Result<(u64, u64)> {
    let latent_cells = (width / 8) * (height / 8);
    if arch == Architecture::Flux {
        let config: FluxTransformerConfig = store.config("transformer")?;
        let text_tokens = arch
            .spec()
            .and_then(|s| s.defaults.max_sequence_length)
            .unwrap_or(crate::pipeline::MAX_SEQUENCE_LENGTH);
        let tokens = latent_cells / 4 + text_tokens;
        return Ok((config.num_attention_heads as u64, tokens as u64));
    }
    let config: UNetConfig = store.config("unet")?;
    let layout = config.layout()?;
    let widest = layout
        .down
        .iter()
        .enumerate()
        .filter(|(_, block)| block.cross_attention)
        .map(|(level, block)| (block.heads as u64, (latent_cells >> (2 * level)) as u64))
        .max_by_key(|&(heads, tokens)| heads * tokens * tokens)
        .unwrap_or((0, 0));
    Ok(widest)
}

/// Memory the system can give this process now: `MemAvailable` on Linux; `None` elsewhere.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    status_field_kib(&meminfo, "MemAvailable:").map(|kib| kib * 1024)
}

/// The most memory this process has held: `VmHWM` on Linux, `getrusage`'s `ru_maxrss` on other
/// Unix systems; `None` elsewhere.
pub fn peak_rss_bytes() -> Option<u64> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        return status_field_kib(&status, "VmHWM:").map(|kib| kib * 1024);
    }
    rusage_max_rss()
}

#[cfg(all(unix, not(target_os = "linux")))]
fn rusage_max_rss() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given, which points to
    // zeroed memory of that type owned by this frame.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getrusage succeeded, so it initialised the struct.
    let max = unsafe { usage.assume_init() }.ru_maxrss as u64;
    // macOS reports bytes, the BSDs kibibytes.
    Some(if cfg!(target_vendor = "apple") {
        max
    } else {
        max * 1024
    })
}

#[cfg(not(all(unix, not(target_os = "linux"))))]
fn rusage_max_rss() -> Option<u64> {
    None
}

/// A `Name:   1234 kB` line of /proc/meminfo or /proc/self/status, in KiB.
fn status_field_kib(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter counts of diffusers' and transformers' models built from the same configs
    /// (`sum(p.numel() for p in model.parameters())`, diffusers 0.42.1 / transformers, on the
    /// meta device): the embedded configs are the real architectures, read as diffusers reads them.
    #[test]
    fn parameter_counts_match_diffusers() {
        let expected: [(Architecture, &[(&str, u64)]); 4] = [
            (
                Architecture::Sd1,
                &[
                    ("text_encoder", 123_060_480),
                    ("unet", 859_520_964),
                    ("vae", 83_653_863),
                ],
            ),
            (
                Architecture::Sd2,
                &[
                    ("text_encoder", 340_387_840),
                    ("unet", 865_910_724),
                    ("vae", 83_653_863),
                ],
            ),
            (
                Architecture::Sdxl,
                &[
                    ("text_encoder", 123_060_480),
                    ("text_encoder_2", 694_659_840),
                    ("unet", 2_567_463_684),
                    ("vae", 83_653_863),
                ],
            ),
            (
                Architecture::Flux,
                &[
                    ("text_encoder", 123_060_480),
                    ("text_encoder_2", 4_762_310_656),
                    ("transformer", 11_891_178_560),
                    ("vae", 83_819_683),
                ],
            ),
        ];
        for (arch, counts) in expected {
            let store = arch.store(None).unwrap();
            assert_eq!(count_parameters(&store, arch).unwrap(), counts, "{arch}");
        }
    }

    #[test]
    fn flux_does_not_fit_in_23_gb_at_any_dtype() {
        let store = Architecture::Flux.store(None).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let estimate =
                MemoryEstimate::new(&store, Architecture::Flux, dtype, 1024, 1024, 1, false)
                    .unwrap();
            assert!(estimate.weights > 23 << 30, "{dtype:?}: {estimate:?}");
        }
    }

    #[test]
    fn sd_estimate_adds_weights_and_the_decode() {
        let store = Architecture::Sd2.store(None).unwrap();
        let e =
            MemoryEstimate::new(&store, Architecture::Sd2, DType::F32, 512, 512, 1, false).unwrap();
        assert_eq!(e.weights, (340_387_840 + 865_910_724 + 83_653_863) * 4);
        // 512x512 x 256 channels x 12 tensors x 4 bytes = 3 GiB; the UNet's widest attention
        // (5 heads over 64x64 tokens, scores and softmax) is 0.6 GiB.
        assert_eq!(e.activations, 3 << 30);
        // f16 weights, the VAE still f32 (force_upcast).
        let h =
            MemoryEstimate::new(&store, Architecture::Sd2, DType::F16, 512, 512, 1, false).unwrap();
        assert_eq!(h.weights, (340_387_840 + 865_910_724) * 2 + 83_653_863 * 4);
    }

    #[test]
    fn reads_proc_fields() {
        let text = "MemTotal:       16384000 kB\nMemAvailable:    8000000 kB\nVmHWM:\t  1234 kB\n";
        assert_eq!(status_field_kib(text, "MemAvailable:"), Some(8_000_000));
        assert_eq!(status_field_kib(text, "VmHWM:"), Some(1234));
        assert_eq!(status_field_kib(text, "VmRSS:"), None);
    }
}
