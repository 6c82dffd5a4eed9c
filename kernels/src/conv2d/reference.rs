//! candle's own convolution plus a broadcast bias: the oracle for [`super::Conv2dKernel`] and
//! the path for everything the kernel does not take.

use candle_core::{Result, Tensor};

use super::Conv2dGeometry;

/// conv2d of x (N, Cin, H, W) with weight (Cout, Cin, kh, kw) and an optional bias (Cout).
pub fn conv2d_reference(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Conv2dGeometry,
) -> Result<Tensor> {
    let y = x.conv2d(
        weight,
        geometry.padding,
        geometry.stride,
        geometry.dilation,
        1,
    )?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => Ok(y),
    }
}
