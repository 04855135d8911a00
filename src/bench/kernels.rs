//! `stook bench kernels`: each of the packed encoder's operations on a
//! device against its CPU version, on the same random inputs, in f32, f16
//! and bf16: on a GPU, which of `packed.cu`'s kernels (and their launches)
//! agree, one line each, before any model loads. A model's load-time check
//! says only that its packed passes disagree; this says where.

use candle_core::{DType, Device as CandleDevice, Tensor};
use stook::backends::embedding::candle_device;
use stook::backends::embedding::packed::{AddNorm, Attention, BiasGelu, Pool};

/// Arguments of `stook bench kernels`.
#[derive(Clone, Debug, clap::Args)]
pub struct KernelsBench {
    /// `cuda:N` (or `cpu`: the CPU versions against a plain f64
    /// reference).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
}

/// Text lengths of the packed inputs: an empty text, texts shorter and
/// longer than a key tile (32), more tokens than a block's threads (128).
const LENGTHS: [usize; 9] = [1, 2, 0, 31, 32, 33, 70, 150, 5];

/// One operation's agreement: its largest difference from the CPU's
/// result, in units of the allowed error (at most 1 passes).
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// The operation and its shape.
    pub op: String,
    /// Its inputs' and output's type (pooling's output is always f32).
    pub dtype: DType,
    /// max |got − want| / (one unit in the last place of `want` in the
    /// output's type + 1e-4 × the root mean square of `want`).
    pub error: f32,
}

impl Agreement {
    /// Whether the difference is within what is allowed.
    pub fn ok(&self) -> bool {
        self.error <= 1.0
    }
}

/// Runs the benchmark and prints a line per operation and type; fails if
/// any disagrees.
pub fn kernels(args: &KernelsBench) -> Result<(), Box<dyn std::error::Error>> {
    let dev = candle_device(&super::device_arg(&args.device)?)?;
    let results = check(&dev)?;
    let against = if dev.is_cpu() {
        "a plain f64 reference"
    } else {
        "their CPU versions"
    };
    println!(
        "stook's packed ops on {} against {against} (error in units of the allowed: ≤ 1 passes)",
        args.device
    );
    for a in &results {
        println!(
            "{:<28} {:<5} error {:.3} {}",
            a.op,
            format!("{:?}", a.dtype).to_lowercase(),
            a.error,
            if a.ok() { "ok" } else { "DISAGREES" }
        );
    }
    if !dev.is_cpu() {
        let (texts, calls) = (512, 50);
        println!(
            "f16, one pass of {texts} texts × {PASS_LEN} tokens at MiniLM's sizes, µs per call ({calls} calls):"
        );
        for (op, us) in timings(&dev, texts, calls)? {
            println!("{op:<44} {us:>9.1}");
        }
    }
    let bad = results.iter().filter(|a| !a.ok()).count();
    if bad > 0 {
        return Err(format!("{bad} of {} checks disagree", results.len()).into());
    }
    Ok(())
}

/// Every op in every float type on `dev`: against the CPU versions on a
/// GPU, against [`reference`] (plain f64 arithmetic sharing no code with
/// the ops) on the CPU.
pub fn check(dev: &CandleDevice) -> candle_core::Result<Vec<Agreement>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let tokens: usize = LENGTHS.iter().sum();
    let mut bounds = vec![0u32];
    for l in LENGTHS {
        bounds.push(bounds.last().copied().unwrap_or(0) + l as u32);
    }
    let starts = Tensor::new(bounds.as_slice(), &CandleDevice::Cpu)?;
    let longest = LENGTHS.iter().copied().max().unwrap_or(1);
    let hidden = 384;
    let qkv = rng.tensor((tokens, 3 * hidden), -2.0, 2.0)?;
    let qkv_bias = rng.tensor(3 * hidden, -0.5, 0.5)?;
    let up = rng.tensor((tokens, 4 * hidden), -4.0, 4.0)?;
    let up_bias = rng.tensor(4 * hidden, -0.5, 0.5)?;
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // The inputs as the op sees them (rounded to `dtype`), in f64.
        let f64s = |t: &Tensor| -> candle_core::Result<Vec<f64>> {
            t.to_dtype(dtype)?
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()
        };
        let mut run = |op: String,
                       f: &dyn Fn(&CandleDevice) -> candle_core::Result<Tensor>,
                       plain: &dyn Fn() -> candle_core::Result<Vec<f64>>| {
            let got = f(dev)?;
            let want = if dev.is_cpu() {
                Tensor::from_vec(plain()?, got.shape(), &CandleDevice::Cpu)?
                    .to_dtype(got.dtype())?
            } else {
                f(&CandleDevice::Cpu)?
            };
            out.push(Agreement {
                error: error(&want, &got)?,
                op,
                dtype,
            });
            Ok::<_, candle_core::Error>(())
        };
        let on = |t: &Tensor, d: &CandleDevice| t.to_dtype(dtype)?.to_device(d);
        for d in stook::backends::embedding::packed::HEAD_SIZES {
            let op = Attention {
                heads: hidden / d,
                longest,
            };
            run(
                format!("attention, head size {d}"),
                &|dv| {
                    on(&qkv, dv)?.apply_op3_no_bwd(&on(&qkv_bias, dv)?, &starts.to_device(dv)?, &op)
                },
                &|| {
                    Ok(reference::attention(
                        &f64s(&qkv)?,
                        &f64s(&qkv_bias)?,
                        hidden / d,
                        &bounds,
                    ))
                },
            )?;
        }
        run(
            "bias + gelu".into(),
            &|dv| on(&up, dv)?.apply_op2_no_bwd(&on(&up_bias, dv)?, &BiasGelu),
            &|| Ok(reference::bias_gelu(&f64s(&up)?, &f64s(&up_bias)?)),
        )?;
        for cols in [hidden, 1000] {
            let y = rng.tensor((tokens, cols), -3.0, 3.0)?;
            let residual = rng.tensor((tokens, cols), -3.0, 3.0)?;
            let params = Tensor::cat(
                &[
                    rng.tensor(cols, -0.5, 0.5)?,
                    rng.tensor(cols, 0.5, 1.5)?,
                    rng.tensor(cols, -0.5, 0.5)?,
                ],
                0,
            )?;
            let op = AddNorm { eps: 1e-12 };
            run(
                format!("bias + residual + norm, {cols}"),
                &|dv| on(&y, dv)?.apply_op3_no_bwd(&on(&residual, dv)?, &on(&params, dv)?, &op),
                &|| {
                    Ok(reference::add_norm(
                        &f64s(&y)?,
                        &f64s(&residual)?,
                        &f64s(&params)?,
                        1e-12,
                    ))
                },
            )?;
        }
        for cls in [false, true] {
            let x = up.narrow(1, 0, hidden)?.contiguous()?;
            run(
                format!("pool, {}", if cls { "first" } else { "mean" }),
                &|dv| on(&x, dv)?.apply_op2_no_bwd(&starts.to_device(dv)?, &Pool { cls }),
                &|| Ok(reference::pool(&f64s(&x)?, hidden, &bounds, cls)),
            )?;
        }
    }
    Ok(out)
}

/// Each op written out plainly in f64, sharing no code with `packed.rs`
/// or the CPU kernels (`kernels.rs`): what the CPU versions are checked
/// against. Texts lie end to end, text `s` on rows `starts[s] ..
/// starts[s + 1]`.
pub mod reference {
    /// Attention of every text and head from `qkv` (tokens × 3·hidden,
    /// query | key | value) plus `bias`: the context (tokens × hidden).
    pub fn attention(qkv: &[f64], bias: &[f64], heads: usize, starts: &[u32]) -> Vec<f64> {
        let width = bias.len();
        let hidden = width / 3;
        let d = hidden / heads;
        let at = |t: usize, c: usize| qkv[t * width + c] + bias[c];
        let mut ctx = vec![0.0; qkv.len() / 3];
        for w in starts.windows(2) {
            let text = w[0] as usize..w[1] as usize;
            for h in 0..heads {
                for r in text.clone() {
                    let scores: Vec<f64> = text
                        .clone()
                        .map(|j| {
                            (0..d)
                                .map(|k| at(r, h * d + k) * at(j, hidden + h * d + k))
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for k in 0..d {
                        let v: f64 = text
                            .clone()
                            .zip(&e)
                            .map(|(j, p)| p * at(j, 2 * hidden + h * d + k))
                            .sum();
                        ctx[r * hidden + h * d + k] = v / sum;
                    }
                }
            }
        }
        ctx
    }

    /// `gelu(y + bias)`, exact: `x/2 · (1 + erf(x/√2))`.
    pub fn bias_gelu(y: &[f64], bias: &[f64]) -> Vec<f64> {
        y.iter()
            .enumerate()
            .map(|(i, v)| {
                let x = v + bias[i % bias.len()];
                0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
            })
            .collect()
    }

    /// `layer_norm(y + bias + residual) · gamma + beta` per row, `params`
    /// = bias | gamma | beta.
    pub fn add_norm(y: &[f64], residual: &[f64], params: &[f64], eps: f64) -> Vec<f64> {
        let cols = params.len() / 3;
        let mut out = Vec::with_capacity(y.len());
        for (y, r) in y.chunks(cols).zip(residual.chunks(cols)) {
            let x: Vec<f64> = (0..cols).map(|c| y[c] + params[c] + r[c]).collect();
            let mean = x.iter().sum::<f64>() / cols as f64;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
            let inv = 1.0 / (var + eps).sqrt();
            out.extend(
                (0..cols).map(|c| (x[c] - mean) * inv * params[cols + c] + params[2 * cols + c]),
            );
        }
        out
    }

    /// One vector per text: the mean of its rows of `x` (tokens × hidden),
    /// or its first row (`cls`); zeros for an empty text.
    pub fn pool(x: &[f64], hidden: usize, starts: &[u32], cls: bool) -> Vec<f64> {
        let mut out = Vec::new();
        for w in starts.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let rows = if cls { a..b.min(a + 1) } else { a..b };
            let n = rows.len();
            for c in 0..hidden {
                let sum: f64 = rows.clone().map(|t| x[t * hidden + c]).sum();
                out.push(if n == 0 { 0.0 } else { sum / n as f64 });
            }
        }
        out
    }
}

/// Tokens per text in [`timings`].
const PASS_LEN: usize = 30;

/// Microseconds per call on `dev`, in f16, of each packed op and, for
/// scale, of the product before attention, over one pass of `texts` texts
/// of [`PASS_LEN`] tokens at MiniLM's sizes (hidden 384, 12 heads).
pub fn timings(
    dev: &CandleDevice,
    texts: usize,
    calls: usize,
) -> candle_core::Result<Vec<(&'static str, f64)>> {
    let (hidden, tokens) = (384, texts * PASS_LEN);
    let mut rng = Rng(7);
    let mut f16 = |shape: (usize, usize), lo: f32, hi: f32| {
        rng.tensor(shape, lo, hi)?
            .to_dtype(DType::F16)?
            .to_device(dev)
    };
    let x = f16((tokens, hidden), -2.0, 2.0)?;
    let w = f16((3 * hidden, hidden), -0.1, 0.1)?;
    let qkv = f16((tokens, 3 * hidden), -2.0, 2.0)?;
    let qkv_bias = f16((1, 3 * hidden), -0.5, 0.5)?.flatten_all()?;
    let up = f16((tokens, 4 * hidden), -4.0, 4.0)?;
    let up_bias = f16((1, 4 * hidden), -0.5, 0.5)?.flatten_all()?;
    let params = f16((1, 3 * hidden), 0.5, 1.5)?.flatten_all()?;
    let starts: Vec<u32> = (0..=texts).map(|s| (s * PASS_LEN) as u32).collect();
    let starts = Tensor::new(starts.as_slice(), dev)?;
    let attention = Attention {
        heads: 12,
        longest: PASS_LEN,
    };
    let norm = AddNorm { eps: 1e-12 };
    type Op<'a> = &'a dyn Fn() -> candle_core::Result<Tensor>;
    let ops: [(&'static str, Op); 5] = [
        ("product before attention (candle, cuBLAS)", &|| {
            x.matmul(&w.t()?)
        }),
        ("attention, head size 32", &|| {
            qkv.apply_op3_no_bwd(&qkv_bias, &starts, &attention)
        }),
        ("bias + gelu", &|| up.apply_op2_no_bwd(&up_bias, &BiasGelu)),
        ("bias + residual + norm", &|| {
            x.apply_op3_no_bwd(&x, &params, &norm)
        }),
        ("pool, mean", &|| {
            x.apply_op2_no_bwd(&starts, &Pool { cls: false })
        }),
    ];
    ops.iter()
        .map(|(op, f)| {
            f()?; // the first call loads the kernel
            dev.synchronize()?;
            let t = std::time::Instant::now();
            for _ in 0..calls {
                f()?;
            }
            dev.synchronize()?;
            Ok((*op, t.elapsed().as_secs_f64() * 1e6 / calls.max(1) as f64))
        })
        .collect()
}

/// `got`'s largest difference from `want`, in units of one unit in the
/// last place of each `want` value in `want`'s type plus 1e-4 × its root
/// mean square (room for the order of f32 sums and for `expf` / `erff`).
pub fn error(want: &Tensor, got: &Tensor) -> candle_core::Result<f32> {
    let dtype = want.dtype();
    let want = want.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let got = got
        .to_device(&CandleDevice::Cpu)?
        .flatten_all()?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    if want.len() != got.len() {
        return Ok(f32::INFINITY);
    }
    let rms = (want.iter().map(|x| x * x).sum::<f32>() / want.len().max(1) as f32).sqrt();
    Ok(want
        .iter()
        .zip(&got)
        .map(|(w, g)| {
            let diff = (w - g).abs();
            if diff.is_nan() {
                return f32::INFINITY;
            }
            diff / (ulp(*w, dtype) + 1e-4 * rms)
        })
        .fold(0.0, f32::max))
}

/// One unit in the last place of `x` in `dtype` (f32 for other types).
fn ulp(x: f32, dtype: DType) -> f32 {
    let (mantissa, min_exp) = match dtype {
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
        _ => (23, -126),
    };
    let exp = if x == 0.0 {
        min_exp
    } else {
        (x.abs().log2().floor() as i32).max(min_exp)
    };
    2f32.powi(exp - mantissa)
}

/// xorshift64: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A CPU f32 tensor of `shape` uniform in `lo .. hi`.
    fn tensor(
        &mut self,
        shape: impl Into<candle_core::Shape>,
        lo: f32,
        hi: f32,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| lo + (hi - lo) * self.next())
            .collect();
        Tensor::from_vec(v, shape, &CandleDevice::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ulp_passes_and_three_do_not() {
        let want = Tensor::new(&[1.0f32, -0.25, 3.0, 0.0], &CandleDevice::Cpu)
            .unwrap()
            .to_dtype(DType::F16)
            .unwrap();
        let ulps = |k: f32| {
            let got: Vec<f32> = [1.0f32, -0.25, 3.0, 0.0]
                .iter()
                .map(|&x| x + k * ulp(x, DType::F16))
                .collect();
            error(
                &want,
                &Tensor::new(got.as_slice(), &CandleDevice::Cpu).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(ulps(0.0), 0.0);
        assert!(ulps(1.0) <= 1.0, "{}", ulps(1.0));
        assert!(ulps(3.0) > 1.0, "{}", ulps(3.0));
        assert_eq!(ulp(1.0, DType::F16), 2f32.powi(-10));
        assert_eq!(ulp(3.0, DType::BF16), 2f32.powi(-6));
        assert_eq!(ulp(0.0, DType::F16), 2f32.powi(-24));
    }

    #[test]
    fn timings_run_every_op() {
        let t = timings(&CandleDevice::Cpu, 2, 1).unwrap();
        assert_eq!(t.len(), 5);
        assert!(t.iter().all(|(_, us)| *us > 0.0), "{t:?}");
    }

    #[test]
    fn the_cpu_ops_agree_with_the_plain_reference_on_every_op_and_type() {
        let r = check(&CandleDevice::Cpu).unwrap();
        // 2 attention + gelu + 2 norms + 2 pools, in 3 types.
        assert_eq!(r.len(), 21);
        assert!(r.iter().all(|a| a.ok()), "{r:?}");
    }

    #[test]
    fn the_reference_catches_a_wrong_op() {
        // A GELU off by 1e-3 of its input, as a wrong erf would be.
        let y = [-3.0, -0.5, 0.0, 0.7, 2.5];
        let want = reference::bias_gelu(&y, &[0.0]);
        let wrong: Vec<f32> = want
            .iter()
            .zip(&y)
            .map(|(w, x)| (w + 1e-3 * x) as f32)
            .collect();
        let t = |v: Vec<f32>| Tensor::new(v.as_slice(), &CandleDevice::Cpu).unwrap();
        let want = t(want.iter().map(|&x| x as f32).collect());
        assert!(error(&want, &t(wrong)).unwrap() > 1.0);
        // And a plain sanity value: gelu(1) = 0.8413447…
        assert!((reference::bias_gelu(&[1.0], &[0.0])[0] - 0.841_344_746).abs() < 1e-8);
    }
}
