//! Elementwise and per-row kernels of the CPU encoder ([`super::cpu_bert`]),
//! in f32, in place: GELU with exact erf, residual add + layer norm, and
//! softmax. erf and exp are branch-free polynomials the compiler turns into
//! SIMD code; on x86-64 the kernels run in an AVX2+FMA build of the same
//! code when the CPU has it (an AVX-512 build measured slower here). The
//! parallel ones run on the current rayon pool.

use rayon::prelude::*;

/// erf(x), within 2e-7 of libm's: the rational approximation used by
/// Eigen and XLA for f32 (inputs clamped to ±4, where erf is ±1 in f32).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = x2.mul_add(p, -2.101_024e-6);
    p = x2.mul_add(p, -5.692_506_4e-5);
    p = x2.mul_add(p, -7.349_906_3e-4);
    p = x2.mul_add(p, -2.954_600_1e-3);
    p = x2.mul_add(p, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = x2.mul_add(q, -1.682_827e-3);
    q = x2.mul_add(q, -7.373_329_2e-3);
    q = x2.mul_add(q, -1.426_474e-2);
    x * p / q
}

/// e^x for x ≤ 0 (softmax after subtracting the maximum), within 2e-7
/// relative: x = n·ln2 + r, |r| ≤ ln2/2, a degree-6 polynomial for e^r and
/// 2^n put into the exponent bits.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 0.0);
    // n + ROUND holds the integer n in its low mantissa bits: read 2^n's
    // exponent from there (a float-to-int cast would not vectorise).
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = r.mul_add(1.0 / 720.0, 1.0 / 120.0);
    p = r.mul_add(p, 1.0 / 24.0);
    p = r.mul_add(p, 1.0 / 6.0);
    p = r.mul_add(p, 0.5);
    p = r.mul_add(p, 1.0);
    p = r.mul_add(p, 1.0);
    let exponent = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) as u32;
    p * f32::from_bits(exponent << 23)
}

/// A reduction of `v` in 16 interleaved lanes (which the compiler keeps in
/// vector registers; a single running value would keep the loop scalar),
/// then across the lanes and the tail: `step(acc, x)` per value,
/// `merge(a, b)` to combine.
#[inline(always)]
fn lanes(
    v: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32,
    merge: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = step(*a, x);
        }
    }
    let mut r = tail.iter().fold(init, |a, &x| step(a, x));
    for a in acc {
        r = merge(r, a);
    }
    r
}

/// Runs `$body` in an AVX2+FMA copy when the CPU has those, else as built.
macro_rules! simd_dispatch {
    ($name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) { body($($arg),*) }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU was just checked to support AVX2 and FMA.
                    return unsafe { fast($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

simd_dispatch!(gelu_row(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
    }
});

simd_dispatch!(add_norm_row(y: &mut [f32], residual: &[f32], norm: &Norm) {
    for (y, &r) in y.iter_mut().zip(residual) {
        *y += r;
    }
    normalize(y, norm);
});

simd_dispatch!(norm_row(y: &mut [f32], norm: &Norm) {
    normalize(y, norm);
});

#[inline(always)]
fn normalize(y: &mut [f32], norm: &Norm) {
    let n = y.len() as f32;
    let mean = lanes(y, 0.0, |a, v| a + v, |a, b| a + b) / n;
    let var = lanes(y, 0.0, |a, v| a + (v - mean) * (v - mean), |a, b| a + b) / n;
    let inv = 1.0 / (var + norm.eps).sqrt();
    for ((y, &g), &b) in y.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
        *y = (*y - mean) * inv * g + b;
    }
}

simd_dispatch!(softmax_row(s: &mut [f32]) {
    let max = lanes(s, f32::NEG_INFINITY, f32::max, f32::max);
    for v in s.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let inv = 1.0 / lanes(s, 0.0, |a, v| a + v, |a, b| a + b);
    for v in s.iter_mut() {
        *v *= inv;
    }
});

/// A layer norm's parameters.
pub struct Norm {
    /// Scale.
    pub gamma: Vec<f32>,
    /// Shift.
    pub beta: Vec<f32>,
    /// Epsilon.
    pub eps: f32,
}

/// Rows of `width` values handed to one task of the parallel kernels.
const TASK_ROWS: usize = 32;

/// GELU with exact erf (BERT's `gelu`, PyTorch's default), in place.
pub fn gelu(v: &mut [f32], width: usize) {
    v.par_chunks_mut(width * TASK_ROWS).for_each(gelu_row);
}

/// `y = LayerNorm(y + residual)` per row of `norm`'s width.
pub fn add_norm(y: &mut [f32], residual: &[f32], norm: &Norm) {
    let n = norm.gamma.len();
    y.par_chunks_mut(n)
        .zip(residual.par_chunks(n))
        .with_min_len(TASK_ROWS)
        .for_each(|(y, r)| add_norm_row(y, r, norm));
}

/// `y = LayerNorm(y)` per row.
pub fn layer_norm(y: &mut [f32], norm: &Norm) {
    y.par_chunks_mut(norm.gamma.len())
        .with_min_len(TASK_ROWS)
        .for_each(|y| norm_row(y, norm));
}

/// Softmax of each row of `width` values, in place.
pub fn softmax(s: &mut [f32], width: usize) {
    for row in s.chunks_mut(width) {
        softmax_row(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_exp_match_libm() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -100_000..=100_000 {
            let x = i as f32 * 6e-5; // −6 … 6
            let want = libm_erf(x as f64);
            worst_erf = worst_erf.max((erf(x) as f64 - want).abs());
            let y = i.min(0) as f32 * 8.7e-4; // −87 … 0
            let want = (y as f64).exp();
            worst_exp = worst_exp.max(((exp_neg(y) as f64 - want) / want).abs());
        }
        assert!(worst_erf < 5e-7, "erf error {worst_erf}");
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
    }

    /// erf in f64 by its Taylor series (|x| ≤ 3) or continued fraction.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() > 3.0 {
            // erfc(x) ≈ e^{-x²}/(x√π) · (1 − 1/(2x²) + 3/(4x⁴)), ample here.
            let a = x.abs();
            let c = (-a * a).exp() / (a * std::f64::consts::PI.sqrt())
                * (1.0 - 1.0 / (2.0 * a * a) + 3.0 / (4.0 * a.powi(4)));
            return x.signum() * (1.0 - c);
        }
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
