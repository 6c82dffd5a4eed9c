//! Storage element types the hand-written kernels read and write through f32.

use candle_core::{bail, Result, Tensor};
use half::{bf16, f16, slice::HalfFloatSliceExt};

/// f32, f16 or bf16: the kernels compute in f32 and convert whole runs of values at once.
pub(crate) trait Element: Copy + Send + Sync + 'static {
    const ZERO: Self;
    /// Writes `src` as f32 into `dst` (same length).
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);
    /// Writes `src` rounded to this type into `dst` (same length).
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

macro_rules! half_element {
    ($t:ty) => {
        impl Element for $t {
            const ZERO: Self = <$t>::ZERO;
            fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
                src.convert_to_f32_slice(dst);
            }
            fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
                dst.convert_from_f32_slice(src);
            }
        }
    };
}
half_element!(f16);
half_element!(bf16);

/// The tensor's values as a flat vector of `T` (through f32 unless it is `T` already).
pub(crate) fn values<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()
}

/// A bias tensor of shape [len] as f32 values.
pub(crate) fn bias_values(
    bias: Option<&Tensor>,
    len: usize,
    what: &str,
) -> Result<Option<Vec<f32>>> {
    bias.map(|b| {
        if b.dims() != [len] {
            bail!("{what}: bias must have shape [{len}], got {:?}", b.dims());
        }
        values::<f32>(b)
    })
    .transpose()
}
