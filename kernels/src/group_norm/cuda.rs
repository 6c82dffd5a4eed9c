//! The fused GroupNorm on CUDA: launches `group_norm.cu` (compiled to PTX by build.rs), one
//! thread block per (batch, group). x is f32/f16/bf16 and contiguous; weight and bias are
//! contiguous f32 (the dispatch in `super::group_norm` converts them).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape};

use super::{check_channel_param, Activation, GroupNormDims};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/group_norm.ptx"));
/// The name candle caches the loaded PTX module under.
const MODULE: &str = "imago_group_norm";
/// Threads per block: a multiple of 32, at most 1024 (block_sum in the .cu relies on both).
const THREADS_PER_BLOCK: u32 = 512;

/// What the kernel needs besides the buffers.
pub(super) struct Launch {
    pub dims: GroupNormDims,
    pub eps: f64,
    pub activation: Activation,
}

impl Launch {
    pub fn forward(
        &self,
        x: &CudaStorage,
        x_layout: &Layout,
        weight: &CudaStorage,
        weight_layout: &Layout,
        bias: &CudaStorage,
        bias_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let Some((start, end)) = x_layout.contiguous_offsets() else {
            bail!(
                "group_norm cuda kernel: input must be contiguous, got strides {:?}",
                x_layout.stride()
            );
        };
        let channels = self.dims.channels;
        let weight = f32_param("weight", weight, weight_layout, channels)?;
        let bias = f32_param("bias", bias, bias_layout, channels)?;
        let device = x.device();
        let slice = match &x.slice {
            CudaStorageSlice::F32(v) => CudaStorageSlice::F32(self.launch(
                device,
                "imago_group_norm_f32",
                &v.slice(start..end),
                &weight,
                &bias,
            )?),
            CudaStorageSlice::F16(v) => CudaStorageSlice::F16(self.launch(
                device,
                "imago_group_norm_f16",
                &v.slice(start..end),
                &weight,
                &bias,
            )?),
            CudaStorageSlice::BF16(v) => CudaStorageSlice::BF16(self.launch(
                device,
                "imago_group_norm_bf16",
                &v.slice(start..end),
                &weight,
                &bias,
            )?),
            _ => bail!(
                "group_norm cuda kernel: input dtype {:?} is not supported (f32, f16, bf16)",
                x.dtype()
            ),
        };
        let out = CudaStorage {
            slice,
            device: device.clone(),
        };
        Ok((out, x_layout.shape().clone()))
    }

    fn launch<T: DeviceRepr>(
        &self,
        device: &CudaDevice,
        kernel: &str,
        x: &CudaView<'_, T>,
        weight: &CudaView<'_, f32>,
        bias: &CudaView<'_, f32>,
    ) -> Result<CudaSlice<T>> {
        let dims = self.dims;
        let blocks = dims.batch * dims.num_groups;
        let elements = blocks * dims.elements_per_group();
        if elements == 0 {
            bail!("group_norm cuda kernel: empty input (the dispatch routes it to the reference)");
        }
        let (Ok(grid), Ok(channels_per_group), Ok(num_groups)) = (
            u32::try_from(blocks),
            u32::try_from(dims.channels_per_group()),
            u32::try_from(dims.num_groups),
        ) else {
            bail!("group_norm cuda kernel: {dims:?} exceeds the kernel's 32-bit block indexing");
        };
        let spatial = dims.spatial as u64;
        let eps = self.eps as f32;
        let silu = i32::from(self.activation == Activation::Silu);
        let func = device.get_or_load_custom_func(kernel, MODULE, PTX)?;
        // SAFETY: the kernel writes every one of the `elements` outputs (each block covers its
        // group's elements entirely) before anything reads them.
        let out = unsafe { device.alloc::<T>(elements)? };
        let mut args = func.builder();
        args.arg(x)
            .arg(&out)
            .arg(weight)
            .arg(bias)
            .arg(&channels_per_group)
            .arg(&spatial)
            .arg(&num_groups)
            .arg(&eps)
            .arg(&silu);
        let config = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (THREADS_PER_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches the kernel's signature in group_norm.cu (pointers to
        // x, out, weight, bias; u32, u64, u32, f32, i32), x holds batch * C * spatial elements
        // and weight/bias C each, as checked by the caller.
        unsafe { args.launch(config) }.w()?;
        Ok(out)
    }
}

/// A contiguous [C] f32 parameter as a device view.
fn f32_param<'a>(
    name: &str,
    storage: &'a CudaStorage,
    layout: &Layout,
    channels: usize,
) -> Result<CudaView<'a, f32>> {
    check_channel_param(name, layout.dims(), channels)?;
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("group_norm cuda kernel: {name} must be contiguous");
    };
    match &storage.slice {
        CudaStorageSlice::F32(v) => Ok(v.slice(start..end)),
        _ => bail!(
            "group_norm cuda kernel: {name} must be f32, got {:?}",
            storage.dtype()
        ),
    }
}
