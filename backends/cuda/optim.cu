// Fused optimizer updates of the CUDA backend: one launch per parameter group instead of one
// per array operation and parameter (Adam's update is a dozen elementwise operations, each a
// kernel launch of its own when written with xp, and for LeNet-5's small tensors the
// launches, not the arithmetic, are what costs).
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

// Adam / AdamW for a whole parameter group in one launch, in place on every parameter, its
// exp_avg (m) and exp_avg_sq (v). blockIdx.y is the tensor; blockIdx.x and threadIdx.x stride
// over its elements. `table` holds six 64-bit words per tensor: the addresses of p, g, m and
// v, the element count and the tensor's entry in `steps`.
//
// The step count (steps[entry], already counted for this step) and the learning rate (*lr)
// are read from device memory, so a captured graph follows a scheduler. The per-tensor
// scalars are computed here in double exactly as dlx/optim/adam.py computes them with xp on
// float64 0-d arrays (pow, then one rounded operation at a time), then rounded once to `real`:
//   step_size = lr / (1 - beta1^t);  bias_correction2_sqrt = pow(1 - beta2^t, 0.5)
//   decay = 1 - lr * weight_decay (AdamW)
// decay_mode 0: no weight decay; 1: g += weight_decay * p (Adam); 2: p *= decay (AdamW).
extern "C" __global__ void adam_group(
    const long long* __restrict__ table, const double* __restrict__ steps,
    const double* __restrict__ lr, int decay_mode, double weight_decay, double beta1,
    double beta2, real one_minus_beta1, real beta2_r, real one_minus_beta2, real eps)
{
    const long long* row = table + 6 * (long long)blockIdx.y;
    real* __restrict__ p = (real*)row[0];
    const real* __restrict__ g = (const real*)row[1];
    real* __restrict__ m = (real*)row[2];
    real* __restrict__ v = (real*)row[3];
    const long long n = row[4];
    const double t = steps[row[5]];
    const double rate = *lr;
    const real step_size = (real)__ddiv_rn(rate, __dsub_rn(1.0, pow(beta1, t)));
    const real bias_correction2_sqrt = (real)pow(__dsub_rn(1.0, pow(beta2, t)), 0.5);
    const real decay = (real)__dsub_rn(1.0, __dmul_rn(rate, weight_decay));
    const real wd = (real)weight_decay;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        real pi = p[i], gi = g[i], mi = m[i], vi = v[i];
        if (decay_mode == 2) pi = mul_rn(pi, decay);
        else if (decay_mode == 1) gi = add_rn(gi, mul_rn(wd, pi));
        mi = add_rn(mi, mul_rn(sub_rn(gi, mi), one_minus_beta1));   // m = lerp(m, g, 1 - beta1)
        vi = add_rn(mul_rn(vi, beta2_r), mul_rn(mul_rn(gi, gi), one_minus_beta2));
        real denom = add_rn(div_rn(sqrt_rn(vi), bias_correction2_sqrt), eps);
        pi = sub_rn(pi, mul_rn(div_rn(mi, denom), step_size));
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}
