// Fused optimizer updates of the CUDA backend: one launch per parameter instead of one
// per array operation (Adam's update is a dozen elementwise operations, each a kernel
// launch of its own when written with xp, and for LeNet-5's small tensors the launches,
// not the arithmetic, are what costs).
//
// The result is bit-for-bit that of the xp code in dlx/optim/adam.py on the same GPU:
// the same operations in the same order on `real` values, each rounded once. The *_rn
// intrinsics stop the compiler from contracting a multiply and an add into one fused
// multiply-add (which rounds once instead of twice) and pin division and square root to
// IEEE round-to-nearest, as CuPy's own elementwise kernels compute them.
//
// The loader puts `typedef float real;` or `typedef double real;` in front of this text.

__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }

// Adam / AdamW, in place on p, exp_avg (m) and exp_avg_sq (v); n elements, grid-stride.
// decay_mode 0: no weight decay; 1: g += weight_decay * p (Adam); 2: p *= decay (AdamW,
// decay = 1 - lr * weight_decay). The scalars come from the launcher, computed in Python
// exactly as adam.py computes them, then rounded to `real` as CuPy rounds a Python scalar.
extern "C" __global__ void adam_step(
    real* __restrict__ p, const real* __restrict__ g, real* __restrict__ m, real* __restrict__ v,
    long long n, int decay_mode, real weight_decay, real decay, real one_minus_beta1, real beta2,
    real one_minus_beta2, real bias_correction2_sqrt, real eps, real step_size)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        real pi = p[i], gi = g[i], mi = m[i], vi = v[i];
        if (decay_mode == 2) pi = mul_rn(pi, decay);
        else if (decay_mode == 1) gi = add_rn(gi, mul_rn(weight_decay, pi));
        mi = add_rn(mi, mul_rn(sub_rn(gi, mi), one_minus_beta1));   // m = lerp(m, g, 1 - beta1)
        vi = add_rn(mul_rn(vi, beta2), mul_rn(mul_rn(gi, gi), one_minus_beta2));
        real denom = add_rn(div_rn(sqrt_rn(vi), bias_correction2_sqrt), eps);
        pi = sub_rn(pi, mul_rn(div_rn(mi, denom), step_size));
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}
