// <mma.h> on the cuda-emulator: nvcuda::wmma for the shapes the kernels use.
//
// Every fragment is held whole by every thread of the warp (x[] is the whole
// row-major M x K, K x N or M x N matrix), so load/mma/store are plain loops
// each thread runs redundantly, and a kernel's element-wise loops over
// num_elements (such as the TF32 rounding) touch every element.  Products
// accumulate in float, k in order.  __float_to_tf32 rounds as cvt.rna.tf32.f32:
// to the nearest 10-bit mantissa, ties away from zero.
#ifndef GPUBACKPROP_CPU_MMA_H
#define GPUBACKPROP_CPU_MMA_H

#include <string.h>
#include <stdint.h>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}

// TF32: keep sign, exponent and the top 10 mantissa bits, rounding the rest
// to nearest, ties away from zero (cvt.rna); inf and NaN unchanged
inline float __float_to_tf32(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) != 0x7F800000u) {
        u += 0x1000u;
        u &= 0xFFFFE000u;
    }
    float y;
    memcpy(&y, &u, 4);
    return y;
}

template <class Use, int M, int N, int K> struct dims;
template <int M, int N, int K> struct dims<matrix_a, M, N, K> { enum { R = M, C = K }; };
template <int M, int N, int K> struct dims<matrix_b, M, N, K> { enum { R = K, C = N }; };
template <int M, int N, int K> struct dims<accumulator, M, N, K> { enum { R = M, C = N }; };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 8,
                  "kernels/cpu/mma.h emulates the m16n16k8 (TF32) shape only");
    enum { rows = dims<Use, M, N, K>::R, cols = dims<Use, M, N, K>::C };
    enum { num_elements = rows * cols };
    float x[num_elements];   // row-major rows x cols, whatever the memory layout
};

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v)
{
    for (int i = 0; i < f.num_elements; ++i)
        f.x[i] = v;
}

template <class Use, int M, int N, int K, class T>
inline void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const float* p, unsigned ld)
{
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c)
            f.x[r * f.cols + c] = p[(long)r * ld + c];
}

template <class Use, int M, int N, int K, class T>
inline void load_matrix_sync(fragment<Use, M, N, K, T, col_major>& f, const float* p, unsigned ld)
{
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c)
            f.x[r * f.cols + c] = p[(long)c * ld + r];
}

template <int M, int N, int K, class T>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, T>& f, unsigned ld,
                              layout_t layout)
{
    for (int r = 0; r < f.rows; ++r)
        for (int c = 0; c < f.cols; ++c) {
            const long at = layout == mem_row_major ? (long)r * ld + c : (long)c * ld + r;
            p[at] = f.x[r * f.cols + c];
        }
}

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d,
                     const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b,
                     const fragment<accumulator, M, N, K, TC>& c)
{
    float out[M * N];
    for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
            float s = c.x[i * N + j];
            for (int k = 0; k < K; ++k)
                s += a.x[i * K + k] * b.x[k * N + j];
            out[i * N + j] = s;
        }
    for (int i = 0; i < M * N; ++i)
        d.x[i] = out[i];
}

}  // namespace wmma
}  // namespace nvcuda

#endif  // GPUBACKPROP_CPU_MMA_H
