// weight_update: the weight gradient fused with the SGD step, so dW is never
// written to memory.  Three kernels on one stream:
//
//   weight_update  g = scale * delta.T @ a_prev (+ weight_decay * W)
//                  momentum != 0:  vW = momentum * vW + g;  g = vW
//                  W -= lr * g                                (mode 1, GB_SGD)
//                  or just dW = scale * delta.T @ a_prev      (mode 0, GB_GRADIENT)
//   bias_update    the same for b with g = scale * delta.sum(0)
//   update_reduce  (only when the batch is split, see below)
//
// Layouts (row-major, contiguous):
//   delta (B, N=n_out)   a_prev (B, K=n_in)   W, vW, dW (N, K)   b, vb, db (N,)
//   part (chunks, N*K + N): per batch chunk, [dW partial | db partial]
// A "TN" GEMM over the batch: output rows are neurons j of this layer
// (n_out), output columns neurons k of the previous one (n_in), the
// reduction runs over the B examples.  Both operands are copied straight
// into shared memory (Ds[r][j] = delta[b0+r, j0+j], As[r][k] =
// a_prev[b0+r, k0+k]), coalesced and conflict-free.
//
// Batch split (issue 11): a narrow layer has few output tiles (width 64: one),
// so one block per tile would walk the whole batch on one SM.  The launcher
// splits the batch into `chunks` ranges of `rows` examples (grid.z of
// weight_update, grid.y of bias_update); with chunks > 1 each block writes
// its range's unscaled partial sums to part[chunk], and update_reduce (one
// thread per parameter) sums the chunks in the fixed order 0, 1, ...,
// chunks-1, then scales and applies the mode.  With chunks == 1 the first two
// kernels apply the mode themselves and update_reduce is not launched.
//
// Deterministic: each output element is owned by one thread that sums its
// rows in a fixed order; the bias reduction is a fixed-shape tree in shared
// memory; chunks are reduced in a fixed order.  No atomics.
//
// Launch: weight_update grid (ceil(N/TILE_M), ceil(K/TILE_N), chunks), block (NTHREADS,);
//         bias_update   grid (ceil(N/32), chunks), block (32, BIAS_ROWS);
//         update_reduce grid (min(ceil((N*K+N)/256), 4096),), block (256,).
// Pointers not used by a mode (vW/vb without momentum, dW/db in mode 1,
// W/b/vW/vb in mode 0, part with one chunk) are never dereferenced: they may
// alias the used ones (the launcher passes the used buffer), so W, vW, dW, b,
// vb, db, part are not declared __restrict__.
#include "gemm_common.cuh"

#if !defined(BIAS_ROWS) || !defined(GB_GRADIENT) || !defined(GB_SGD)
#error "compile with the -D defines of gpubackprop.kernels.defines: BIAS_ROWS, GB_GRADIENT, GB_SGD"
#endif

__device__ __forceinline__ void gb_sgd_apply(REAL* p, REAL* v, long long idx, REAL g,
                                             REAL lr, REAL momentum, REAL weight_decay)
{
    const REAL w = p[idx];
    if (weight_decay != (REAL)0)
        g += weight_decay * w;
    if (momentum != (REAL)0) {
        const REAL vn = momentum * v[idx] + g;
        v[idx] = vn;
        g = vn;
    }
    p[idx] = w - lr * g;
}

// the gradient entry g of parameter idx: written (GRADIENT) or applied (SGD)
__device__ __forceinline__ void gb_finish(REAL* p, REAL* v, REAL* d, long long idx, REAL g,
                                          REAL lr, REAL momentum, REAL weight_decay, int mode)
{
    if (mode == GB_GRADIENT)
        d[idx] = g;
    else
        gb_sgd_apply(p, v, idx, g, lr, momentum, weight_decay);
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
weight_update(const REAL* __restrict__ delta, const REAL* __restrict__ a_prev,
              REAL* W, REAL* vW, REAL* dW, REAL* part,
              int B, int N, int K, int rows, REAL scale, REAL lr, REAL momentum,
              REAL weight_decay, int mode)
{
    __shared__ REAL Ds[TILE_K][TILE_M];  // Ds[r][j] = delta[b0+r, j0+j]
    __shared__ REAL As[TILE_K][TILE_N];  // As[r][k] = a_prev[b0+r, k0+k]

    const int tid = threadIdx.x;
    const int tx = tid % NTX;
    const int ty = tid / NTX;
    const int j0 = blockIdx.x * TILE_M;  // rows of W (this layer's neurons)
    const int k0 = blockIdx.y * TILE_N;  // columns of W (previous layer's neurons)
    const long long b_begin = (long long)blockIdx.z * rows;     // this chunk of the batch
    const long long b_end = min(b_begin + rows, (long long)B);

    REAL acc[THREAD_M][THREAD_N];
    gb_zero_tile(acc);

    for (long long b0 = b_begin; b0 < b_end; b0 += TILE_K) {
#pragma unroll
        for (int l = 0; l < GB_LOADS(TILE_K * TILE_M); ++l) {
            const int e = tid + l * NTHREADS;
            if (e < TILE_K * TILE_M) {
                const int r = e / TILE_M, c = e % TILE_M;
                const long long b = b0 + r;
                const int j = j0 + c;
                Ds[r][c] = (b < b_end && j < N) ? delta[b * N + j] : (REAL)0;
            }
        }
#pragma unroll
        for (int l = 0; l < GB_LOADS(TILE_K * TILE_N); ++l) {
            const int e = tid + l * NTHREADS;
            if (e < TILE_K * TILE_N) {
                const int r = e / TILE_N, c = e % TILE_N;
                const long long b = b0 + r;
                const int k = k0 + c;
                As[r][c] = (b < b_end && k < K) ? a_prev[b * K + k] : (REAL)0;
            }
        }
        __syncthreads();

        gb_accumulate_tile(Ds, As, acc, tx, ty);
        __syncthreads();
    }

    REAL* chunk_part = part + (long long)blockIdx.z * ((long long)N * K + N);
#pragma unroll
    for (int i = 0; i < THREAD_M; ++i) {
        const int jr = j0 + ty + i * NTY;
        if (jr >= N)
            continue;
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j) {
            const int kc = k0 + tx + j * NTX;
            if (kc >= K)
                continue;
            const long long idx = (long long)jr * K + kc;
            if (gridDim.z > 1)
                chunk_part[idx] = acc[i][j];
            else
                gb_finish(W, vW, dW, idx, scale * acc[i][j], lr, momentum, weight_decay, mode);
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * BIAS_ROWS)
bias_update(const REAL* __restrict__ delta, REAL* b, REAL* vb, REAL* db, REAL* part,
            int B, int N, int K, int rows, REAL scale, REAL lr, REAL momentum,
            REAL weight_decay, int mode)
{
    __shared__ REAL sums[BIAS_ROWS][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    const long long b_begin = (long long)blockIdx.y * rows;
    const long long b_end = min(b_begin + rows, (long long)B);
    REAL s = (REAL)0;
    if (j < N)
        for (long long r = b_begin + threadIdx.y; r < b_end; r += BIAS_ROWS)
            s += delta[r * N + j];  // a warp reads 32 consecutive columns
    sums[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && j < N) {
        REAL t = (REAL)0;
#pragma unroll
        for (int y = 0; y < BIAS_ROWS; ++y)  // fixed order: deterministic
            t += sums[y][threadIdx.x];
        if (gridDim.y > 1)
            part[(long long)blockIdx.y * ((long long)N * K + N) + (long long)N * K + j] = t;
        else
            gb_finish(b, vb, db, j, scale * t, lr, momentum, weight_decay, mode);
    }
}

extern "C" __global__ void __launch_bounds__(256)
update_reduce(const REAL* __restrict__ part, int chunks, REAL* W, REAL* vW, REAL* dW,
              REAL* b, REAL* vb, REAL* db, int N, int K, REAL scale, REAL lr,
              REAL momentum, REAL weight_decay, int mode)
{
    const long long NK = (long long)N * K, P = NK + N;
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < P;
         p += (long long)gridDim.x * blockDim.x) {
        REAL g = (REAL)0;
        for (int c = 0; c < chunks; ++c)       // chunks in a fixed order
            g += part[(long long)c * P + p];
        g *= scale;
        if (p < NK)
            gb_finish(W, vW, dW, p, g, lr, momentum, weight_decay, mode);
        else
            gb_finish(b, vb, db, p - NK, g, lr, momentum, weight_decay, mode);
    }
}
