//! candle's CPU element-wise pool, tuned for sharing the cores with imago's kernels.
//!
//! candle runs element-wise ops over 64 Ki elements or more on its own "barrier pool" of
//! `CANDLE_NUM_THREADS - 1` workers, which spin for 25 000 `pause`s after each op before they
//! park. imago's GEMM, convolution and attention kernels run on rayon's pool right after, so
//! the spinning worker takes a core from them: on 2 cores a joined batch of eight tiny-model
//! requests took 2.0 s with the default and 1.1 s with [`SPIN_LIMIT`]. A short spin keeps the
//! element-wise ops parallel and hands the core back quickly.

/// Spins of a candle pool worker before it parks (candle's default: 25 000).
pub const SPIN_LIMIT: u32 = 100;

/// candle's variable for the spin limit, read once when its pool starts.
pub const SPIN_LIMIT_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Sets candle's pool spin limit to [`SPIN_LIMIT`] unless the environment already sets one.
/// Returns the value in force. Call at start-up, before any thread is spawned (it writes the
/// process environment) and before the first candle op (candle reads it once).
pub fn limit_idle_spinning() -> String {
    match std::env::var(SPIN_LIMIT_ENV) {
        Ok(value) => value,
        Err(_) => {
            std::env::set_var(SPIN_LIMIT_ENV, SPIN_LIMIT.to_string());
            SPIN_LIMIT.to_string()
        }
    }
}
