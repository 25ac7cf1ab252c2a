// Convolution kernels of the CUDA backend: NCHW cross-correlation with PyTorch's numerics,
// forward (bias fused), backward-data (a gather, no atomics), backward-weight and the bias
// gradient (two-stage reductions in a fixed order, so every result is bit-reproducible).
//
// The loader (kernels.py) puts `typedef float real;` or `typedef double real;` in front of
// this text: one source, a float32 and a float64 module with the same extern "C" names.
// Letters: N, C, H, W input; OC, KH, KW weight; OH, OW output; sh/sw stride, ph/pw padding,
// dh/dw dilation. Sizes that can pass 2^31 (whole tensors) are indexed with long long.

#define GROUP 4  // channels per thread: output channels (forward), input channels (backward-data)

// GROUP weights read from shared memory with one vector load (ld.shared.v4.f32 for float).
struct __align__(4 * sizeof(real)) real4 { real v[GROUP]; };

__device__ __forceinline__ real warp_sum(real v)
{
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;  // the total is in lane 0
}

// Sum over the block, valid in thread 0. Every thread of the block must call it.
__device__ __forceinline__ real block_sum(real v)
{
    __shared__ real warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? warp_sums[lane] : (real)0;
        v = warp_sum(v);
    }
    return v;
}

// ---------------------------------------------------------------------------------------
// Forward. One thread per output position (n, oh, ow) computes GROUP output channels
// oc0 = blockIdx.y * GROUP ...: each input value it loads feeds GROUP multiply-adds. The
// group's weights live in shared memory as ws[(c * KK + t) * GROUP + j] (t = kh * KW + kw),
// read as broadcasts. CC input channels fit the launcher's shared-memory budget: when
// CC >= C they are staged once per block, else per tile in chunks of CC channels.
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ void stage_fwd(real* ws, const real* __restrict__ w, int oc0, int OC,
                                          int C, int KK, int c0, int cn)
{
    const int per_oc = cn * KK;
    for (int i = threadIdx.x; i < GROUP * per_oc; i += blockDim.x) {
        const int j = i / per_oc, r = i - j * per_oc;  // r = c * KK + t, contiguous in w
        const int oc = oc0 + j;
        ws[r * GROUP + j] = oc < OC ? w[((long long)oc * C + c0) * KK + r] : (real)0;
    }
}

extern "C" __global__ void conv2d_fwd(
    const real* __restrict__ x, const real* __restrict__ w, const real* __restrict__ b,
    real* __restrict__ y,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int CC, int has_bias)
{
    extern __shared__ real4 ws4[];  // real4: aligned for the vector loads
    real* ws = reinterpret_cast<real*>(ws4);
    const int KK = KH * KW, OHW = OH * OW;
    const long long HW = (long long)H * W;
    const long long P = (long long)N * OHW;
    const int oc0 = blockIdx.y * GROUP;
    const bool once = CC >= C;
    if (once) {
        stage_fwd(ws, w, oc0, OC, C, KK, 0, C);
        __syncthreads();
    }
    // The tile loop is uniform over the block, so the __syncthreads inside it are safe.
    for (long long tile = blockIdx.x; tile * blockDim.x < P; tile += gridDim.x) {
        const long long p = tile * blockDim.x + threadIdx.x;
        const bool active = p < P;
        int n = 0, q = 0, ih0 = 0, iw0 = 0;
        if (active) {
            n = (int)(p / OHW);
            q = (int)(p - (long long)n * OHW);
            const int oh = q / OW, ow = q - (q / OW) * OW;
            ih0 = oh * sh - ph;
            iw0 = ow * sw - pw;
        }
        real acc[GROUP];
#pragma unroll
        for (int j = 0; j < GROUP; ++j) acc[j] = (real)0;
        for (int c0 = 0; c0 < C; c0 += CC) {
            const int cn = min(CC, C - c0);
            if (!once) {
                __syncthreads();  // everyone is done with the previous chunk
                stage_fwd(ws, w, oc0, OC, C, KK, c0, cn);
                __syncthreads();
            }
            if (!active) continue;
            const real* xn = x + ((long long)n * C + c0) * HW;
            for (int c = 0; c < cn; ++c) {
                const real* xc = xn + c * HW;
                const real* wc = ws + c * KK * GROUP;
                for (int kh = 0; kh < KH; ++kh) {
                    const int ih = ih0 + kh * dh;
                    if ((unsigned)ih >= (unsigned)H) continue;
                    const real* xr = xc + (long long)ih * W;
                    const real* wr = wc + kh * KW * GROUP;
                    for (int kw = 0; kw < KW; ++kw) {
                        const int iw = iw0 + kw * dw;
                        if ((unsigned)iw >= (unsigned)W) continue;
                        const real v = xr[iw];
                        const real4 wv = *reinterpret_cast<const real4*>(wr + kw * GROUP);
#pragma unroll
                        for (int j = 0; j < GROUP; ++j) acc[j] += v * wv.v[j];
                    }
                }
            }
        }
        if (active) {
            real* yq = y + ((long long)n * OC + oc0) * OHW + q;
#pragma unroll
            for (int j = 0; j < GROUP; ++j)
                if (oc0 + j < OC) yq[(long long)j * OHW] = acc[j] + (has_bias ? b[oc0 + j] : (real)0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward-data: dx = conv_transpose(dy, w) as a gather. One thread per input position
// (n, ih, iw) computes GROUP input channels c0 = blockIdx.y * GROUP ...: it visits the
// (kh, kw) taps whose output position (oh, ow) exists and sums dy * w over the output
// channels. Weights in shared memory as ws[(o * KK + t) * GROUP + j], staged once when
// CO >= OC, else in chunks of CO output channels.
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ void stage_bwd_data(real* ws, const real* __restrict__ w, int c0, int C,
                                               int KK, int o0, int on)
{
    const int per_o = GROUP * KK;
    for (int i = threadIdx.x; i < on * per_o; i += blockDim.x) {
        const int o = i / per_o, r = i - o * per_o;  // r = j * KK + t, contiguous in w
        const int j = r / KK, t = r - j * KK;
        ws[(o * KK + t) * GROUP + j] =
            c0 + j < C ? w[((long long)(o0 + o) * C + c0) * KK + r] : (real)0;
    }
}

extern "C" __global__ void conv2d_bwd_data(
    const real* __restrict__ dy, const real* __restrict__ w, real* __restrict__ dx,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int CO)
{
    extern __shared__ real4 ws4[];
    real* ws = reinterpret_cast<real*>(ws4);
    const int KK = KH * KW, OHW = OH * OW;
    const long long HW = (long long)H * W;
    const long long P = (long long)N * HW;
    const int c0 = blockIdx.y * GROUP;
    const bool once = CO >= OC;
    if (once) {
        stage_bwd_data(ws, w, c0, C, KK, 0, OC);
        __syncthreads();
    }
    for (long long tile = blockIdx.x; tile * blockDim.x < P; tile += gridDim.x) {
        const long long p = tile * blockDim.x + threadIdx.x;
        const bool active = p < P;
        int n = 0, ih = 0, iw = 0;
        long long q = 0;
        if (active) {
            n = (int)(p / HW);
            q = p - (long long)n * HW;
            ih = (int)(q / W);
            iw = (int)(q - (long long)ih * W);
        }
        real acc[GROUP];
#pragma unroll
        for (int j = 0; j < GROUP; ++j) acc[j] = (real)0;
        for (int o0 = 0; o0 < OC; o0 += CO) {
            const int on = min(CO, OC - o0);
            if (!once) {
                __syncthreads();
                stage_bwd_data(ws, w, c0, C, KK, o0, on);
                __syncthreads();
            }
            if (!active) continue;
            const real* dyn = dy + ((long long)n * OC + o0) * OHW;
            for (int kh = 0; kh < KH; ++kh) {
                const int th = ih + ph - kh * dh;  // = oh * sh for the output row that sees (ih, kh)
                if (th < 0) break;                 // th only decreases with kh
                const int oh = th / sh;
                if (oh * sh != th || oh >= OH) continue;
                for (int kw = 0; kw < KW; ++kw) {
                    const int tw = iw + pw - kw * dw;
                    if (tw < 0) break;
                    const int ow = tw / sw;
                    if (ow * sw != tw || ow >= OW) continue;
                    const real* g = dyn + oh * OW + ow;
                    const real* wt = ws + (kh * KW + kw) * GROUP;
                    for (int o = 0; o < on; ++o) {
                        const real v = g[(long long)o * OHW];
                        const real4 wv = *reinterpret_cast<const real4*>(wt + o * KK * GROUP);
#pragma unroll
                        for (int j = 0; j < GROUP; ++j) acc[j] += v * wv.v[j];
                    }
                }
            }
        }
        if (active) {
            real* xq = dx + ((long long)n * C + c0) * HW + q;
#pragma unroll
            for (int j = 0; j < GROUP; ++j)
                if (c0 + j < C) xq[(long long)j * HW] = acc[j];
        }
    }
}

// ---------------------------------------------------------------------------------------
// Backward-weight, stage 1: dw[oc, c, kh, kw] = sum over (n, oh, ow) of dy * x. A block owns
// OB output channels oc0 = g * OB ... and one input channel c (blockIdx.x = g * C + c), and
// the samples [n0, n0 + NB) (blockIdx.y). Its threads stride over those (n, oh, ow); each
// keeps TB taps x OB channels of partial sums in registers, so one x load feeds OB
// products and one position's index arithmetic feeds TB * OB. Kernels with more than TB
// taps go in passes of TB. Per pass: warp shuffles, per-warp sums in shared memory, and
// one thread per weight adds the warps in order and writes part[blockIdx.y, oc, c, t].
// With one split (gridDim.y == 1) part is dw itself, else reduce_splits adds the splits.
// ---------------------------------------------------------------------------------------

template <int TB, int OB>
__device__ __forceinline__ void bwd_weight(
    const real* __restrict__ x, const real* __restrict__ dy, real* __restrict__ part,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int NB)
{
    __shared__ real warp_part[32][TB * OB];
    const int g = blockIdx.x / C, c = blockIdx.x - (blockIdx.x / C) * C;
    const int oc0 = g * OB;
    const int n0 = blockIdx.y * NB;
    const int OHW = OH * OW, KK = KH * KW;
    const int U = min(NB, N - n0) * OHW;  // the launcher keeps NB * OH * OW below 2^31
    const long long HW = (long long)H * W;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const real* xc = x + ((long long)n0 * C + c) * HW;
    const real* dyc = dy + ((long long)n0 * OC + oc0) * OHW;
    for (int t0 = 0; t0 < KK; t0 += TB) {
        // Offsets of this pass's taps; a tap past KK gets a row offset no position reaches.
        int offh[TB], offw[TB];
#pragma unroll
        for (int j = 0; j < TB; ++j) {
            const int t = t0 + j, kh = t / KW;
            offh[j] = t < KK ? kh * dh - ph : -(1 << 30);
            offw[j] = (t - kh * KW) * dw - pw;
        }
        real acc[OB][TB];
#pragma unroll
        for (int o = 0; o < OB; ++o)
#pragma unroll
            for (int j = 0; j < TB; ++j) acc[o][j] = (real)0;
        for (int u = threadIdx.x; u < U; u += blockDim.x) {
            const int nl = u / OHW, q = u - nl * OHW;
            const int oh = q / OW, ow = q - (q / OW) * OW;
            const real* xs = xc + (long long)nl * C * HW;
            const real* gs = dyc + (long long)nl * OC * OHW + q;
            real gv[OB];
#pragma unroll
            for (int o = 0; o < OB; ++o) gv[o] = oc0 + o < OC ? gs[(long long)o * OHW] : (real)0;
            const int ih0 = oh * sh, iw0 = ow * sw;
#pragma unroll
            for (int j = 0; j < TB; ++j) {
                const int ih = ih0 + offh[j], iw = iw0 + offw[j];
                if ((unsigned)ih < (unsigned)H && (unsigned)iw < (unsigned)W) {
                    const real v = xs[ih * W + iw];
#pragma unroll
                    for (int o = 0; o < OB; ++o) acc[o][j] += gv[o] * v;
                }
            }
        }
#pragma unroll
        for (int o = 0; o < OB; ++o)
#pragma unroll
            for (int j = 0; j < TB; ++j) {
                const real v = warp_sum(acc[o][j]);
                if (lane == 0) warp_part[warp][o * TB + j] = v;
            }
        __syncthreads();
        for (int i = threadIdx.x; i < OB * TB; i += blockDim.x) {
            const int o = i / TB, t = t0 + i - (i / TB) * TB;
            if (oc0 + o < OC && t < KK) {
                real s = (real)0;
                for (int w = 0; w < nwarps; ++w) s += warp_part[w][i];
                part[(((long long)blockIdx.y * OC + oc0 + o) * C + c) * KK + t] = s;
            }
        }
        __syncthreads();  // warp_part is reused by the next pass
    }
}

// The variants: conv2d_bwd_weight_TB with (TB taps per pass, OB output channels per block)
// chosen so that about 100 registers per thread hold the partial sums.

extern "C" __global__ void conv2d_bwd_weight_1(
    const real* __restrict__ x, const real* __restrict__ dy, real* __restrict__ part,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int NB)
{
    bwd_weight<1, 4>(x, dy, part, N, C, H, W, OC, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, NB);
}

extern "C" __global__ void conv2d_bwd_weight_4(
    const real* __restrict__ x, const real* __restrict__ dy, real* __restrict__ part,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int NB)
{
    bwd_weight<4, 4>(x, dy, part, N, C, H, W, OC, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, NB);
}

extern "C" __global__ void conv2d_bwd_weight_9(
    const real* __restrict__ x, const real* __restrict__ dy, real* __restrict__ part,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int NB)
{
    bwd_weight<9, 4>(x, dy, part, N, C, H, W, OC, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, NB);
}

extern "C" __global__ void conv2d_bwd_weight_16(
    const real* __restrict__ x, const real* __restrict__ dy, real* __restrict__ part,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int NB)
{
    bwd_weight<16, 2>(x, dy, part, N, C, H, W, OC, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, NB);
}

extern "C" __global__ void conv2d_bwd_weight_25(
    const real* __restrict__ x, const real* __restrict__ dy, real* __restrict__ part,
    int N, int C, int H, int W, int OC, int KH, int KW, int OH, int OW,
    int sh, int sw, int ph, int pw, int dh, int dw, int NB)
{
    bwd_weight<25, 1>(x, dy, part, N, C, H, W, OC, KH, KW, OH, OW, sh, sw, ph, pw, dh, dw, NB);
}

// ---------------------------------------------------------------------------------------
// Bias gradient, stage 1: db[oc] = sum over (n, oh, ow) of dy. A block owns channel
// oc = blockIdx.x and the samples [n0, n0 + NB); its threads stride over them and a block
// reduction (warp shuffles, then one warp) writes part[blockIdx.y, oc].
// ---------------------------------------------------------------------------------------

extern "C" __global__ void conv2d_bwd_bias(
    const real* __restrict__ dy, real* __restrict__ part, int N, int OC, int OHW, int NB)
{
    const int oc = blockIdx.x;
    const int n0 = blockIdx.y * NB;
    const int U = min(NB, N - n0) * OHW;
    real acc = (real)0;
    for (int u = threadIdx.x; u < U; u += blockDim.x) {
        const int nl = u / OHW, q = u - nl * OHW;
        acc += dy[((long long)(n0 + nl) * OC + oc) * OHW + q];
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) part[(long long)blockIdx.y * OC + oc] = acc;
}

// ---------------------------------------------------------------------------------------
// Stage 2 of both reductions: out[i] = sum over s of part[s, i], one thread per element,
// the splits added in order 0, 1, ... (deterministic).
// ---------------------------------------------------------------------------------------

extern "C" __global__ void reduce_splits(
    const real* __restrict__ part, real* __restrict__ out, int S, long long M)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < M;
         i += (long long)gridDim.x * blockDim.x) {
        real s = (real)0;
        for (int k = 0; k < S; ++k) s += part[k * M + i];
        out[i] = s;
    }
}
