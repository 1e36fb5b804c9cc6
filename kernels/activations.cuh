// Activation functions sigma(z) and their derivatives written from the output
// a = sigma(z), for the gpubackprop kernels.
//
// The integer codes GB_ACT_<NAME> and GB_LEAKY_SLOPE are injected with -D
// from gpubackprop/activations.py (CODES, LEAKY_SLOPE) by
// gpubackprop.kernels.activation_defines: that table is the only copy.  Softmax (code 6) is row-wise, so it is not handled here: the launchers
// run the GEMM with identity and apply softmax afterwards.
//
//   code  name         sigma(z)                          sigma'(z) from a
//   0     identity     z                                 1
//   1     sigmoid      1/(1+e^-z), computed stably       a (1 - a)
//   2     tanh         tanh(z)                           1 - a^2
//   3     relu         max(z, 0)                         a > 0 ? 1 : 0
//   4     leaky_relu   z > 0 ? z : 0.01 z                a > 0 ? 1 : 0.01
//   5     softplus     max(z,0) + log1p(e^-|z|)          -expm1(-a)  (= 1 - e^-a)
//
// The functions are templates on the element type T (float or double); the
// overloads below pick the single- or double-precision libdevice function, so
// a float kernel never promotes to double.  The same text is the preamble of
// the CuPy element-wise kernels of backends/cupy_backend.py (T = the array
// dtype) and is included by the RawModule kernels (T = REAL).  It includes
// nothing, so NVRTC needs no include path for it.
#ifndef GPUBACKPROP_ACTIVATIONS_CUH
#define GPUBACKPROP_ACTIVATIONS_CUH

#if !defined(GB_ACT_IDENTITY) || !defined(GB_ACT_SIGMOID) || !defined(GB_ACT_TANH) || !defined(GB_ACT_RELU) || !defined(GB_ACT_LEAKY_RELU) || !defined(GB_ACT_SOFTPLUS) || !defined(GB_ACT_SOFTMAX) || !defined(GB_LEAKY_SLOPE)
#error "compile with the -D defines of activations.CODES (gpubackprop.kernels.defines): GB_ACT_IDENTITY, GB_ACT_SIGMOID, GB_ACT_TANH, GB_ACT_RELU, GB_ACT_LEAKY_RELU, GB_ACT_SOFTPLUS, GB_ACT_SOFTMAX, GB_LEAKY_SLOPE"
#endif

__device__ __forceinline__ float gb_exp(float x) { return expf(x); }
__device__ __forceinline__ double gb_exp(double x) { return exp(x); }
__device__ __forceinline__ float gb_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gb_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float gb_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double gb_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float gb_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double gb_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float gb_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double gb_abs(double x) { return fabs(x); }

// a = sigma(z) for the element-wise activation `code`
template <typename T>
__device__ __forceinline__ T gb_sigma(T z, int code)
{
    const T zero = (T)0, one = (T)1;
    switch (code) {
    case GB_ACT_SIGMOID: {
        // e = e^-|z| never overflows; 1/(1+e) for z >= 0, e/(1+e) for z < 0
        const T e = gb_exp(-gb_abs(z));
        const T r = one / (one + e);
        return z >= zero ? r : e * r;
    }
    case GB_ACT_TANH:
        return gb_tanh(z);
    case GB_ACT_RELU:
        return z > zero ? z : zero;
    case GB_ACT_LEAKY_RELU:
        return z > zero ? z : (T)GB_LEAKY_SLOPE * z;
    case GB_ACT_SOFTPLUS:
        return (z > zero ? z : zero) + gb_log1p(gb_exp(-gb_abs(z)));
    default:  // identity (and softmax, applied by the launcher afterwards)
        return z;
    }
}

// sigma'(z) written in terms of a = sigma(z)
template <typename T>
__device__ __forceinline__ T gb_dsigma_from_a(T a, int code)
{
    const T zero = (T)0, one = (T)1;
    switch (code) {
    case GB_ACT_SIGMOID:
        return a * (one - a);
    case GB_ACT_TANH:
        return one - a * a;
    case GB_ACT_RELU:
        return a > zero ? one : zero;
    case GB_ACT_LEAKY_RELU:
        return a > zero ? one : (T)GB_LEAKY_SLOPE;
    case GB_ACT_SOFTPLUS:
        return -gb_expm1(-a);
    default:  // identity
        return one;
    }
}

#endif  // GPUBACKPROP_ACTIVATIONS_CUH
