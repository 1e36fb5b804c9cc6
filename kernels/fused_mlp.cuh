// Compile-time configuration and shared-memory layout of the fully fused MLP
// kernels (fused_mlp.cu).  See FUSED.md for the design.
//
// Every size is a preprocessor define injected with -D from the one table
// gpubackprop.kernels.FUSED (FUSED_MIN_BLOCKS: __launch_bounds__' minimum
// blocks per SM); there are no defaults here.
//
//   FUSED_TILE_B    rows of the batch per thread block (a tile), multiple of 16
//   FUSED_MAX_W     widest layer output (hidden and output layers) the kernels
//                   take, after padding; multiple of 16, at most 128 by default
//   FUSED_PAD       widths are padded to a multiple of this (16)
//   FUSED_KC        reduction chunk: the weights (and the input rows of the
//                   first layer) are staged through shared memory FUSED_KC
//                   columns at a time; multiple of FUSED_PAD
//   FUSED_MAX_LAYERS  deepest network (the per-layer tables live in shared memory)
//   FUSED_ATOMIC    if defined, the weight-gradient partials are atomicAdd-ed
//                   into one buffer (non-deterministic); by default each tile
//                   writes its own partial and fused_reduce_sgd sums the tiles
//                   in a fixed order (bitwise reproducible).
//
// Threads: always 256 = 16 x 16, thread (tx, ty) = (tid % 16, tid / 16).
//   forward / delta GEMMs (out = TILE_B x width): thread owns rows
//     ty + 16 i (i < FUSED_TM = TILE_B / 16) and columns tx + 16 j
//     (j < FUSED_TN = MAX_W / 16); the j loop stops at the padded width, a
//     block-uniform bound, so narrow layers do no wasted FMAs.
//   weight-gradient GEMM (out = n_out x KC chunk of n_in): thread owns
//     neurons ty + 16 i (i < FUSED_TN) and inputs k0 + tx + 16 j (j < KC / 16).
#ifndef GPUBACKPROP_FUSED_MLP_CUH
#define GPUBACKPROP_FUSED_MLP_CUH

#if !defined(REAL) || !defined(FUSED_TILE_B) || !defined(FUSED_MAX_W) || !defined(FUSED_PAD) || !defined(FUSED_KC) || !defined(FUSED_MAX_LAYERS) || !defined(FUSED_MIN_BLOCKS)
#error "compile with the -D defines of FUSED (gpubackprop.kernels.defines): REAL, FUSED_TILE_B, FUSED_MAX_W, FUSED_PAD, FUSED_KC, FUSED_MAX_LAYERS, FUSED_MIN_BLOCKS"
#endif


#define FUSED_THREADS 256
#define FUSED_TM (FUSED_TILE_B / 16)   // rows per thread in the row-major GEMMs
#define FUSED_TN (FUSED_MAX_W / 16)    // columns per thread (at the widest layer)
#define FUSED_KJ (FUSED_KC / 16)       // input columns per thread in the weight gradient

static_assert(FUSED_PAD == 16, "the 16 x 16 thread grid needs widths padded to 16");
static_assert(FUSED_TILE_B % 16 == 0, "FUSED_TILE_B must be a multiple of 16");
static_assert(FUSED_MAX_W % 16 == 0, "FUSED_MAX_W must be a multiple of 16");
static_assert(FUSED_KC % 16 == 0, "FUSED_KC must be a multiple of 16");
static_assert(FUSED_TILE_B <= FUSED_THREADS, "one thread per row in the row-wise steps");
static_assert(FUSED_MAX_W <= FUSED_THREADS, "one thread per neuron in the bias sums");

// the cost codes (-D from losses.Loss.CODES): FUSED_LOSS_SQUARED for sse,
// quadratic and mse (dC0/da = 2 (a - y)), FUSED_LOSS_XENT for cross entropy
// (delta = softmax(z) - y)
#if !defined(FUSED_LOSS_SQUARED) || !defined(FUSED_LOSS_XENT)
#error "compile with the -D defines of gpubackprop.kernels.defines: FUSED_LOSS_SQUARED, FUSED_LOSS_XENT"
#endif

__host__ __device__ __forceinline__ int fused_pad(int n)
{
    return (n + FUSED_PAD - 1) / FUSED_PAD * FUSED_PAD;
}

// Dynamic shared memory (elements of REAL), with wpad = the widest padded
// layer output (<= FUSED_MAX_W) and ld = wpad + 1 (odd: the transposed
// stores of the weight chunk and the row-per-thread loops are conflict-free):
//
//   bufA  [FUSED_TILE_B][ld]   activations / deltas (ping)
//   bufB  [FUSED_TILE_B][ld]   activations / deltas (pong)
//   Wc    [FUSED_KC][ld]       one chunk of a layer's weights
//   Xc    [FUSED_TILE_B][FUSED_KC + 1]   one chunk of the input rows
//
// (the launcher computes the same number: fused_backend.shared_bytes)
__host__ __device__ __forceinline__ int fused_smem_elems(int wpad)
{
    const int ld = wpad + 1;
    return 2 * FUSED_TILE_B * ld + FUSED_KC * ld + FUSED_TILE_B * (FUSED_KC + 1);
}

// The per-network tables, copied from global memory into shared memory at
// the start of every kernel.  `ptrs` holds 2 L device pointers
// (W_0, b_0, W_1, b_1, ...); dims the L + 1 layer widths; acts the L
// activation codes of activations.cuh.
struct FusedNet {
    const REAL* W[FUSED_MAX_LAYERS];
    const REAL* b[FUSED_MAX_LAYERS];
    int dims[FUSED_MAX_LAYERS + 1];
    int act[FUSED_MAX_LAYERS];
    long long act_off[FUSED_MAX_LAYERS];    // offset of a_{l+1} in the activation scratch
    long long w_off[FUSED_MAX_LAYERS];      // offset of dW_l in a tile's gradient partial
    long long b_off[FUSED_MAX_LAYERS];      // offset of db_l
    long long n_params;                     // P: size of one tile's partial
};

#endif  // GPUBACKPROP_FUSED_MLP_CUH
