//! The packed encoder's own operations, as candle custom ops: the texts of
//! a pass lie end to end as one (tokens × width) matrix, text `s` on rows
//! `starts[s] .. starts[s + 1]`, with no padding and so no attention mask.
//!
//! - [`Attention`]: self-attention of every text and head, from the fused
//!   query | key | value matrix before its bias; scores never stored.
//! - [`BiasGelu`]: the up projection's bias and exact GELU, one pass.
//! - [`AddNorm`]: a projection's bias, the residual and the layer norm,
//!   one pass.
//! - [`Pool`]: one f32 vector per text, the mean of its tokens or its first.
//!
//! Each has a CPU implementation (straightforward, in f32) and, with the
//! `cuda` feature, a kernel from `packed.cu` (built to PTX by build.rs;
//! checked on the CPU by tests/cuda_kernels.rs). Arithmetic is f32 in both
//! whatever the storage type.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape};

use super::kernels;

/// Head sizes the attention kernels are built for.
pub const HEAD_SIZES: [usize; 2] = [32, 64];
/// The widest row [`AddNorm`]'s kernel takes (`NORM_COLS` in packed.cu).
pub const NORM_COLS: usize = 4096;

/// Self-attention over packed texts: `qkv` (tokens × 3·hidden) before its
/// bias, the bias (3·hidden) and `starts` (texts + 1, u32) give the
/// context (tokens × hidden).
pub struct Attention {
    /// Attention heads.
    pub heads: usize,
    /// The longest text's tokens (sets the GPU's block size).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub longest: usize,
}

/// `gelu(y + bias)` (exact, erf) for `y` (rows × cols) and `bias` (cols).
pub struct BiasGelu;

/// `layer_norm(y + bias + residual) · gamma + beta` per row, for `y` and
/// `residual` (rows × cols) and `params` = bias | gamma | beta (3 × cols).
pub struct AddNorm {
    /// Added to the variance.
    pub eps: f32,
}

/// One f32 vector per packed text: `x` (tokens × hidden) with `starts`
/// gives (texts × hidden).
pub struct Pool {
    /// The first token's vector instead of the mean.
    pub cls: bool,
}

/// A contiguous float storage's values as f32.
fn f32s(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("packed: inputs must be contiguous")
    };
    Ok(match s {
        CpuStorage::F32(v) => v[a..b].to_vec(),
        CpuStorage::F16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::BF16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
        other => bail!("packed: unsupported dtype {:?}", other.dtype()),
    })
}

/// `v` in `dtype` (rounded to nearest, as the GPU's kernels do).
fn stored(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        other => bail!("packed: unsupported dtype {other:?}"),
    })
}

/// Adds `bias` to each row of `x` (rows as wide as `bias`).
fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

/// The u32 row starts, checked against `tokens`.
fn starts<'a>(s: &'a CpuStorage, l: &Layout, tokens: usize) -> Result<&'a [u32]> {
    let (CpuStorage::U32(v), Some((a, b))) = (s, l.contiguous_offsets()) else {
        bail!("packed: starts must be contiguous u32")
    };
    let starts = &v[a..b];
    if starts.first() != Some(&0)
        || starts.last().map(|&t| t as usize) != Some(tokens)
        || starts.windows(2).any(|w| w[0] > w[1])
    {
        bail!("packed: starts must rise from 0 to the token count {tokens}")
    }
    Ok(starts)
}

impl Attention {
    /// The hidden size and head size for a `qkv` of `width` columns.
    fn sizes(&self, width: usize) -> Result<(usize, usize)> {
        let hidden = width / 3;
        if !width.is_multiple_of(3) || self.heads == 0 || !hidden.is_multiple_of(self.heads) {
            bail!(
                "packed attention: {width} columns are not 3 × heads ({}) × head size",
                self.heads
            )
        }
        Ok((hidden, hidden / self.heads))
    }

    fn cpu(&self, mut x: Vec<f32>, bias: &[f32], width: usize, starts: &[u32]) -> Result<Vec<f32>> {
        let (hidden, d) = self.sizes(width)?;
        let scale = 1.0 / (d as f32).sqrt();
        add_rows(&mut x, bias);
        let mut ctx = vec![0f32; x.len() / 3];
        let (mut p, mut o) = (Vec::new(), vec![0f32; d]);
        for w in starts.windows(2) {
            let text = w[0] as usize..w[1] as usize;
            for h in 0..self.heads {
                let part = |t: usize, which: usize| &x[t * width + which * hidden + h * d..][..d];
                for r in text.clone() {
                    let q = part(r, 0);
                    p.clear();
                    p.extend(text.clone().map(|j| {
                        q.iter().zip(part(j, 1)).map(|(a, b)| a * b).sum::<f32>() * scale
                    }));
                    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    p.iter_mut().for_each(|s| *s = (*s - max).exp());
                    let sum: f32 = p.iter().sum();
                    o.fill(0.0);
                    for (j, &pj) in text.clone().zip(&p) {
                        o.iter_mut().zip(part(j, 2)).for_each(|(o, v)| *o += pj * v);
                    }
                    let out = &mut ctx[r * hidden + h * d..][..d];
                    out.iter_mut().zip(&o).for_each(|(c, v)| *c = v / sum);
                }
            }
        }
        Ok(ctx)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (tokens, width) = l1.shape().dims2()?;
        let ctx = self.cpu(
            f32s(s1, l1)?,
            &f32s(s2, l2)?,
            width,
            starts(s3, l3, tokens)?,
        )?;
        Ok((stored(ctx, s1.dtype())?, Shape::from((tokens, width / 3))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (tokens, width) = l1.shape().dims2()?;
        let (hidden, d) = self.sizes(width)?;
        if !HEAD_SIZES.contains(&d) {
            bail!("packed attention: no kernel for head size {d} (sizes {HEAD_SIZES:?})")
        }
        let call = cuda::Call {
            kernel: format!("attention_{{}}_d{d}"),
            inputs: vec![(s1, l1), (s2, l2), (s3, l3)],
            out_len: tokens * hidden,
            f32_out: false,
            scalars: vec![
                cuda::Scalar::Int(hidden as i32),
                cuda::Scalar::Float(1.0 / (d as f32).sqrt()),
            ],
            grid: (l3.shape().elem_count() as u32 - 1, self.heads as u32),
            // One thread per query token, whole warps, 32 to 128.
            threads: self.longest.div_ceil(32).clamp(1, 4) as u32 * 32,
        };
        Ok((call.run()?, Shape::from((tokens, hidden))))
    }
}

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "packed-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, cols) = l1.shape().dims2()?;
        let (mut y, bias) = (f32s(s1, l1)?, f32s(s2, l2)?);
        add_rows(&mut y, &bias);
        kernels::gelu(&mut y, cols);
        Ok((stored(y, s1.dtype())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        let n = rows * cols;
        let call = cuda::Call {
            kernel: "bias_gelu_{}".into(),
            inputs: vec![(s1, l1), (s2, l2)],
            out_len: n,
            f32_out: false,
            scalars: vec![
                cuda::Scalar::Int(rows as i32),
                cuda::Scalar::Int(cols as i32),
            ],
            // Grid-stride: a few elements per thread.
            grid: (n.div_ceil(256 * 4).clamp(1, 65_535) as u32, 1),
            threads: 256,
        };
        Ok((call.run()?, l1.shape().clone()))
    }
}

impl CustomOp3 for AddNorm {
    fn name(&self) -> &'static str {
        "packed-add-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, cols) = l1.shape().dims2()?;
        let (mut y, residual, p) = (f32s(s1, l1)?, f32s(s2, l2)?, f32s(s3, l3)?);
        add_rows(&mut y, &p[..cols]);
        let norm = kernels::Norm {
            gamma: p[cols..2 * cols].to_vec(),
            beta: p[2 * cols..].to_vec(),
            eps: self.eps,
        };
        kernels::add_norm(&mut y, &residual, &norm);
        Ok((stored(y, s1.dtype())?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, cols) = l1.shape().dims2()?;
        if cols > NORM_COLS {
            bail!("packed layer norm: rows of {cols} values, the kernel takes {NORM_COLS}")
        }
        let call = cuda::Call {
            kernel: "bias_residual_norm_{}".into(),
            inputs: vec![(s1, l1), (s2, l2), (s3, l3)],
            out_len: rows * cols,
            f32_out: false,
            scalars: vec![
                cuda::Scalar::Int(cols as i32),
                cuda::Scalar::Float(self.eps),
            ],
            grid: (rows as u32, 1),
            threads: 128, // NORM_THREADS
        };
        Ok((call.run()?, l1.shape().clone()))
    }
}

impl CustomOp2 for Pool {
    fn name(&self) -> &'static str {
        "packed-pool"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (tokens, hidden) = l1.shape().dims2()?;
        let (x, starts) = (f32s(s1, l1)?, starts(s2, l2, tokens)?);
        let mut out = vec![0f32; (starts.len() - 1) * hidden];
        for (row, w) in out.chunks_mut(hidden).zip(starts.windows(2)) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let rows = if self.cls { a..(a + 1).min(b) } else { a..b };
            let n = rows.len().max(1) as f32;
            for t in rows {
                row.iter_mut()
                    .zip(&x[t * hidden..(t + 1) * hidden])
                    .for_each(|(o, v)| *o += v);
            }
            row.iter_mut().for_each(|o| *o /= n);
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((starts.len() - 1, hidden)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, hidden) = l1.shape().dims2()?;
        let texts = l2.shape().elem_count() - 1;
        let call = cuda::Call {
            kernel: "pool_{}".into(),
            inputs: vec![(s1, l1), (s2, l2)],
            out_len: texts * hidden,
            f32_out: true,
            scalars: vec![
                cuda::Scalar::Int(hidden as i32),
                cuda::Scalar::Int(self.cls as i32),
            ],
            grid: (texts as u32, 1),
            threads: 128,
        };
        Ok((call.run()?, Shape::from((texts, hidden))))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launching `packed.cu`'s kernels.
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
    use candle_core::{bail, CudaStorage, Layout, Result};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/packed.ptx"));

    /// A trailing scalar argument.
    pub enum Scalar {
        Int(i32),
        Float(f32),
    }

    /// One kernel launch: C arguments `inputs…, out, scalars…`.
    pub struct Call<'a> {
        /// The kernel's name, `{}` standing for the dtype (`f32`, `f16`, `bf16`).
        pub kernel: String,
        /// Matrices in the first one's float dtype, or u32 row starts.
        pub inputs: Vec<(&'a CudaStorage, &'a Layout)>,
        pub out_len: usize,
        /// An f32 output, else the first input's dtype.
        pub f32_out: bool,
        pub scalars: Vec<Scalar>,
        pub grid: (u32, u32),
        pub threads: u32,
    }

    /// An input as the kernel sees it.
    enum View<'a, T> {
        Float(CudaView<'a, T>),
        Index(CudaView<'a, u32>),
    }

    impl Call<'_> {
        pub fn run(&self) -> Result<CudaStorage> {
            if self.grid.0 == 0 || self.out_len == 0 {
                bail!("packed: {}: nothing to compute", self.kernel)
            }
            let first = self.inputs[0].0;
            let n = self.out_len;
            match (&first.slice, self.f32_out) {
                (CudaStorageSlice::F32(v), _) => self.go(v, "f32", alloc::<f32>(first, n)?),
                (CudaStorageSlice::F16(v), false) => self.go(v, "f16", alloc_like(first, v, n)?),
                (CudaStorageSlice::F16(v), true) => self.go(v, "f16", alloc::<f32>(first, n)?),
                (CudaStorageSlice::BF16(v), false) => self.go(v, "bf16", alloc_like(first, v, n)?),
                (CudaStorageSlice::BF16(v), true) => self.go(v, "bf16", alloc::<f32>(first, n)?),
                _ => bail!("packed: {}: unsupported dtype", self.kernel),
            }
        }

        /// Launches the kernel for float inputs `T` (`tag`) into `out`.
        fn go<T: DeviceRepr + CudaDType, O: DeviceRepr + CudaDType>(
            &self,
            _first: &CudaSlice<T>,
            tag: &str,
            out: CudaSlice<O>,
        ) -> Result<CudaStorage> {
            let views = self
                .inputs
                .iter()
                .map(|(s, l)| {
                    let Some((a, b)) = l.contiguous_offsets() else {
                        bail!("packed: {}: inputs must be contiguous", self.kernel)
                    };
                    Ok(match &s.slice {
                        CudaStorageSlice::U32(v) => View::Index(v.slice(a..b)),
                        _ => View::Float(s.as_cuda_slice::<T>()?.slice(a..b)),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let dev = &self.inputs[0].0.device;
            let name = self.kernel.replace("{}", tag);
            let f = dev.get_or_load_custom_func(&name, "stook_packed", PTX)?;
            let mut b = f.builder();
            for v in &views {
                match v {
                    View::Float(x) => b.arg(x),
                    View::Index(x) => b.arg(x),
                };
            }
            b.arg(&out);
            for s in &self.scalars {
                match s {
                    Scalar::Int(i) => b.arg(i),
                    Scalar::Float(x) => b.arg(x),
                };
            }
            let config = LaunchConfig {
                grid_dim: (self.grid.0, self.grid.1, 1),
                block_dim: (self.threads, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the arguments follow the kernel's C parameters in
            // order and type (inputs, output, scalars); the grid and the
            // sizes passed keep every index within the inputs and `out`.
            unsafe { b.launch(config) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
    }

    fn alloc<O: DeviceRepr>(s: &CudaStorage, n: usize) -> Result<CudaSlice<O>> {
        // SAFETY: the kernel writes every value before anything reads it.
        unsafe { s.device.alloc::<O>(n) }
    }

    /// `n` values of `_like`'s type.
    fn alloc_like<T: DeviceRepr>(
        s: &CudaStorage,
        _like: &CudaSlice<T>,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        alloc(s, n)
    }
}
