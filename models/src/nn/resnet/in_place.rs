//! The banded resnet written into storage the caller gives up, for the VAE decoder's last level
//! at full resolution: the upsampler's output (twice the level's channels) holds the first
//! block's convolution output in one half and its 1x1 shortcut in the other, and every block's
//! output then overwrites its input half while the other half holds its first convolution's
//! output. No full-resolution tensor besides that one buffer is allocated.
use candle_core::{Module, Result, Tensor};

use super::ResnetBlock2D;
use crate::nn::banded::{bands, conv_rows};
use imago_kernels::GroupNormRows;

impl ResnetBlock2D {
    fn convs_band(&self) -> bool {
        self.conv1.keeps_size_3x3() && self.conv2.keeps_size_3x3()
    }

    /// The block (no time embedding) on `input`, a batch-1 tensor of twice the block's output
    /// channels, with a 1x1 shortcut, computed inside `input`'s storage, which the caller gives
    /// up (no other tensor may share it). Returns `(output, scratch)`: the two channel halves
    /// of `input`'s storage, the block's output and a free tensor of the same shape for
    /// [`Self::forward_banded_over`]. `None` (`input` untouched) where the layers or the tensor
    /// do not allow it. Bands of about `band_bytes` of input.
    pub(crate) fn forward_banded_split(
        &self,
        input: Tensor,
        band_bytes: usize,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let (n, c, height, w) = input.dims4()?;
        let out_c = self.out_channels;
        let shortcut = match &self.conv_shortcut {
            Some(conv) if conv.is_pointwise() => conv,
            _ => return Ok(None),
        };
        if n != 1 || c != 2 * out_c || !self.convs_band() {
            return Ok(None);
        }
        let Some(rows1) = self.norm1.rows_then(&input, self.act)? else {
            return Ok(None);
        };
        // Batch 1: each channel half of the (1, 2 * out_c, H, W) buffer is a contiguous
        // (1, out_c, H, W) tensor, and rows r0..r1 of both halves are rows r0..r1 of the input.
        let h = input.narrow(1, 0, out_c)?;
        let residual = input.narrow(1, out_c, out_c)?;
        // Band k's rows are overwritten only after band k + 1 has read its input rows (which
        // include band k's last row); the shortcut reads its own band's rows only.
        let mut pending: Option<(usize, Tensor, Tensor)> = None;
        for (first, count) in bands(band_bytes, (n, c, height, w)) {
            let conv = conv_rows(&self.conv1, height, first, count, |a, b| {
                rows1.rows(&input, a, b - a)
            })?
            .contiguous()?;
            let skip = shortcut.forward(&input.narrow(2, first, count)?.contiguous()?)?;
            if let Some((row, conv, skip)) = pending.take() {
                h.slice_set(&conv, 2, row)?;
                residual.slice_set(&skip, 2, row)?;
            }
            pending = Some((first, conv, skip.contiguous()?));
        }
        if let Some((row, conv, skip)) = pending {
            h.slice_set(&conv, 2, row)?;
            residual.slice_set(&skip, 2, row)?;
        }
        drop(rows1);
        if !self.second_half(&h, &residual, band_bytes)? {
            candle_core::bail!("in-place resnet: the second normalization refused its input");
        }
        Ok(Some((residual, h)))
    }

    /// The block (no time embedding, no shortcut) with its output written over `input`, and
    /// `scratch` (a tensor of the same shape whose values are not needed) holding the first
    /// convolution's output. False (nothing written) where the layers or tensors do not allow
    /// it. Bands of about `band_bytes` of input.
    pub(crate) fn forward_banded_over(
        &self,
        input: &Tensor,
        scratch: &Tensor,
        band_bytes: usize,
    ) -> Result<bool> {
        if self.conv_shortcut.is_some()
            || !self.convs_band()
            || input.dims() != scratch.dims()
            || !GroupNormRows::supports(scratch)
            || shares_elements(input, scratch)
        {
            return Ok(false);
        }
        let Some(rows1) = self.norm1.rows_then(input, self.act)? else {
            return Ok(false);
        };
        let (n, c, height, w) = input.dims4()?;
        for (first, count) in bands(band_bytes, (n, c, height, w)) {
            let conv = conv_rows(&self.conv1, height, first, count, |a, b| {
                rows1.rows(input, a, b - a)
            })?;
            scratch.slice_set(&conv.contiguous()?, 2, first)?;
        }
        drop(rows1);
        if !self.second_half(scratch, input, band_bytes)? {
            candle_core::bail!("in-place resnet: the second normalization refused its input");
        }
        Ok(true)
    }

    /// `residual += conv2(act(norm2(h)))` (then the output scale), by bands, in place.
    fn second_half(&self, h: &Tensor, residual: &Tensor, band_bytes: usize) -> Result<bool> {
        let Some(rows2) = self.norm2.rows_then(h, self.act)? else {
            return Ok(false);
        };
        let (n, c, height, w) = h.dims4()?;
        for (first, count) in bands(band_bytes, (n, c, height, w)) {
            let conv = conv_rows(&self.conv2, height, first, count, |a, b| {
                rows2.rows(h, a, b - a)
            })?;
            let out = self.scale_output((residual.narrow(2, first, count)? + conv)?)?;
            residual.slice_set(&out.contiguous()?, 2, first)?;
        }
        Ok(true)
    }
}

/// Whether two contiguous tensors share any element of one storage.
fn shares_elements(a: &Tensor, b: &Tensor) -> bool {
    // One storage guard at a time: the address identifies the storage.
    let place = |t: &Tensor| {
        let (storage, layout) = t.storage_and_layout();
        let start = layout.start_offset();
        (
            &*storage as *const _ as usize,
            start,
            start + t.elem_count(),
        )
    };
    let ((sa, a0, a1), (sb, b0, b1)) = (place(a), place(b));
    sa == sb && a0 < b1 && b0 < a1
}

#[cfg(test)]
mod tests {
    use super::super::tests::block;
    use crate::nn::test_util::bits;
    use candle_core::{Device, Result, Tensor};

    /// The block computed in its input's storage (the split first block, then blocks over the
    /// output half) gives the plain blocks' bits, for bands of 1 row to all rows.
    #[test]
    fn in_place_blocks_match_the_plain_blocks() -> Result<()> {
        let (out_c, height, width) = (4, 11, 7);
        let first = block(3, 2 * out_c, out_c)?;
        let next = block(5, out_c, out_c)?;
        let x = Tensor::randn(0f32, 1.0, (1, 2 * out_c, height, width), &Device::Cpu)?;
        let want1 = first.forward(&x, None)?;
        let want2 = next.forward(&want1, None)?;
        let want3 = next.forward(&want2, None)?;
        for rows in [1, 2, 3, 5, 11] {
            // One row of c x 7 f32 values is 28 * c bytes.
            let input = x.copy()?;
            let (out, scratch) = first
                .forward_banded_split(input, rows * 28 * 2 * out_c)?
                .expect("an f32 CPU batch-1 block splits");
            assert_eq!(bits(&out)?, bits(&want1)?, "split, {rows} rows");
            assert!(next.forward_banded_over(&out, &scratch, rows * 28 * out_c)?);
            assert_eq!(bits(&out)?, bits(&want2)?, "over, {rows} rows");
            assert!(next.forward_banded_over(&out, &scratch, rows * 28 * out_c)?);
            assert_eq!(bits(&out)?, bits(&want3)?, "over twice, {rows} rows");
        }
        // A block with a shortcut does not run over its input; batch 2 does not split.
        let out = x.narrow(1, 0, out_c)?;
        let scratch = x.narrow(1, out_c, out_c)?.contiguous()?;
        assert!(!first.forward_banded_over(&out.contiguous()?, &scratch, 1 << 20)?);
        assert!(!next.forward_banded_over(&out, &out, 1 << 20)?);
        let two = Tensor::cat(&[&x, &x], 0)?;
        assert!(first.forward_banded_split(two, 1 << 20)?.is_none());
        Ok(())
    }
}
