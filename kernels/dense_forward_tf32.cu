// dense_forward_tf32: a = sigma(a_prev @ W.T + b) for float32 on tensor cores
// (WMMA, TF32 inputs with 10-bit mantissa, FP32 accumulation; sm_80+).
// Opt-in (the backend's tf32=True): results differ from the float32 kernel by
// about 1e-3 relative, the same trade PyTorch makes with allow_tf32.
//
// Layouts as dense_forward.cu: a_prev (M, K), W (N, K), b (N,), out (M, N),
// row-major float32.  Block tile TC_TILE_M x TC_TILE_N, 4 warps in a 2 x 2
// grid, each warp owning a (TC_TILE_M/2) x (TC_TILE_N/2) sub-tile made of
// 16 x 16 accumulator fragments.  Shared tiles: As[m][k] (row-major matrix_a)
// and Ws[n][k], which is W^T in column-major order (matrix_b col_major), both
// zero-filled at the edges.  The accumulators go through shared memory (Cs)
// so the epilogue (+ bias, activation) can store whole rows, coalesced and
// guarded.
//
// Launch: grid (ceil(M/TC_TILE_M), ceil(N/TC_TILE_N)), block (128,).
#include <mma.h>
#include "activations.cuh"

#if !defined(TC_TILE_M) || !defined(TC_TILE_N) || !defined(TC_TILE_K)
#error "compile with the -D defines of TF32_TILES (gpubackprop.kernels.defines): TC_TILE_M, TC_TILE_N, TC_TILE_K"
#endif

#define TC_THREADS 128
#define TC_WM (TC_TILE_M / 2)      // rows of a warp's sub-tile
#define TC_WN (TC_TILE_N / 2)      // columns of a warp's sub-tile
#define TC_FM (TC_WM / 16)         // 16x16 fragments per warp, down
#define TC_FN (TC_WN / 16)         // and across
#define TC_LDK (TC_TILE_K + 4)     // row stride of As/Ws (multiple of 4 floats)
#define TC_LDC (TC_TILE_N + 4)     // row stride of Cs

static_assert(TC_TILE_M % 32 == 0 && TC_TILE_N % 32 == 0, "tiles must be multiples of 32");
static_assert(TC_TILE_K % 8 == 0, "TC_TILE_K must be a multiple of 8");

using namespace nvcuda;

extern "C" __global__ void __launch_bounds__(TC_THREADS)
dense_forward_tf32(const float* __restrict__ a_prev, const float* __restrict__ W,
                   const float* __restrict__ bias, float* __restrict__ out,
                   int M, int N, int K, int act)
{
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
    __shared__ __align__(128) float As[TC_TILE_M][TC_LDK];
    __shared__ __align__(128) float Ws[TC_TILE_N][TC_LDK];
    __shared__ __align__(128) float Cs[TC_TILE_M][TC_LDC];

    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int wm = warp / 2, wn = warp % 2;
    const long long m0 = (long long)blockIdx.x * TC_TILE_M;
    const int n0 = blockIdx.y * TC_TILE_N;

    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[TC_FM][TC_FN];
#pragma unroll
    for (int i = 0; i < TC_FM; ++i)
#pragma unroll
        for (int j = 0; j < TC_FN; ++j)
            wmma::fill_fragment(acc[i][j], 0.0f);

    for (int k0 = 0; k0 < K; k0 += TC_TILE_K) {
#pragma unroll
        for (int e = tid; e < TC_TILE_M * TC_TILE_K; e += TC_THREADS) {
            const int r = e / TC_TILE_K, c = e % TC_TILE_K;
            const long long m = m0 + r;
            const int k = k0 + c;
            As[r][c] = (m < M && k < K) ? a_prev[m * K + k] : 0.0f;
        }
#pragma unroll
        for (int e = tid; e < TC_TILE_N * TC_TILE_K; e += TC_THREADS) {
            const int r = e / TC_TILE_K, c = e % TC_TILE_K;
            const int n = n0 + r;
            const int k = k0 + c;
            Ws[r][c] = (n < N && k < K) ? W[(long long)n * K + k] : 0.0f;
        }
        __syncthreads();

#pragma unroll
        for (int kk = 0; kk < TC_TILE_K; kk += 8) {
            wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa[TC_FM];
            wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb[TC_FN];
#pragma unroll
            for (int i = 0; i < TC_FM; ++i) {
                wmma::load_matrix_sync(fa[i], &As[wm * TC_WM + i * 16][kk], TC_LDK);
#pragma unroll
                for (int t = 0; t < fa[i].num_elements; ++t)
                    fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
            }
#pragma unroll
            for (int j = 0; j < TC_FN; ++j) {
                wmma::load_matrix_sync(fb[j], &Ws[wn * TC_WN + j * 16][kk], TC_LDK);
#pragma unroll
                for (int t = 0; t < fb[j].num_elements; ++t)
                    fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
            }
#pragma unroll
            for (int i = 0; i < TC_FM; ++i)
#pragma unroll
                for (int j = 0; j < TC_FN; ++j)
                    wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TC_FM; ++i)
#pragma unroll
        for (int j = 0; j < TC_FN; ++j)
            wmma::store_matrix_sync(&Cs[wm * TC_WM + i * 16][wn * TC_WN + j * 16], acc[i][j],
                                    TC_LDC, wmma::mem_row_major);
    __syncthreads();

    // epilogue: + bias, activation, guarded and coalesced store
    for (int e = tid; e < TC_TILE_M * TC_TILE_N; e += TC_THREADS) {
        const int r = e / TC_TILE_N, c = e % TC_TILE_N;
        const long long m = m0 + r;
        const int n = n0 + c;
        if (m < M && n < N)
            out[m * N + n] = gb_sigma(Cs[r][c] + bias[n], act);
    }
#else
    __trap();  // tensor-core TF32 needs sm_80 or newer; the launcher never picks it there
#endif
}
