// Matrix product of the CUDA backend: C = op(A) @ op(B) for 2-D row-major arrays, where
// op(A) is A or the transpose of how A is stored (likewise B), so the products of nn.Linear
// (x @ W.T forward, dy @ W and dy.T @ x backward) read their operands where they lie. It
// exists because a training step is captured into a CUDA graph and CuPy's matmul (cuBLAS)
// refuses stream capture.
//
// The loader puts `typedef float real;` or `typedef double real;` in front of this text.
// Letters: C is M x N, K the inner dimension. A is stored (M, K), or (K, M) when transposed;
// B is stored (K, N), or (N, K) when transposed. Kernel gemm<T>_<a><b>: a T x T tile of C
// per block; a, b = n (used as stored) or t (stored transposed). The launcher refuses arrays
// of 2^31 elements or more, so every index fits an int.
//
// Each block computes one BM x BN tile of C (blockIdx.x walks the tiles, row by row). Its
// (BM / TM) * (BN / TN) threads form a TY x TX grid and each keeps a TM x TN micro-tile in
// registers: rows ty + i * TY, columns tx + j * TX (strided, so a warp's shared-memory reads
// are broadcasts or consecutive and its stores to C coalesce). K is walked in steps of BK:
// the block stages the BM x BK slab of op(A) and the BK x BN slab of op(B) in shared memory,
// k-major and zero outside the matrices, every thread loading a few elements in the order
// the storage is contiguous; the next slabs are read into registers while the current ones
// are multiplied. Each element of C is one `real` accumulator over k = 0, 1, ..., K - 1 in
// that order (no split of K, no atomics): results are bit-reproducible. K = 0 gives zeros.

#define GEMM_BK 16  // the K step
#define GEMM_PAD 1  // shared rows of BM + 1 (BN + 1): a slab's transposing stores hit distinct banks

// Coordinates (r, k) of element e of a slab of R rows of op(X) (r < R, k < BK). K_MAJOR: X is
// stored with the r index contiguous ((K, rows) storage), else with k contiguous.
template <int R, bool K_MAJOR>
__device__ __forceinline__ void slab_coords(int e, int* r, int* k)
{
    if (K_MAJOR) {
        *r = e % R;
        *k = e / R;
    } else {
        *k = e % GEMM_BK;
        *r = e / GEMM_BK;
    }
}

// Element e of the slab of op(X) starting at row r0, column k0 (0 outside the matrix).
template <int R, bool K_MAJOR>
__device__ __forceinline__ real slab_load(const real* __restrict__ X, int rows, int K, int r0,
                                          int k0, int e)
{
    int r, k;
    slab_coords<R, K_MAJOR>(e, &r, &k);
    r += r0;
    k += k0;
    if (r >= rows || k >= K) return (real)0;
    return K_MAJOR ? X[k * rows + r] : X[r * K + k];
}

template <int BM, int BN, int TM, int TN, bool TA, bool TB>
__device__ __forceinline__ void gemm_tile(const real* __restrict__ A, const real* __restrict__ B,
                                          real* __restrict__ C, int M, int N, int K)
{
    constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
    constexpr int LDA = BM + GEMM_PAD, LDB = BN + GEMM_PAD;
    constexpr int LA = BM * GEMM_BK / NT, LB = BN * GEMM_BK / NT;  // slab elements per thread
    static_assert(TX * TN == BN && TY * TM == BM && NT % 32 == 0 && NT <= 1024, "tile shape");
    static_assert(LA * NT == BM * GEMM_BK && LB * NT == BN * GEMM_BK, "slabs split unevenly");
    __shared__ real As[GEMM_BK * LDA];  // As[k * LDA + m] = op(A)[m0 + m, k0 + k]
    __shared__ real Bs[GEMM_BK * LDB];  // Bs[k * LDB + n] = op(B)[k0 + k, n0 + n]

    const int tid = (int)threadIdx.x, tx = tid % TX, ty = tid / TX;
    const int tiles_n = (N + BN - 1) / BN, tile = (int)blockIdx.x;
    const int m0 = tile / tiles_n * BM, n0 = (tile - tile / tiles_n * tiles_n) * BN;

    real acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = (real)0;

    // op(A) is M x K: stored (M, K) has k contiguous, stored transposed has m contiguous.
    // op(B) is K x N, taken as its transpose's N x K slab: stored (K, N) has n contiguous.
    real ra[LA], rb[LB];
    if (K > 0) {
#pragma unroll
        for (int l = 0; l < LA; ++l) ra[l] = slab_load<BM, TA>(A, M, K, m0, 0, tid + l * NT);
#pragma unroll
        for (int l = 0; l < LB; ++l) rb[l] = slab_load<BN, !TB>(B, N, K, n0, 0, tid + l * NT);
    }
    for (int k0 = 0; k0 < K; k0 += GEMM_BK) {
#pragma unroll
        for (int l = 0; l < LA; ++l) {
            int r, k;
            slab_coords<BM, TA>(tid + l * NT, &r, &k);
            As[k * LDA + r] = ra[l];
        }
#pragma unroll
        for (int l = 0; l < LB; ++l) {
            int r, k;
            slab_coords<BN, !TB>(tid + l * NT, &r, &k);
            Bs[k * LDB + r] = rb[l];
        }
        __syncthreads();
        const int k1 = k0 + GEMM_BK;
        if (k1 < K) {  // the next slabs, in flight during the multiply-adds
#pragma unroll
            for (int l = 0; l < LA; ++l) ra[l] = slab_load<BM, TA>(A, M, K, m0, k1, tid + l * NT);
#pragma unroll
            for (int l = 0; l < LB; ++l) rb[l] = slab_load<BN, !TB>(B, N, K, n0, k1, tid + l * NT);
        }
        // The same multiply-adds in the same order for a full or a last partial slab (whose
        // zero padding is not added, so a sum's sign of zero is that of the exact order).
        const int kn = min(GEMM_BK, K - k0);
        if (kn == GEMM_BK) {
#pragma unroll
            for (int kk = 0; kk < GEMM_BK; ++kk) {
                real a[TM], b[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) a[i] = As[kk * LDA + ty + i * TY];
#pragma unroll
                for (int j = 0; j < TN; ++j) b[j] = Bs[kk * LDB + tx + j * TX];
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
            }
        } else {
            for (int kk = 0; kk < kn; ++kk) {
                real a[TM], b[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) a[i] = As[kk * LDA + ty + i * TY];
#pragma unroll
                for (int j = 0; j < TN; ++j) b[j] = Bs[kk * LDB + tx + j * TX];
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
            }
        }
        __syncthreads();  // the slabs are overwritten next step
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + ty + i * TY;
        if (m < M) {
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const int n = n0 + tx + j * TX;
                if (n < N) C[m * N + n] = acc[i][j];
            }
        }
    }
}

// 64 x 64 tiles, 256 threads of 4 x 4 (shared memory: 8320 bytes float, 16640 double).

extern "C" __global__ void gemm64_nn(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<64, 64, 4, 4, false, false>(A, B, C, M, N, K);
}

extern "C" __global__ void gemm64_nt(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<64, 64, 4, 4, false, true>(A, B, C, M, N, K);
}

extern "C" __global__ void gemm64_tn(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<64, 64, 4, 4, true, false>(A, B, C, M, N, K);
}

extern "C" __global__ void gemm64_tt(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<64, 64, 4, 4, true, true>(A, B, C, M, N, K);
}

// 32 x 32 tiles, 256 threads of 2 x 2 (4224 bytes float, 8448 double): four times the
// blocks, for products whose 64 x 64 grid would leave most multiprocessors idle.

extern "C" __global__ void gemm32_nn(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<32, 32, 2, 2, false, false>(A, B, C, M, N, K);
}

extern "C" __global__ void gemm32_nt(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<32, 32, 2, 2, false, true>(A, B, C, M, N, K);
}

extern "C" __global__ void gemm32_tn(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<32, 32, 2, 2, true, false>(A, B, C, M, N, K);
}

extern "C" __global__ void gemm32_tt(const real* __restrict__ A, const real* __restrict__ B,
                                     real* __restrict__ C, int M, int N, int K)
{
    gemm_tile<32, 32, 2, 2, true, true>(A, B, C, M, N, K);
}
