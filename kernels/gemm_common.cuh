// Shared compile-time configuration of the tiled GEMM kernels
// (dense_forward.cu, delta_propagate.cu, weight_update.cu).
//
// Every tile size is a preprocessor define injected by the launcher from
// gpubackprop.kernels.GEMM_TILES (-D TILE_M=64 ...); there are no defaults.
// SMEM_PAD pads shared tiles stored transposed (As[k][m] from a K-contiguous
// global row): with a row stride == 2 (mod 32) a warp's 32 stores (16 k's x
// 2 rows) hit 32 different banks.  One thread
// block computes a TILE_M x TILE_N tile of the output, stepping through the
// reduction dimension TILE_K at a time through shared memory; each thread
// keeps a THREAD_M x THREAD_N register micro-tile of accumulators.  The
// micro-tile is strided: thread (tx, ty) owns rows ty + i*NTY and columns
// tx + j*NTX, so the 16 threads of a half-warp store 16 consecutive columns
// (coalesced) and read consecutive shared-memory words (no bank conflicts).
#ifndef GPUBACKPROP_GEMM_COMMON_CUH
#define GPUBACKPROP_GEMM_COMMON_CUH

#if !defined(REAL) || !defined(TILE_M) || !defined(TILE_N) || !defined(TILE_K) || !defined(THREAD_M) || !defined(THREAD_N) || !defined(SMEM_PAD)
#error "compile with the -D defines of GEMM_TILES (gpubackprop.kernels.defines): REAL, TILE_M, TILE_N, TILE_K, THREAD_M, THREAD_N, SMEM_PAD"
#endif


#define NTX (TILE_N / THREAD_N)   // threads along the output columns
#define NTY (TILE_M / THREAD_M)   // threads along the output rows
#define NTHREADS (NTX * NTY)      // threads per block (blockDim.x, 1-D)

static_assert(TILE_M % THREAD_M == 0, "TILE_M must be a multiple of THREAD_M");
static_assert(TILE_N % THREAD_N == 0, "TILE_N must be a multiple of THREAD_N");
static_assert(NTHREADS <= 1024, "too many threads per block");
static_assert(NTHREADS >= 32, "fewer than a warp per block");

// number of shared-memory elements each thread loads per tile of size `n`
#define GB_LOADS(n) (((n) + NTHREADS - 1) / NTHREADS)

// acc = 0: the thread's THREAD_M x THREAD_N register micro-tile
__device__ __forceinline__ void gb_zero_tile(REAL (&acc)[THREAD_M][THREAD_N])
{
#pragma unroll
    for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j)
            acc[i][j] = (REAL)0;
}

// One TILE_K step of the micro-tile's outer products from two shared tiles:
// acc[i][j] += sum_k Xs[k][ty + i*NTY] * Ys[k][tx + j*NTX]  (the same in all
// three GEMMs; only how the tiles are loaded differs).  LDX and LDY are the
// tiles' row lengths (padded or not).
template <int LDX, int LDY>
__device__ __forceinline__ void gb_accumulate_tile(const REAL (&Xs)[TILE_K][LDX],
                                                   const REAL (&Ys)[TILE_K][LDY],
                                                   REAL (&acc)[THREAD_M][THREAD_N],
                                                   int tx, int ty)
{
#pragma unroll
    for (int k = 0; k < TILE_K; ++k) {
        REAL x[THREAD_M], y[THREAD_N];
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i)
            x[i] = Xs[k][ty + i * NTY];
#pragma unroll
        for (int j = 0; j < THREAD_N; ++j)
            y[j] = Ys[k][tx + j * NTX];
#pragma unroll
        for (int i = 0; i < THREAD_M; ++i)
#pragma unroll
            for (int j = 0; j < THREAD_N; ++j)
                acc[i][j] += x[i] * y[j];
    }
}

#endif  // GPUBACKPROP_GEMM_COMMON_CUH
