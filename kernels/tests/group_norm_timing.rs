//! Timing of the fused kernel against the reference ops on an SD-sized activation.
//! Run: cargo test -p imago-kernels --release --test group_norm_timing -- --ignored --nocapture

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor};
use imago_kernels::{group_norm, group_norm_reference, Activation};

fn median_time(runs: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<Duration> {
    f()?; // warm-up: allocator, rayon pool
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let y = f()?;
        times.push(start.elapsed());
        drop(y);
    }
    times.sort();
    Ok(times[runs / 2])
}

#[test]
#[ignore = "timing report, run with --release --ignored --nocapture"]
fn time_group_norm_2x320x64x64_f32() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 320, 64, 64), &dev)?;
    let weight = Tensor::randn(1f32, 0.1, 320, &dev)?;
    let bias = Tensor::randn(0f32, 0.1, 320, &dev)?;
    println!("threads: {}", rayon::current_num_threads());
    for activation in [Activation::None, Activation::Silu] {
        let fused = median_time(15, || group_norm(&x, 32, &weight, &bias, 1e-5, activation))?;
        let reference = median_time(15, || {
            group_norm_reference(&x, 32, &weight, &bias, 1e-5, activation)
        })?;
        println!(
            "group_norm 2x320x64x64 f32 {activation:?}: fused {:.2} ms, reference {:.2} ms, speed-up {:.1}x",
            fused.as_secs_f64() * 1e3,
            reference.as_secs_f64() * 1e3,
            reference.as_secs_f64() / fused.as_secs_f64()
        );
    }
    Ok(())
}
