//! `imago bench`: the real architectures (SD 1.5, SD 2.1-base, SDXL, FLUX.1-schnell) built from
//! their configs with deterministic random weights, so no download is needed, and their stages
//! timed: text encoding, one denoising step, one VAE decode, and optionally whole generations.
//! A configuration that cannot fit in memory is refused before anything is built.
mod architecture;
mod memory;
mod run;

pub use architecture::Architecture;
pub use memory::{available_memory_bytes, count_parameters, peak_rss_bytes, MemoryEstimate};
pub use run::{
    dtype_name, load, run, time_denoise_step, BenchError, BenchOptions, BenchReport,
    THROUGHPUT_BATCHES,
};
