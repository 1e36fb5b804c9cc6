// fused_mlp: a fully fused SGD training step for narrow MLPs (issue 5).
//
// Three kernels per SGD step, whatever the depth (L <= FUSED_MAX_LAYERS):
//
//   fused_forward     one block per tile of FUSED_TILE_B batch rows runs every
//                     layer: z = a_prev @ W.T + b, a = sigma(z) (row-wise
//                     softmax on the output layer if asked), with the tile's
//                     activations kept in shared memory from layer to layer.
//                     The first layer's input rows are gathered straight from
//                     X through the shuffle `idx` and streamed through shared
//                     memory FUSED_KC columns at a time (so n_in may be any
//                     width, 784 included).  Each layer's activations are
//                     written once to the scratch `act_out` (B x n_l per
//                     layer): that is all backward needs.
//   fused_backward    one block per tile: the output delta from the cost on
//                     chip (squared: 2 (a - y) sigma'(a), or the softmax VJP;
//                     cross entropy: softmax(z) - y), each row's cost C0 and
//                     whether argmax(a) == argmax(y); then for every layer,
//                     last to first, the tile's weight-gradient partial
//                     dW_l = delta_l^T a_{l-1} and db_l = sum_rows delta_l
//                     (written to this tile's slice of `part`), and
//                     delta_{l-1} = (delta_l @ W_l) * sigma'(a_{l-1}), on chip.
//   fused_reduce_sgd  one thread per parameter: sums the tiles' partials in
//                     the fixed order t = 0, 1, ..., T-1 (deterministic, no
//                     atomics), scales, and applies SGD (PyTorch's convention:
//                     g += wd W; v = mu v + g; W -= lr v) -- or, in mode
//                     FUSED_MODE_GRAD, writes the gradient to `grad_out`.
//
// Layouts (row-major, contiguous, element type REAL = float or double):
//   X (N, n_0), Y (N, n_L), idx (B,) int64 rows of X/Y making up the batch
//   (null: rows 0..B-1); W_l (n_{l+1}, n_l), b_l (n_{l+1},) through the
//   pointer table ptrs = [W_0, b_0, W_1, b_1, ...] (int64 device array) and
//   vptrs (the momentum buffers, same order; read only when mu != 0);
//   act_out: a_1 (B, n_1) | a_2 (B, n_2) | ... | a_L (B, n_L);
//   part (T, P): per tile, [dW_0 | db_0 | dW_1 | db_1 | ...] with P the
//   parameter count; cost_part (T,), correct_part (T,) int32.
//
// Padding: every width is padded to a multiple of FUSED_PAD (16) in shared
// memory; padded columns and the rows past the end of a ragged last tile
// are held at zero (weights are zero-filled when staged), so they add
// nothing to any sum and every global store is guarded.
//
// Launch: fused_forward / fused_backward grid (ceil(B / FUSED_TILE_B),),
//   block (256,), dynamic shared memory fused_smem_elems(wpad) * sizeof(REAL)
//   (above 48 KiB the launcher raises the kernel's
//   max_dynamic_shared_size_bytes); fused_reduce_sgd grid (ceil(P / 256),)
//   capped, block (256,), no dynamic shared memory.
//
// Not written yet: a TF32 tensor-core (WMMA / mma.sync) variant of the two
// on-chip GEMMs; see FUSED.md.  This file is the exact path (float32 or
// float64 accumulation, no tensor cores).
#include "activations.cuh"
#include "fused_mlp.cuh"

#if !defined(FUSED_MODE_GRAD) || !defined(FUSED_MODE_SGD)
#error "compile with the -D defines of gpubackprop.kernels.defines: FUSED_MODE_GRAD, FUSED_MODE_SGD"
#endif

__device__ __forceinline__ float fused_tiny(float) { return 1.17549435e-38f; }
__device__ __forceinline__ double fused_tiny(double) { return 2.2250738585072014e-308; }
__device__ __forceinline__ float fused_log(float x) { return logf(x); }
__device__ __forceinline__ double fused_log(double x) { return log(x); }

__device__ __forceinline__ long long fused_row(const long long* __restrict__ idx, long long r)
{
    return idx != nullptr ? idx[r] : r;
}

// thread 0 fills the network table (shared) from the device arrays
__device__ __forceinline__ void fused_load_net(FusedNet& net, int L, int B,
                                               const long long* __restrict__ ptrs,
                                               const int* __restrict__ dims,
                                               const int* __restrict__ acts)
{
    if (threadIdx.x == 0) {
        long long ao = 0, po = 0;
        net.dims[0] = dims[0];
        for (int l = 0; l < L; ++l) {
            net.W[l] = reinterpret_cast<const REAL*>(ptrs[2 * l]);
            net.b[l] = reinterpret_cast<const REAL*>(ptrs[2 * l + 1]);
            net.act[l] = acts[l];
            net.dims[l + 1] = dims[l + 1];
            net.act_off[l] = ao;
            ao += (long long)B * dims[l + 1];
            net.w_off[l] = po;
            po += (long long)dims[l + 1] * dims[l];
            net.b_off[l] = po;
            po += dims[l + 1];
        }
        net.n_params = po;
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(FUSED_THREADS, FUSED_MIN_BLOCKS)
fused_forward(const REAL* __restrict__ X, const long long* __restrict__ idx, int B, int L,
              const long long* __restrict__ ptrs, const int* __restrict__ dims,
              const int* __restrict__ acts, int wpad, REAL* __restrict__ act_out)
{
    extern __shared__ __align__(16) unsigned char fused_smem_raw[];
    REAL* smem = reinterpret_cast<REAL*>(fused_smem_raw);
    __shared__ FusedNet net;
    fused_load_net(net, L, B, ptrs, dims, acts);

    const int ld = wpad + 1;
    REAL* Ain = smem;                          // a_l of the tile (l >= 1)
    REAL* Aout = smem + FUSED_TILE_B * ld;     // a_{l+1}
    REAL* Wc = smem + 2 * FUSED_TILE_B * ld;   // Wc[kk][n] = W[n, k0 + kk]
    REAL* Xc = Wc + FUSED_KC * ld;             // Xc[r][kk] = X[idx[r0 + r], k0 + kk]
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const long long r0 = (long long)blockIdx.x * FUSED_TILE_B;
    const int rows = (int)min((long long)FUSED_TILE_B, (long long)B - r0);

    for (int l = 0; l < L; ++l) {
        const int n_in = net.dims[l], n_out = net.dims[l + 1];
        const int kpad = fused_pad(n_in), npad = fused_pad(n_out);
        const REAL* __restrict__ W = net.W[l];

        REAL acc[FUSED_TM][FUSED_TN];
#pragma unroll
        for (int i = 0; i < FUSED_TM; ++i)
#pragma unroll
            for (int j = 0; j < FUSED_TN; ++j)
                acc[i][j] = (REAL)0;

        for (int k0 = 0; k0 < kpad; k0 += FUSED_KC) {
            const int kc = min(FUSED_KC, kpad - k0);
            __syncthreads();                   // the last chunk's readers are done
            // stage W[:, k0:k0+kc] transposed: coalesced along k, odd ld => no conflicts
            for (int e = tid; e < npad * FUSED_KC; e += FUSED_THREADS) {
                const int n = e / FUSED_KC, kk = e % FUSED_KC, k = k0 + kk;
                if (kk < kc)
                    Wc[kk * ld + n] = (n < n_out && k < n_in) ? W[(long long)n * n_in + k] : (REAL)0;
            }
            if (l == 0) {                      // stream the gathered input rows
                for (int e = tid; e < FUSED_TILE_B * FUSED_KC; e += FUSED_THREADS) {
                    const int r = e / FUSED_KC, kk = e % FUSED_KC, k = k0 + kk;
                    if (kk < kc)
                        Xc[r * (FUSED_KC + 1) + kk] =
                            (r < rows && k < n_in) ? X[fused_row(idx, r0 + r) * n_in + k] : (REAL)0;
                }
            }
            __syncthreads();
            const REAL* src = (l == 0) ? Xc : Ain + k0;
            const int lds = (l == 0) ? FUSED_KC + 1 : ld;
            for (int kk = 0; kk < kc; ++kk) {  // sequential k: the emulation's order
                REAL a[FUSED_TM], w[FUSED_TN];
#pragma unroll
                for (int i = 0; i < FUSED_TM; ++i)
                    a[i] = src[(ty + 16 * i) * lds + kk];
#pragma unroll
                for (int j = 0; j < FUSED_TN; ++j)
                    w[j] = (16 * j < npad) ? Wc[kk * ld + tx + 16 * j] : (REAL)0;
#pragma unroll
                for (int j = 0; j < FUSED_TN; ++j)
                    if (16 * j < npad)
#pragma unroll
                        for (int i = 0; i < FUSED_TM; ++i)
                            acc[i][j] += a[i] * w[j];
            }
        }

        // epilogue: + b, sigma; padded columns and rows past the tile stay 0
        const int code = net.act[l];
        const REAL* __restrict__ bias = net.b[l];
#pragma unroll
        for (int j = 0; j < FUSED_TN; ++j) {
            const int n = tx + 16 * j;
            if (16 * j < npad) {
                const REAL bn = n < n_out ? bias[n] : (REAL)0;
#pragma unroll
                for (int i = 0; i < FUSED_TM; ++i) {
                    const int r = ty + 16 * i;
                    const REAL z = acc[i][j] + bn;
                    Aout[r * ld + n] = (n < n_out && r < rows)
                        ? (code == GB_ACT_SOFTMAX ? z : gb_sigma(z, code)) : (REAL)0;
                }
            }
        }
        __syncthreads();
        if (code == GB_ACT_SOFTMAX) {          // output layer only: one thread per row
            if (tid < rows) {
                REAL* row = Aout + tid * ld;
                REAL m = row[0];
                for (int n = 1; n < n_out; ++n)
                    m = row[n] > m ? row[n] : m;
                REAL s = (REAL)0;
                for (int n = 0; n < n_out; ++n) {
                    row[n] = gb_exp(row[n] - m);
                    s += row[n];
                }
                for (int n = 0; n < n_out; ++n)
                    row[n] /= s;
            }
            __syncthreads();
        }
        // a_{l+1} of the tile -> the scratch, coalesced and guarded
        REAL* __restrict__ out = act_out + net.act_off[l];
        for (int e = tid; e < rows * n_out; e += FUSED_THREADS) {
            const int r = e / n_out, n = e % n_out;
            out[(r0 + r) * n_out + n] = Aout[r * ld + n];
        }
        REAL* t = Ain;
        Ain = Aout;
        Aout = t;
    }
}

extern "C" __global__ void __launch_bounds__(FUSED_THREADS, FUSED_MIN_BLOCKS)
fused_backward(const REAL* __restrict__ X, const REAL* __restrict__ Y,
               const long long* __restrict__ idx, int B, int L,
               const long long* __restrict__ ptrs, const int* __restrict__ dims,
               const int* __restrict__ acts, int wpad, const REAL* __restrict__ act_out,
               int loss, REAL* __restrict__ part, REAL* __restrict__ cost_part,
               int* __restrict__ correct_part)
{
    extern __shared__ __align__(16) unsigned char fused_smem_raw[];
    REAL* smem = reinterpret_cast<REAL*>(fused_smem_raw);
    __shared__ FusedNet net;
    __shared__ REAL row_cost[FUSED_TILE_B];
    __shared__ int row_ok[FUSED_TILE_B];
    fused_load_net(net, L, B, ptrs, dims, acts);

    const int ld = wpad + 1;
    REAL* D = smem;                            // delta_l of the tile
    REAL* P = smem + FUSED_TILE_B * ld;        // a_{l-1}, then delta_{l-1} in place
    REAL* Wc = smem + 2 * FUSED_TILE_B * ld;
    REAL* Xc = Wc + FUSED_KC * ld;
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const long long r0 = (long long)blockIdx.x * FUSED_TILE_B;
    const int rows = (int)min((long long)FUSED_TILE_B, (long long)B - r0);
#ifdef FUSED_ATOMIC
    REAL* __restrict__ gpart = part;           // one buffer, zeroed by the launcher
#else
    REAL* __restrict__ gpart = part + (long long)blockIdx.x * net.n_params;
#endif

    // ---- output layer: a_L -> delta_L, C0 and argmax per row -----------------
    {
        const int n_out = net.dims[L], npad = fused_pad(n_out);
        const REAL* __restrict__ aL = act_out + net.act_off[L - 1];
        for (int e = tid; e < FUSED_TILE_B * npad; e += FUSED_THREADS) {
            const int r = e / npad, n = e % npad;
            D[r * ld + n] = (r < rows && n < n_out) ? aL[(r0 + r) * n_out + n] : (REAL)0;
        }
        __syncthreads();
        if (tid < FUSED_TILE_B) {
            REAL cost = (REAL)0;
            int ok = 0;
            if (tid < rows) {
                REAL* d = D + tid * ld;
                const REAL* __restrict__ y = Y + fused_row(idx, r0 + tid) * n_out;
                const int code = net.act[L - 1];
                int am = 0, ym = 0;
                for (int n = 1; n < n_out; ++n) {
                    if (d[n] > d[am]) am = n;
                    if (y[n] > y[ym]) ym = n;
                }
                ok = am == ym;
                if (loss == FUSED_LOSS_XENT) {
                    if (code == GB_ACT_SOFTMAX) {      // a is p already
                        for (int n = 0; n < n_out; ++n) {
                            const REAL a = d[n];
                            cost -= y[n] * fused_log(a > fused_tiny(a) ? a : fused_tiny(a));
                            d[n] = a - y[n];
                        }
                    } else {                           // identity logits: log-softmax
                        const REAL m = d[am];
                        REAL s = (REAL)0;
                        for (int n = 0; n < n_out; ++n)
                            s += gb_exp(d[n] - m);
                        const REAL lse = fused_log(s);
                        for (int n = 0; n < n_out; ++n) {
                            const REAL sh = d[n] - m;
                            cost -= y[n] * (sh - lse);
                            d[n] = gb_exp(sh) / s - y[n];
                        }
                    }
                } else {
                    REAL ga = (REAL)0;                 // sum_j g_j a_j (softmax VJP)
                    for (int n = 0; n < n_out; ++n) {
                        const REAL r = d[n] - y[n];
                        cost += r * r;
                        ga += (REAL)2 * r * d[n];
                    }
                    for (int n = 0; n < n_out; ++n) {
                        const REAL a = d[n], g = (REAL)2 * (a - y[n]);
                        d[n] = code == GB_ACT_SOFTMAX ? a * (g - ga) : g * gb_dsigma_from_a(a, code);
                    }
                }
            }
            row_cost[tid] = cost;
            row_ok[tid] = ok;
        }
        __syncthreads();
        if (tid == 0) {                        // fixed order: deterministic
            REAL c = (REAL)0;
            int k = 0;
            for (int r = 0; r < FUSED_TILE_B; ++r) {
                c += row_cost[r];
                k += row_ok[r];
            }
            cost_part[blockIdx.x] = c;
            correct_part[blockIdx.x] = k;
        }
    }

    // ---- every layer, last to first ----------------------------------------------
    for (int l = L - 1; l >= 0; --l) {
        const int n_in = net.dims[l], n_out = net.dims[l + 1];
        const int kpad = fused_pad(n_in), npad = fused_pad(n_out);
        const REAL* __restrict__ W = net.W[l];

        if (l > 0) {                           // a_l (the input of layer l) -> P
            const REAL* __restrict__ ap = act_out + net.act_off[l - 1];
            for (int e = tid; e < FUSED_TILE_B * kpad; e += FUSED_THREADS) {
                const int r = e / kpad, k = e % kpad;
                P[r * ld + k] = (r < rows && k < n_in) ? ap[(r0 + r) * n_in + k] : (REAL)0;
            }
            __syncthreads();
        }

        // weight-gradient partial of the tile: dW[n][k] = sum_r D[r][n] a[r][k]
        for (int k0 = 0; k0 < kpad; k0 += FUSED_KC) {
            const int kc = min(FUSED_KC, kpad - k0);
            if (l == 0) {
                __syncthreads();
                for (int e = tid; e < FUSED_TILE_B * FUSED_KC; e += FUSED_THREADS) {
                    const int r = e / FUSED_KC, kk = e % FUSED_KC, k = k0 + kk;
                    if (kk < kc)
                        Xc[r * (FUSED_KC + 1) + kk] =
                            (r < rows && k < n_in) ? X[fused_row(idx, r0 + r) * n_in + k] : (REAL)0;
                }
                __syncthreads();
            }
            const REAL* src = (l == 0) ? Xc : P + k0;
            const int lds = (l == 0) ? FUSED_KC + 1 : ld;
            REAL g[FUSED_TN][FUSED_KJ];
#pragma unroll
            for (int i = 0; i < FUSED_TN; ++i)
#pragma unroll
                for (int j = 0; j < FUSED_KJ; ++j)
                    g[i][j] = (REAL)0;
            for (int r = 0; r < rows; ++r) {   // sequential rows: the emulation's order
                REAL d[FUSED_TN], p[FUSED_KJ];
#pragma unroll
                for (int i = 0; i < FUSED_TN; ++i)
                    d[i] = (16 * i < npad) ? D[r * ld + ty + 16 * i] : (REAL)0;
#pragma unroll
                for (int j = 0; j < FUSED_KJ; ++j)
                    p[j] = (16 * j < kc) ? src[r * lds + tx + 16 * j] : (REAL)0;
#pragma unroll
                for (int i = 0; i < FUSED_TN; ++i)
                    if (16 * i < npad)
#pragma unroll
                        for (int j = 0; j < FUSED_KJ; ++j)
                            g[i][j] += d[i] * p[j];
            }
            REAL* __restrict__ gw = gpart + net.w_off[l];
#pragma unroll
            for (int i = 0; i < FUSED_TN; ++i) {
                const int n = ty + 16 * i;
#pragma unroll
                for (int j = 0; j < FUSED_KJ; ++j) {
                    const int k = k0 + tx + 16 * j;
                    if (n < n_out && 16 * j < kc && k < n_in) {
#ifdef FUSED_ATOMIC
                        atomicAdd(gw + (long long)n * n_in + k, g[i][j]);
#else
                        gw[(long long)n * n_in + k] = g[i][j];
#endif
                    }
                }
            }
        }
        if (tid < n_out) {                     // bias partial: rows in order
            REAL s = (REAL)0;
            for (int r = 0; r < rows; ++r)
                s += D[r * ld + tid];
#ifdef FUSED_ATOMIC
            atomicAdd(gpart + net.b_off[l] + tid, s);
#else
            gpart[net.b_off[l] + tid] = s;
#endif
        }

        if (l > 0) {
            // delta_{l-1}[r][k] = sum_n D[r][n] W[n][k] * sigma'(a[r][k]), into P
            REAL acc[FUSED_TM][FUSED_TN];
#pragma unroll
            for (int i = 0; i < FUSED_TM; ++i)
#pragma unroll
                for (int j = 0; j < FUSED_TN; ++j)
                    acc[i][j] = (REAL)0;
            for (int n0 = 0; n0 < npad; n0 += FUSED_KC) {
                const int nc = min(FUSED_KC, npad - n0);
                __syncthreads();
                for (int e = tid; e < FUSED_KC * kpad; e += FUSED_THREADS) {
                    const int nn = e / kpad, k = e % kpad, n = n0 + nn;
                    if (nn < nc)
                        Wc[nn * ld + k] = (n < n_out && k < n_in) ? W[(long long)n * n_in + k] : (REAL)0;
                }
                __syncthreads();
                for (int nn = 0; nn < nc; ++nn) {
                    REAL a[FUSED_TM], w[FUSED_TN];
#pragma unroll
                    for (int i = 0; i < FUSED_TM; ++i)
                        a[i] = D[(ty + 16 * i) * ld + n0 + nn];
#pragma unroll
                    for (int j = 0; j < FUSED_TN; ++j)
                        w[j] = (16 * j < kpad) ? Wc[nn * ld + tx + 16 * j] : (REAL)0;
#pragma unroll
                    for (int j = 0; j < FUSED_TN; ++j)
                        if (16 * j < kpad)
#pragma unroll
                            for (int i = 0; i < FUSED_TM; ++i)
                                acc[i][j] += a[i] * w[j];
                }
            }
            const int code = net.act[l - 1];
#pragma unroll
            for (int j = 0; j < FUSED_TN; ++j) {
                const int k = tx + 16 * j;
                if (16 * j < kpad) {
#pragma unroll
                    for (int i = 0; i < FUSED_TM; ++i) {
                        const int r = ty + 16 * i;
                        REAL* q = P + r * ld + k;
                        *q = (k < n_in && r < rows) ? acc[i][j] * gb_dsigma_from_a(*q, code)
                                                    : (REAL)0;
                    }
                }
            }
            __syncthreads();
            REAL* t = D;
            D = P;
            P = t;
        }
    }
}

extern "C" __global__ void __launch_bounds__(FUSED_THREADS, FUSED_MIN_BLOCKS)
fused_reduce_sgd(const REAL* __restrict__ part, int T, int L,
                 const long long* __restrict__ ptrs, const long long* __restrict__ vptrs,
                 const int* __restrict__ dims, REAL scale, REAL lr, REAL mu, REAL wd,
                 int mode, REAL* __restrict__ grad_out)
{
    __shared__ long long seg_off[2 * FUSED_MAX_LAYERS + 1];
    if (threadIdx.x == 0) {
        long long off = 0;
        for (int l = 0; l < L; ++l) {
            seg_off[2 * l] = off;
            off += (long long)dims[l + 1] * dims[l];
            seg_off[2 * l + 1] = off;
            off += dims[l + 1];
        }
        seg_off[2 * L] = off;
    }
    __syncthreads();
    const long long P = seg_off[2 * L];
    for (long long p = (long long)blockIdx.x * FUSED_THREADS + threadIdx.x; p < P;
         p += (long long)gridDim.x * FUSED_THREADS) {
        REAL g = (REAL)0;
        for (int t = 0; t < T; ++t)            // tiles in a fixed order
            g += part[(long long)t * P + p];
        g *= scale;
        if (mode == FUSED_MODE_GRAD) {
            grad_out[p] = g;
            continue;
        }
        int s = 0;
        while (seg_off[s + 1] <= p)
            ++s;
        const long long e = p - seg_off[s];
        REAL* w = reinterpret_cast<REAL*>(ptrs[s]) + e;
        const REAL wv = *w;
        if (wd != (REAL)0)
            g += wd * wv;
        if (mu != (REAL)0) {
            REAL* v = reinterpret_cast<REAL*>(vptrs[s]) + e;
            const REAL vn = mu * *v + g;
            *v = vn;
            g = vn;
        }
        *w = wv - lr * g;
    }
}
