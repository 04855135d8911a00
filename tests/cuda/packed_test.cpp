// Checks packed.cu's kernels, run on the CPU through emulate.h, against
// straightforward references in double precision: every dtype, both head
// sizes, texts of 1 to 150 tokens (one and several key tiles, more tokens
// than threads), the block sizes the encoder launches. Prints the largest
// error of each case; exits 1 if one is over its bound.
#include <cstdio>
#include <random>

#include "packed.cu"

static int failures = 0;

template <typename T>
std::vector<T> to_dtype(const std::vector<float>& v) {
    std::vector<T> out;
    for (float x : v) out.push_back(from_f32<T>(x));
    return out;
}

template <typename T>
std::vector<float> to_float(const std::vector<T>& v) {
    std::vector<float> out;
    for (T x : v) out.push_back(to_f32(x));
    return out;
}

static void check(const char* what, double err, double bound) {
    const bool ok = err <= bound;
    std::printf("%-40s max error %.3g (bound %.3g) %s\n", what, err, bound, ok ? "ok" : "FAILED");
    if (!ok) ++failures;
}

template <typename T, int D>
void attention_case(const char* name,
                    void (*kernel)(const T*, const T*, const unsigned*, T*, int, float),
                    double bound) {
    const int heads = 3, hidden = heads * D;
    const std::vector<unsigned> lens = {1, 2, 31, 32, 33, 70, 150, 5};
    std::vector<unsigned> starts = {0};
    for (unsigned n : lens) starts.push_back(starts.back() + n);
    const unsigned tokens = starts.back();
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-3.f, 3.f);
    std::vector<float> raw(tokens * 3 * hidden);
    for (float& x : raw) x = u(rng);
    std::vector<float> raw_bias(3 * hidden);
    for (float& x : raw_bias) x = u(rng) / 3;
    const std::vector<T> qkv = to_dtype<T>(raw), bias = to_dtype<T>(raw_bias);
    std::vector<float> in = to_float(qkv);  // what the kernel reads, biased
    const std::vector<float> b = to_float(bias);
    for (size_t i = 0; i < in.size(); ++i) in[i] += b[i % (3 * hidden)];
    const float scale = 1.f / std::sqrt((float)D);
    // Reference.
    std::vector<double> want(tokens * hidden);
    for (size_t s = 0; s < lens.size(); ++s)
        for (int h = 0; h < heads; ++h)
            for (unsigned r = starts[s]; r < starts[s + 1]; ++r) {
                std::vector<double> p;
                double m = -INFINITY, sum = 0;
                for (unsigned j = starts[s]; j < starts[s + 1]; ++j) {
                    double dot = 0;
                    for (int c = 0; c < D; ++c)
                        dot += (double)(in[r * 3 * hidden + h * D + c] * scale) *
                               in[j * 3 * hidden + hidden + h * D + c];
                    p.push_back(dot);
                    m = std::max(m, dot);
                }
                for (double& x : p) sum += (x = std::exp(x - m));
                for (int c = 0; c < D; ++c) {
                    double o = 0;
                    for (unsigned j = starts[s]; j < starts[s + 1]; ++j)
                        o += p[j - starts[s]] * in[j * 3 * hidden + 2 * hidden + h * D + c];
                    want[r * hidden + h * D + c] = o / sum;
                }
            }
    for (unsigned threads : {32u, 64u, 128u}) {
        std::vector<T> ctx(tokens * hidden, from_f32<T>(NAN));
        launch({(unsigned)lens.size(), (unsigned)heads, 1}, {threads, 1, 1},
               [&] { kernel(qkv.data(), bias.data(), starts.data(), ctx.data(), hidden, scale); });
        double err = 0;
        const std::vector<float> got = to_float(ctx);
        for (size_t i = 0; i < got.size(); ++i) {
            const double e = std::fabs(got[i] - want[i]);
            err = std::isnan(e) ? INFINITY : std::max(err, e);
        }
        char what[64];
        std::snprintf(what, sizeof what, "%s, %u threads", name, threads);
        check(what, err, bound);
    }
}

template <typename T>
void pool_case(const char* name, void (*kernel)(const T*, const unsigned*, float*, int, int),
               double bound) {
    const int hidden = 200;
    const std::vector<unsigned> lens = {2, 1, 40, 0, 7};
    std::vector<unsigned> starts = {0};
    for (unsigned n : lens) starts.push_back(starts.back() + n);
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    std::vector<float> raw(starts.back() * hidden);
    for (float& x : raw) x = u(rng);
    const std::vector<T> x = to_dtype<T>(raw);
    const std::vector<float> in = to_float(x);
    for (int cls : {0, 1}) {
        std::vector<float> out(lens.size() * hidden, NAN);
        launch({(unsigned)lens.size(), 1, 1}, {128, 1, 1},
               [&] { kernel(x.data(), starts.data(), out.data(), hidden, cls); });
        double err = 0;
        for (size_t s = 0; s < lens.size(); ++s)
            for (int c = 0; c < hidden; ++c) {
                double want = 0;
                if (lens[s] > 0 && cls) want = in[starts[s] * hidden + c];
                if (lens[s] > 0 && !cls) {
                    for (unsigned t = starts[s]; t < starts[s + 1]; ++t) want += in[t * hidden + c];
                    want /= lens[s];
                }
                const double e = std::fabs(out[s * hidden + c] - want);
                err = std::isnan(e) ? INFINITY : std::max(err, e);
            }
        char what[64];
        std::snprintf(what, sizeof what, "%s, %s", name, cls ? "cls" : "mean");
        check(what, err, bound);
    }
}

template <typename T>
void gelu_case(const char* name, void (*kernel)(const T*, const T*, T*, int, int), double bound) {
    const int rows = 37, cols = 96;
    std::mt19937 rng(13);
    std::uniform_real_distribution<float> u(-4.f, 4.f);
    std::vector<float> raw(rows * cols), raw_bias(cols);
    for (float& x : raw) x = u(rng);
    for (float& x : raw_bias) x = u(rng) / 4;
    const std::vector<T> y = to_dtype<T>(raw), bias = to_dtype<T>(raw_bias);
    const std::vector<float> in = to_float(y), b = to_float(bias);
    std::vector<T> out(rows * cols, from_f32<T>(NAN));
    // Fewer threads than elements: the grid-stride loop covers the rest.
    launch({5, 1, 1}, {64, 1, 1}, [&] { kernel(y.data(), bias.data(), out.data(), rows, cols); });
    double err = 0;
    const std::vector<float> got = to_float(out);
    for (int i = 0; i < rows * cols; ++i) {
        const double v = (double)in[i] + b[i % cols];
        const double want = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
        const double e = std::fabs(got[i] - want) / std::max(1.0, std::fabs(want));
        err = std::isnan(e) ? INFINITY : std::max(err, e);
    }
    check(name, err, bound);
}

template <typename T>
void norm_case(const char* name, void (*kernel)(const T*, const T*, const T*, T*, int, float),
               double bound) {
    const float eps = 1e-12f;
    for (int cols : {384, 1000}) {  // a multiple of the threads and not
        const int rows = 9;
        std::mt19937 rng(17);
        std::uniform_real_distribution<float> u(-3.f, 3.f);
        std::vector<float> raw_y(rows * cols), raw_r(rows * cols), raw_p(3 * cols);
        for (float& x : raw_y) x = u(rng);
        for (float& x : raw_r) x = u(rng) + 2;  // an offset the mean removes
        for (float& x : raw_p) x = u(rng) / 3;
        const std::vector<T> y = to_dtype<T>(raw_y), r = to_dtype<T>(raw_r),
                             p = to_dtype<T>(raw_p);
        const std::vector<float> fy = to_float(y), fr = to_float(r), fp = to_float(p);
        std::vector<T> out(rows * cols, from_f32<T>(NAN));
        launch({(unsigned)rows, 1, 1}, {NORM_THREADS, 1, 1},
               [&] { kernel(y.data(), r.data(), p.data(), out.data(), cols, eps); });
        const std::vector<float> got = to_float(out);
        double err = 0;
        for (int i = 0; i < rows; ++i) {
            std::vector<double> v(cols);
            double mean = 0, var = 0;
            for (int c = 0; c < cols; ++c) mean += v[c] = (double)fy[i * cols + c] + fp[c] + fr[i * cols + c];
            mean /= cols;
            for (double x : v) var += (x - mean) * (x - mean);
            var /= cols;
            for (int c = 0; c < cols; ++c) {
                const double want = (v[c] - mean) / std::sqrt(var + eps) * fp[cols + c] + fp[2 * cols + c];
                const double e = std::fabs(got[i * cols + c] - want);
                err = std::isnan(e) ? INFINITY : std::max(err, e);
            }
        }
        char what[64];
        std::snprintf(what, sizeof what, "%s, %d columns", name, cols);
        check(what, err, bound);
    }
}

int main() {
    // Bounds: half a unit in the last place of the output's type between 2
    // and 4 (outputs are averages of values within ±3), plus f32 arithmetic.
    attention_case<float, 32>("attention f32, head size 32", attention_f32_d32, 1e-5);
    attention_case<__half, 32>("attention f16, head size 32", attention_f16_d32, 1.01e-3);
    attention_case<__nv_bfloat16, 32>("attention bf16, head size 32", attention_bf16_d32, 7.9e-3);
    attention_case<float, 64>("attention f32, head size 64", attention_f32_d64, 1e-5);
    attention_case<__half, 64>("attention f16, head size 64", attention_f16_d64, 1.01e-3);
    attention_case<__nv_bfloat16, 64>("attention bf16, head size 64", attention_bf16_d64, 7.9e-3);
    // Relative to the value (at least 1): the output type's half unit.
    gelu_case<float>("bias + GELU f32", bias_gelu_f32, 1e-6);
    gelu_case<__half>("bias + GELU f16", bias_gelu_f16, 4.9e-4);
    gelu_case<__nv_bfloat16>("bias + GELU bf16", bias_gelu_bf16, 3.9e-3);
    // Outputs within ±4: half a unit in the last place between 2 and 4.
    norm_case<float>("bias + residual + norm f32", bias_residual_norm_f32, 1e-5);
    norm_case<__half>("bias + residual + norm f16", bias_residual_norm_f16, 1.01e-3);
    norm_case<__nv_bfloat16>("bias + residual + norm bf16", bias_residual_norm_bf16, 7.9e-3);
    pool_case<float>("pool f32", pool_f32, 1e-5);
    pool_case<__half>("pool f16", pool_f16, 1e-5);
    pool_case<__nv_bfloat16>("pool bf16", pool_bf16, 1e-5);
    std::printf("%s\n", failures ? "FAILED" : "all kernels agree with the references");
    return failures ? 1 : 0;
}
