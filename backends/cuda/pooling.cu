// Pooling kernels of the CUDA backend (NCHW, floor mode, PyTorch's numerics): max-pool
// forward writing the argmax and its backward, average-pool forward and backward. Every
// kernel runs one thread per output element (forward) or per input element (backward, a
// gather over the windows that contain it: no atomics, a fixed order, bit-reproducible).
//
// The loader puts `typedef float real;` or `typedef double real;` in front of this text.
// Letters: H, W input plane; OH, OW output plane; KH, KW window; sh/sw stride, ph/pw
// padding. `total` counts elements of whole tensors and is a long long.

// Output rows [*lo, *hi) whose window (rows o * s - p ... o * s - p + k - 1) holds row i.
__device__ __forceinline__ void windows_holding(int i, int k, int s, int p, int out, int* lo, int* hi)
{
    *lo = i + p < k ? 0 : (i + p - k) / s + 1;
    *hi = min((i + p) / s + 1, out);
}

// PyTorch's divisor for window (oh, ow): with count_include_pad the window clipped to the
// padded input, else only the input elements it covers.
__device__ __forceinline__ int avg_divisor(int oh, int ow, int H, int W, int KH, int KW,
                                           int sh, int sw, int ph, int pw, int count_include_pad)
{
    int hs = oh * sh - ph, ws = ow * sw - pw;
    int he = min(hs + KH, H + ph), we = min(ws + KW, W + pw);
    if (count_include_pad) return (he - hs) * (we - ws);
    hs = max(hs, 0);
    ws = max(ws, 0);
    he = min(he, H);
    we = min(we, W);
    return (he - hs) * (we - ws);
}

// y[i] = max of the window; argmax[i] = h * W + w of the first maximum in row-major window
// order. A NaN counts as a maximum and every NaN takes over (the last one wins), as in
// PyTorch and the reference backend. The launcher guarantees padding <= kernel / 2, so
// every window holds at least one input element.
extern "C" __global__ void max_pool2d_fwd(
    const real* __restrict__ x, real* __restrict__ y, int* __restrict__ argmax,
    long long total, int H, int W, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw)
{
    const int OHW = OH * OW;
    const long long HW = (long long)H * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long plane = i / OHW;
        const int q = (int)(i - plane * OHW);
        const int oh = q / OW, ow = q - (q / OW) * OW;
        const int hs = oh * sh - ph, ws = ow * sw - pw;
        const int h0 = max(hs, 0), h1 = min(hs + KH, H);
        const int w0 = max(ws, 0), w1 = min(ws + KW, W);
        const real* xp = x + plane * HW;
        int best_k = h0 * W + w0;
        real best = xp[best_k];
        for (int h = h0; h < h1; ++h) {
            for (int w = w0; w < w1; ++w) {
                const int k = h * W + w;
                const real v = xp[k];
                if (v > best || v != v) {
                    best = v;
                    best_k = k;
                }
            }
        }
        y[i] = best;
        argmax[i] = best_k;
    }
}

// dx[i] = sum of dy over the windows that hold input element i and chose it as their maximum.
extern "C" __global__ void max_pool2d_bwd(
    const real* __restrict__ dy, const int* __restrict__ argmax, real* __restrict__ dx,
    long long total, int H, int W, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw)
{
    const int HW = H * W;
    const long long OHW = (long long)OH * OW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long plane = i / HW;
        const int k = (int)(i - plane * HW);
        const int h = k / W, w = k - (k / W) * W;
        int oh0, oh1, ow0, ow1;
        windows_holding(h, KH, sh, ph, OH, &oh0, &oh1);
        windows_holding(w, KW, sw, pw, OW, &ow0, &ow1);
        const real* g = dy + plane * OHW;
        const int* a = argmax + plane * OHW;
        real s = (real)0;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow)
                if (a[oh * OW + ow] == k) s += g[oh * OW + ow];
        dx[i] = s;
    }
}

// y[i] = sum of the window / PyTorch's divisor (see avg_divisor).
extern "C" __global__ void avg_pool2d_fwd(
    const real* __restrict__ x, real* __restrict__ y,
    long long total, int H, int W, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw,
    int count_include_pad)
{
    const int OHW = OH * OW;
    const long long HW = (long long)H * W;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long plane = i / OHW;
        const int q = (int)(i - plane * OHW);
        const int oh = q / OW, ow = q - (q / OW) * OW;
        const int hs = oh * sh - ph, ws = ow * sw - pw;
        const int h0 = max(hs, 0), h1 = min(hs + KH, H);
        const int w0 = max(ws, 0), w1 = min(ws + KW, W);
        const real* xp = x + plane * HW;
        real s = (real)0;
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) s += xp[h * W + w];
        y[i] = s / (real)avg_divisor(oh, ow, H, W, KH, KW, sh, sw, ph, pw, count_include_pad);
    }
}

// dx[i] = sum over the windows holding input element i of dy / that window's divisor.
extern "C" __global__ void avg_pool2d_bwd(
    const real* __restrict__ dy, real* __restrict__ dx,
    long long total, int H, int W, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw,
    int count_include_pad)
{
    const int HW = H * W;
    const long long OHW = (long long)OH * OW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long plane = i / HW;
        const int k = (int)(i - plane * HW);
        const int h = k / W, w = k - (k / W) * W;
        int oh0, oh1, ow0, ow1;
        windows_holding(h, KH, sh, ph, OH, &oh0, &oh1);
        windows_holding(w, KW, sw, pw, OW, &ow0, &ow1);
        const real* g = dy + plane * OHW;
        real s = (real)0;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow)
                s += g[oh * OW + ow] /
                     (real)avg_divisor(oh, ow, H, W, KH, KW, sh, sw, ph, pw, count_include_pad);
        dx[i] = s;
    }
}
