//! The packed encoder's own operations, as candle custom ops: the texts of
//! a pass lie end to end as one (tokens × width) matrix, text `s` on rows
//! `starts[s] .. starts[s + 1]`, with no padding and so no attention mask.
//!
//! - [`Attention`]: self-attention of every text and head, from the fused
//!   query | key | value matrix, scores never stored.
//! - [`Pool`]: one f32 vector per text, the mean of its tokens or its first.
//!
//! Each has a CPU implementation (straightforward, f32 arithmetic) and, with
//! the `cuda` feature, kernels from `packed.cu` (built to PTX by build.rs):
//! one block per text and head, one thread per query token, keys and values
//! staged in shared memory, softmax computed online.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, WithDType};

/// Head sizes the attention kernels are built for.
pub const HEAD_SIZES: [usize; 2] = [32, 64];

/// Self-attention over packed texts: `qkv` (tokens × 3·hidden) with
/// `starts` (texts + 1, u32) gives the context (tokens × hidden).
pub struct Attention {
    /// Attention heads.
    pub heads: usize,
    /// The longest text's tokens (sets the GPU's block size).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub longest: usize,
}

/// One f32 vector per packed text: `x` (tokens × hidden) with `starts`
/// gives (texts × hidden).
pub struct Pool {
    /// The first token's vector instead of the mean.
    pub cls: bool,
}

/// The u32 row starts, checked against `tokens`.
fn starts<'a>(s: &'a CpuStorage, l: &Layout, tokens: usize) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        bail!("packed: starts must be u32")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("packed: starts must be contiguous")
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

/// A contiguous matrix's values.
fn matrix<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("packed: the matrix must be contiguous")
    };
    Ok(&v[a..b])
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

    fn cpu<T: WithDType>(&self, qkv: &[T], width: usize, starts: &[u32]) -> Result<Vec<T>> {
        let (hidden, d) = self.sizes(width)?;
        let scale = 1.0 / (d as f32).sqrt();
        let mut ctx = vec![T::zero(); qkv.len() / 3];
        let (mut x, mut p, mut o) = (Vec::new(), Vec::new(), vec![0f32; d]);
        for w in starts.windows(2) {
            let (start, len) = (w[0] as usize, (w[1] - w[0]) as usize);
            // The text's query | key | value rows in f32.
            x.clear();
            x.extend(
                qkv[start * width..(start + len) * width]
                    .iter()
                    .map(|v| v.to_f64() as f32),
            );
            for h in 0..self.heads {
                let part = |t: usize, which: usize| {
                    let at = t * width + which * hidden + h * d;
                    &x[at..at + d]
                };
                for r in 0..len {
                    let q = part(r, 0);
                    p.clear();
                    p.extend((0..len).map(|j| {
                        q.iter().zip(part(j, 1)).map(|(a, b)| a * b).sum::<f32>() * scale
                    }));
                    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    p.iter_mut().for_each(|s| *s = (*s - max).exp());
                    let sum: f32 = p.iter().sum();
                    o.fill(0.0);
                    for (j, &pj) in p.iter().enumerate() {
                        o.iter_mut().zip(part(j, 2)).for_each(|(o, v)| *o += pj * v);
                    }
                    let out = &mut ctx[(start + r) * hidden + h * d..][..d];
                    for (c, v) in out.iter_mut().zip(&o) {
                        *c = T::from_f64((v / sum) as f64);
                    }
                }
            }
        }
        Ok(ctx)
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (tokens, width) = l1.shape().dims2()?;
        let starts = starts(s2, l2, tokens)?;
        let out = match s1 {
            CpuStorage::F32(v) => CpuStorage::F32(self.cpu(matrix(v, l1)?, width, starts)?),
            CpuStorage::F16(v) => CpuStorage::F16(self.cpu(matrix(v, l1)?, width, starts)?),
            CpuStorage::BF16(v) => CpuStorage::BF16(self.cpu(matrix(v, l1)?, width, starts)?),
            other => bail!("packed attention: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, Shape::from((tokens, width / 3))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (tokens, width) = l1.shape().dims2()?;
        let (hidden, d) = self.sizes(width)?;
        if !HEAD_SIZES.contains(&d) {
            bail!("packed attention: no kernel for head size {d} (sizes {HEAD_SIZES:?})")
        }
        let texts = l2.shape().elem_count().saturating_sub(1);
        // One thread per query token, whole warps, 32 to 128.
        let threads = self.longest.div_ceil(32).clamp(1, 4) as u32 * 32;
        let launch = cuda::Launch {
            grid: (texts as u32, self.heads as u32),
            threads,
            out_len: tokens * hidden,
            ints: [hidden as i32, 0],
            scale: 1.0 / (d as f32).sqrt(),
        };
        let out = cuda::run(
            s1,
            l1,
            s2,
            l2,
            &format!("attention_{{}}_d{d}"),
            &launch,
            false,
        )?;
        Ok((out, Shape::from((tokens, hidden))))
    }
}

impl Pool {
    fn cpu<T: WithDType>(&self, x: &[T], hidden: usize, starts: &[u32]) -> Vec<f32> {
        let mut out = vec![0f32; (starts.len() - 1) * hidden];
        for (s, w) in starts.windows(2).enumerate() {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let row = &mut out[s * hidden..(s + 1) * hidden];
            if a == b {
                continue;
            }
            let rows = if self.cls { a..a + 1 } else { a..b };
            let n = rows.len() as f32;
            for t in rows {
                for (o, v) in row.iter_mut().zip(&x[t * hidden..(t + 1) * hidden]) {
                    *o += v.to_f64() as f32;
                }
            }
            row.iter_mut().for_each(|o| *o /= n);
        }
        out
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
        let starts = starts(s2, l2, tokens)?;
        let out = match s1 {
            CpuStorage::F32(v) => self.cpu(matrix(v, l1)?, hidden, starts),
            CpuStorage::F16(v) => self.cpu(matrix(v, l1)?, hidden, starts),
            CpuStorage::BF16(v) => self.cpu(matrix(v, l1)?, hidden, starts),
            other => bail!("packed pool: unsupported dtype {:?}", other.dtype()),
        };
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
        let texts = l2.shape().elem_count().saturating_sub(1);
        let launch = cuda::Launch {
            grid: (texts as u32, 1),
            threads: 128,
            out_len: texts * hidden,
            ints: [hidden as i32, self.cls as i32],
            scale: 0.0,
        };
        let out = cuda::run(s1, l1, s2, l2, "pool_{}", &launch, true)?;
        Ok((out, Shape::from((texts, hidden))))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launching `packed.cu`'s kernels.
    use super::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
    use candle_core::{bail, CudaStorage, Layout, Result};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/packed.ptx"));

    /// A launch of one kernel over (matrix, starts).
    pub struct Launch {
        pub grid: (u32, u32),
        pub threads: u32,
        pub out_len: usize,
        /// `attention`: (hidden, unused); `pool`: (hidden, cls).
        pub ints: [i32; 2],
        /// `attention`'s score scale.
        pub scale: f32,
    }

    /// Runs the kernel `name` (`{}` stands for the dtype) over `s1` with
    /// the row starts `s2`: a pooling kernel (f32 output) when `pool`, else
    /// an attention kernel (output in `s1`'s dtype).
    pub fn run(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        name: &str,
        launch: &Launch,
        pool: bool,
    ) -> Result<CudaStorage> {
        if launch.grid.0 == 0 {
            bail!("packed: a pass of no texts")
        }
        let (Some(m), Some(st)) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("packed: inputs must be contiguous")
        };
        let CudaStorageSlice::U32(starts) = &s2.slice else {
            bail!("packed: starts must be u32")
        };
        let args = Args {
            s1,
            m,
            starts: starts.slice(st.0..st.1),
            name,
            launch,
        };
        let n = launch.out_len;
        match (&s1.slice, pool) {
            (CudaStorageSlice::F32(v), _) => args.go(v, "f32", alloc::<f32>(s1, n)?),
            (CudaStorageSlice::F16(v), false) => args.go(v, "f16", alloc_like(s1, v, n)?),
            (CudaStorageSlice::BF16(v), false) => args.go(v, "bf16", alloc_like(s1, v, n)?),
            (CudaStorageSlice::F16(v), true) => args.go(v, "f16", alloc::<f32>(s1, n)?),
            (CudaStorageSlice::BF16(v), true) => args.go(v, "bf16", alloc::<f32>(s1, n)?),
            _ => bail!("packed: unsupported dtype {:?}", s1.dtype()),
        }
    }

    struct Args<'a> {
        s1: &'a CudaStorage,
        m: (usize, usize),
        starts: candle_core::cuda_backend::cudarc::driver::CudaView<'a, u32>,
        name: &'a str,
        launch: &'a Launch,
    }

    impl Args<'_> {
        /// Launches the kernel for input values `T` (`tag`) into `out`.
        fn go<T: DeviceRepr, O: DeviceRepr + CudaDType>(
            &self,
            input: &CudaSlice<T>,
            tag: &str,
            out: CudaSlice<O>,
        ) -> Result<CudaStorage> {
            let dev = &self.s1.device;
            let x = input.slice(self.m.0..self.m.1);
            let f =
                dev.get_or_load_custom_func(&self.name.replace("{}", tag), "stook_packed", PTX)?;
            let l = self.launch;
            let mut b: LaunchArgs = f.builder();
            b.arg(&x);
            b.arg(&self.starts);
            b.arg(&out);
            b.arg(&l.ints[0]);
            if self.name.starts_with("pool") {
                b.arg(&l.ints[1]);
            } else {
                b.arg(&l.scale);
            }
            let config = LaunchConfig {
                grid_dim: (l.grid.0, l.grid.1, 1),
                block_dim: (l.threads, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel reads the matrix `x` and `grid.0 + 1` row
            // starts, and writes `out_len` values of `out`; the arguments
            // match its C parameters in order and type.
            unsafe { b.launch(config) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
    }

    fn alloc<O: DeviceRepr>(s1: &CudaStorage, n: usize) -> Result<CudaSlice<O>> {
        // SAFETY: the kernel writes every value before anything reads it.
        unsafe { s1.device.alloc::<O>(n) }
    }

    /// `n` values of the type of `_like`'s.
    fn alloc_like<T: DeviceRepr>(
        s1: &CudaStorage,
        _like: &CudaSlice<T>,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        alloc(s1, n)
    }
}
