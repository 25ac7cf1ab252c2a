// Random numbers of the CUDA backend: Philox4x32-10 (Salmon et al., SC'11; the generator
// behind curand's Philox4_32_10 and Random123), used counter-based. Element i of call number
// `call` is philox(counter = (i_lo, i_hi, call_lo, call_hi), key): any thread computes any
// element, and a stream is resumed from (key, call) alone.
//
// The call number is *call_base + call_offset, read on the device: an eager launch passes a
// word holding 0 and its number as the offset; a launch captured into a CUDA graph passes its
// generator's base word and its rank among the step's calls, and before each replay the host
// writes the generator's count into the base word. So every replay draws new numbers, the
// ones the same step run eagerly would have drawn.
//
// The loader puts `typedef float real;` or `typedef double real;` in front of this text.

struct philox_out { unsigned int v[4]; };

__device__ __forceinline__ philox_out philox4x32_10(unsigned int c0, unsigned int c1,
                                                    unsigned int c2, unsigned int c3,
                                                    unsigned int k0, unsigned int k1)
{
    for (int round = 0; round < 10; ++round) {
        const unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    philox_out r;
    r.v[0] = c0;
    r.v[1] = c1;
    r.v[2] = c2;
    r.v[3] = c3;
    return r;
}

__device__ __forceinline__ philox_out philox_at(long long i, unsigned int k0, unsigned int k1,
                                                unsigned long long call)
{
    const unsigned long long u = (unsigned long long)i;
    return philox4x32_10((unsigned int)u, (unsigned int)(u >> 32), (unsigned int)call,
                         (unsigned int)(call >> 32), k0, k1);
}

// A uniform number in [0, 1) from words a, b: 24 bits for float, 53 bits for double
// (NumPy's construction), so every value is exactly representable.
__device__ __forceinline__ real unit(unsigned int a, unsigned int b)
{
    if (sizeof(real) == 8)
        return (real)((double)((unsigned long long)(a >> 5) * 67108864ull + (b >> 6)) *
                      (1.0 / 9007199254740992.0));
    return (real)((float)(a >> 8) * (1.0f / 16777216.0f));
}

__device__ __forceinline__ float log_(float v) { return logf(v); }
__device__ __forceinline__ double log_(double v) { return log(v); }
__device__ __forceinline__ float sqrt_(float v) { return sqrtf(v); }
__device__ __forceinline__ double sqrt_(double v) { return sqrt(v); }
__device__ __forceinline__ float cos2pi_(float v) { return cosf(6.28318530717958647692f * v); }
__device__ __forceinline__ double cos2pi_(double v) { return cos(6.28318530717958647692 * v); }

extern "C" __global__ void rng_uniform(
    real* __restrict__ out, long long n, unsigned int k0, unsigned int k1,
    const unsigned long long* __restrict__ call_base,
    unsigned long long call_offset, real low, real span)
{
    const unsigned long long call = *call_base + call_offset;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const philox_out r = philox_at(i, k0, k1, call);
        out[i] = low + span * unit(r.v[0], r.v[1]);
    }
}

// Box-Muller with u1 in (0, 1], so the logarithm is finite.
extern "C" __global__ void rng_normal(
    real* __restrict__ out, long long n, unsigned int k0, unsigned int k1,
    const unsigned long long* __restrict__ call_base,
    unsigned long long call_offset, real mean, real std)
{
    const unsigned long long call = *call_base + call_offset;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const philox_out r = philox_at(i, k0, k1, call);
        const real u1 = (real)1 - unit(r.v[0], r.v[1]);
        const real u2 = unit(r.v[2], r.v[3]);
        out[i] = mean + std * (sqrt_((real)-2 * log_(u1)) * cos2pi_(u2));
    }
}

// 64 random bits per element (sort keys for permutation).
extern "C" __global__ void rng_bits64(
    unsigned long long* __restrict__ out, long long n, unsigned int k0, unsigned int k1,
    const unsigned long long* __restrict__ call_base,
    unsigned long long call_offset)
{
    const unsigned long long call = *call_base + call_offset;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const philox_out r = philox_at(i, k0, k1, call);
        out[i] = ((unsigned long long)r.v[0] << 32) | r.v[1];
    }
}

// Integers in [low, low + range): the high 64 bits of bits * range (Lemire's multiply-shift;
// the bias is below range / 2^64).
extern "C" __global__ void rng_integers(
    long long* __restrict__ out, long long n, unsigned int k0, unsigned int k1,
    const unsigned long long* __restrict__ call_base,
    unsigned long long call_offset, long long low, unsigned long long range)
{
    const unsigned long long call = *call_base + call_offset;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const philox_out r = philox_at(i, k0, k1, call);
        const unsigned long long bits = ((unsigned long long)r.v[0] << 32) | r.v[1];
        out[i] = low + (long long)__umul64hi(bits, range);
    }
}
