// Training batches of the CUDA backend: one kernel makes the float32 batch of the DataLoader
// (dlx/data/loader.py) from the uint8 data set kept on the GPU. It gathers the batch's
// images, cuts the random crop out of the zero-padded image, mirrors the flipped images,
// divides by 255 and optionally normalises per channel: one launch where the xp code takes
// about fifteen. The random choices (crop offsets, flips) are drawn by the loader, as the
// transforms draw them, and arrive as arrays: this kernel draws no random number.
//
// The values are bit for bit those of the xp code: the uint8 value converted to float
// (exact), `x /= 255.0` on float32 (one IEEE division), then Normalize's `(x - mean) / std`
// in float32 (a subtraction and a division, each rounded once). The *_rn intrinsics pin
// round-to-nearest and keep the compiler from rewriting the division or contracting.
//
// The loader puts `typedef float real;` or `typedef double real;` in front of this text;
// the batch is float32 either way, so this file does not use `real`.

// out (B, C, SH, SW), one thread per element, grid-stride. Image b is data[idx[b]] of
// data (N, C, H, W); output pixel (y, x) reads padded pixel (oy[b] + y, ox[b] + x'), where
// x' = SW - 1 - x if flip[b] else x, i.e. image pixel (oy[b] + y - top, ox[b] + x' - left),
// zero outside the image. crop == 0: oy = ox = 0 and oy/ox are not read; flips == 0: no
// flip and flip is not read; norm_channels: 0 (no Normalize, mean/sdev not read), 1 (one
// value for every channel) or C.
extern "C" __global__ void make_batch(
    const unsigned char* __restrict__ data, const long long* __restrict__ idx,
    const long long* __restrict__ oy, const long long* __restrict__ ox,
    const unsigned char* __restrict__ flip, const float* __restrict__ mean,
    const float* __restrict__ sdev, float* __restrict__ out, long long total,
    int C, int H, int W, int SH, int SW, int top, int left, int crop, int flips, int norm_channels)
{
    const int SHW = SH * SW;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += stride) {
        const long long plane = i / SHW;  // b * C + c
        const int q = (int)(i - plane * SHW);
        const int y = q / SW, x = q - (q / SW) * SW;
        const long long b = plane / C;
        const int c = (int)(plane - b * C);
        const int col = (flips && flip[b]) ? SW - 1 - x : x;
        const long long h = (crop ? oy[b] : 0) + y - top;
        const long long w = (crop ? ox[b] : 0) + col - left;
        float v = 0.0f;  // the zero padding
        if (h >= 0 && h < H && w >= 0 && w < W)
            v = (float)data[((idx[b] * C + c) * H + h) * W + w];
        v = __fdiv_rn(v, 255.0f);
        if (norm_channels) {
            const int k = norm_channels == 1 ? 0 : c;
            v = __fdiv_rn(__fsub_rn(v, mean[k]), sdev[k]);
        }
        out[i] = v;
    }
}
