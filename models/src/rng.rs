//! torch's CPU random generator, reproduced exactly so that a seed gives diffusers' noise.
//!
//! `torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))` in float32 is:
//! - `at::mt19937` seeded with the low 32 bits of the seed (standard MT19937 init and tempering);
//! - for `numel >= 16` (contiguous float32), `normal_fill`: one 24-bit uniform float per element,
//!   then Box-Muller over blocks of 16 (`u1 = 1 - data[j]`, `u2 = data[j + 8]`), in float32;
//!   when `numel % 16 != 0` the last 16 values are recomputed from 16 fresh uniforms;
//! - for `numel < 16`, `at::normal_distribution<double>` per element: two 53-bit uniforms from
//!   `random64()`, Box-Muller in double, returning the cosine value and caching the sine value in
//!   the generator for the next scalar draw (the cache survives across calls, and a seed resets it).
use candle_core::{DType, Device, Tensor};

const STATE_N: usize = 624;
const STATE_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The Mersenne Twister exactly as `at::mt19937` runs it.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; STATE_N],
    next: usize,
    left: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_N];
        // torch keeps the full u64 seed for `initial_seed()` but the engine only uses its low half.
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..STATE_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self {
            state,
            next: 0,
            left: 1,
        }
    }

    fn twist(u: u32, v: u32) -> u32 {
        let mixed = (u & UPPER_MASK) | (v & LOWER_MASK);
        (mixed >> 1) ^ if v & 1 == 1 { MATRIX_A } else { 0 }
    }

    fn next_state(&mut self) {
        let s = &mut self.state;
        for i in 0..STATE_N - STATE_M {
            s[i] = s[i + STATE_M] ^ Self::twist(s[i], s[i + 1]);
        }
        for i in STATE_N - STATE_M..STATE_N - 1 {
            s[i] = s[i + STATE_M - STATE_N] ^ Self::twist(s[i], s[i + 1]);
        }
        s[STATE_N - 1] = s[STATE_M - 1] ^ Self::twist(s[STATE_N - 1], s[0]);
        self.left = STATE_N;
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.next_state();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// A `torch.Generator("cpu")` after `manual_seed(seed)`.
#[derive(Clone)]
pub struct TorchGenerator {
    seed: u64,
    engine: Mt19937,
    /// Box-Muller's second value from the last scalar (`numel < 16`) draw, as torch caches it.
    next_double_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("cached_normal", &self.next_double_normal)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            engine: Mt19937::new(seed),
            next_double_normal: None,
        }
    }

    /// The seed this generator was created with (torch's `initial_seed()`).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn random64(&mut self) -> u64 {
        let hi = self.engine.next_u32() as u64;
        let lo = self.engine.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: the low 24 bits of one 32-bit draw.
    fn uniform_f32(&mut self) -> f32 {
        (self.engine.next_u32() & 0x00ff_ffff) as f32 / (1u32 << 24) as f32
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: the low 53 bits of one 64-bit draw.
    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 / (1u64 << 53) as f64
    }

    /// `at::normal_distribution<double>(0, 1)` with torch's one-value cache.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }

    /// One `torch.randn(n)` draw in float32, continuing this generator's stream.
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for value in tail.iter_mut() {
                *value = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }

    /// `randn_tensor(shape, generator)` as diffusers calls it with a CPU generator: drawn on the CPU
    /// in float32, then moved to `device` and cast to `dtype`.
    pub fn randn_tensor(
        &mut self,
        shape: &[usize],
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Tensor> {
        let numel = shape.iter().product();
        let values = self.randn(numel);
        Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

/// torch's Box-Muller over 16 float32 uniforms in `[0, 1)`, all in float32 as its vectorised
/// `normal_fill_16` runs it: `theta = float(2 pi) * u2` is a float32 product (the scalar C++
/// fallback forms it in double; the vector kernel torch dispatches to does not, and the fixtures
/// agree with the vector kernel to within one ulp).
fn box_muller_16(data: &mut [f32]) {
    for j in 0..8 {
        let u1 = 1.0f32 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0f32 * u1.ln()).sqrt();
        let theta = std::f32::consts::TAU * u2;
        data[j] = radius * theta.cos();
        data[j + 8] = radius * theta.sin();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first outputs of the reference MT19937 (`init_genrand(5489)`), torch's default seed.
    #[test]
    fn mt19937_matches_the_reference_sequence() {
        let mut mt = Mt19937::new(5489);
        let first: Vec<u32> = (0..3).map(|_| mt.next_u32()).collect();
        assert_eq!(first, [3_499_211_612, 581_869_302, 3_890_346_734]);
        // The 10000th output of std::mt19937 with its default seed, as the C++ standard fixes it.
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn seed_uses_the_low_32_bits_but_is_remembered_whole() {
        let seed = (1u64 << 32) + 7;
        let mut a = TorchGenerator::new(seed);
        let mut b = TorchGenerator::new(7);
        assert_eq!(a.randn(20), b.randn(20));
        assert_eq!(a.seed(), seed);
    }

    #[test]
    fn randn_tensor_has_the_shape_and_values_of_randn() -> candle_core::Result<()> {
        let t = TorchGenerator::new(3).randn_tensor(&[1, 2, 3, 5], &Device::Cpu, DType::F32)?;
        assert_eq!(t.dims(), &[1, 2, 3, 5]);
        let flat = t.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(flat, TorchGenerator::new(3).randn(30));
        Ok(())
    }
}
