"""Activation functions sigma and their derivatives: one table.

Backward needs sigma'(z).  For every activation here sigma'(z) can be written
in terms of the output a = sigma(z) alone, so the forward pass keeps only `a`
(half the memory of keeping `z` too) and every backend computes the derivative
from `a`:

    sigmoid     a = 1 / (1 + e^-z)      sigma'(z) = a (1 - a)
    tanh        a = tanh(z)             sigma'(z) = 1 - a^2
    relu        a = max(z, 0)           sigma'(z) = 1 if a > 0 else 0
    leaky_relu  a = z if z > 0 else s z sigma'(z) = 1 if a > 0 else s   (s = 0.01)
    softplus    a = log(1 + e^z)        sigma'(z) = sigmoid(z) = 1 - e^-a
    identity    a = z                   sigma'(z) = 1
    softmax     a = e^z / sum e^z       output layer only (a Jacobian, not a scalar)

TABLE holds one Activation per name: its integer `code` (compiled kernels
switch on it), its scalar math `sigma(z)` and `dsigma(a)` as plain Python on
one number (numba's njit and numba.cuda.jit compile these same functions:
see `dispatcher`), and optionally whole-array forms for NumPy/CuPy (written
for numerical stability or speed; without them the scalar forms are
vectorised).  Adding an activation is one more row in the list registered
below (or `register(Activation(...))` at run time, as tests/test_activations.py
does); the compiled CPU epoch and the GPU kernels take it from here.
"""
import math
from typing import Callable, NamedTuple, Optional

LEAKY_SLOPE = 0.01


class Activation(NamedTuple):
    """One row of the table.  sigma(z) -> a and dsigma(a) -> sigma'(z) act on
    one number (math module only, so every compiler takes them); apply_xp(z,
    xp, out) and derivative_xp(a, xp) are optional array forms."""
    name: str
    code: int
    sigma: Optional[Callable]
    dsigma: Optional[Callable]
    apply_xp: Optional[Callable] = None
    derivative_xp: Optional[Callable] = None


# -- scalar math (compiled by numba for the CPU epoch and the GPU kernels) -----
def _identity(z):
    return z


def _one(a):
    return 1.0


def _sigmoid(z):
    if z >= 0:                       # e^-z never overflows on either branch
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _dsigmoid(a):
    return a * (1.0 - a)


def _tanh(z):
    return math.tanh(z)


def _dtanh(a):
    return 1.0 - a * a


def _relu(z):
    return z if z > 0 else 0.0


def _drelu(a):
    return 1.0 if a > 0 else 0.0


def _leaky_relu(z):
    return z if z > 0 else LEAKY_SLOPE * z


def _dleaky_relu(a):
    return 1.0 if a > 0 else LEAKY_SLOPE


def _softplus(z):
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))     # stable for any z


def _dsoftplus(a):
    return -math.expm1(-a)           # sigmoid(z) = 1 - e^-a, precise for small a


# -- array forms of the built-ins (NumPy or CuPy, written in place) ------------
def _sigmoid_xp(z, xp, out):
    # 1/(1+e^-z) overflows e^-z for very negative z; e^-softplus(-z) is exact
    xp.logaddexp(0.0, -z, out=out)
    xp.negative(out, out=out)
    return xp.exp(out, out=out)


def _leaky_relu_xp(z, xp, out):
    return xp.multiply(z, xp.where(z > 0, 1.0, LEAKY_SLOPE).astype(z.dtype), out=out)


def _softmax_xp(z, xp, out):
    xp.subtract(z, z.max(axis=1, keepdims=True), out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _copy(z, xp, out):
    out[...] = z
    return out


TABLE = {}


def register(activation):
    """Add (or replace) a row of TABLE; CODES, NAMES and HIDDEN_NAMES follow."""
    global NAMES, HIDDEN_NAMES
    other = {e.code: n for n, e in TABLE.items() if n != activation.name}
    if activation.code in other:
        raise ValueError(f"activation code {activation.code} is taken by {other[activation.code]!r}")
    TABLE[activation.name] = activation
    CODES.clear()
    CODES.update((n, e.code) for n, e in TABLE.items())
    NAMES = tuple(TABLE)
    HIDDEN_NAMES = tuple(n for n in NAMES if n != "softmax")


def unregister(name):
    """Remove a row added by register (tests restore the table with it)."""
    global NAMES, HIDDEN_NAMES
    del TABLE[name]
    del CODES[name]
    NAMES = tuple(TABLE)
    HIDDEN_NAMES = tuple(n for n in NAMES if n != "softmax")


CODES = {}       # name -> code, kept equal to TABLE by register
NAMES = HIDDEN_NAMES = ()
for _row in (
        Activation("identity", 0, _identity, _one, _copy, lambda a, xp: xp.ones_like(a)),
        Activation("sigmoid", 1, _sigmoid, _dsigmoid, _sigmoid_xp),
        Activation("tanh", 2, _tanh, _dtanh, lambda z, xp, out: xp.tanh(z, out=out)),
        Activation("relu", 3, _relu, _drelu, lambda z, xp, out: xp.maximum(z, 0, out=out),
                   lambda a, xp: (a > 0).astype(a.dtype)),
        Activation("leaky_relu", 4, _leaky_relu, _dleaky_relu, _leaky_relu_xp,
                   lambda a, xp: xp.where(a > 0, 1.0, LEAKY_SLOPE).astype(a.dtype)),
        # log(1 + e^z) = max(z, 0) + log1p(e^-|z|), stable for any z
        Activation("softplus", 5, _softplus, _dsoftplus,
                   lambda z, xp, out: xp.logaddexp(z, 0.0, out=out),
                   lambda a, xp: -xp.expm1(-a)),
        Activation("softmax", 6, None, None, _softmax_xp)):
    register(_row)


def check_name(name, argument="activation", allow_softmax=True):
    """Return the canonical activation name, or raise ValueError with a hint."""
    from .checks import choice

    return choice(argument, name, NAMES if allow_softmax else HIDDEN_NAMES)


def apply(name, z, xp, out=None):
    """a = sigma(z), element-wise (row-wise for softmax).  z: (batch, n)."""
    if out is None:
        out = xp.empty_like(z)
    row = TABLE[name]
    if row.apply_xp is not None:
        return row.apply_xp(z, xp, out)
    out[...] = _vectorized(row.sigma, xp)(z)
    return out


def derivative(name, a, xp):
    """sigma'(z) written in terms of a = sigma(z).  Not defined for softmax."""
    row = TABLE[name]
    if row.dsigma is None:
        raise ValueError(f"sigma'(z) of {name!r} is not element-wise")
    if row.derivative_xp is not None:
        return row.derivative_xp(a, xp)
    return _vectorized(row.dsigma, xp)(a).astype(a.dtype, copy=False)


def backprop(name, g, a, xp):
    """Multiply the upstream gradient g = dC/da by da/dz, giving dC/dz.

    Element-wise activations: g * sigma'(z).  Softmax: the vector-Jacobian
    product a * (g - sum_j g_j a_j), row by row.
    """
    if name == "softmax":
        return a * (g - (g * a).sum(axis=1, keepdims=True))
    if name == "identity":
        return g
    return g * derivative(name, a, xp)


_VECTORIZED = {}


def _vectorized(fn, xp):
    """The scalar `fn` as an array function of `xp`: a numba ufunc for NumPy
    (compiled per dtype on first use), xp.vectorize otherwise (CuPy)."""
    key = (fn, xp.__name__)
    if key not in _VECTORIZED:
        if xp.__name__ == "numpy":
            import numba

            _VECTORIZED[key] = numba.vectorize(fn)
        else:
            _VECTORIZED[key] = xp.vectorize(fn)
    return _VECTORIZED[key]


def dispatcher(which, compile, wrap=None):
    """`which(code, x)`, which = "sigma" or "dsigma", over every element-wise
    row of the table, compiled with `compile` (numba.njit,
    numba.cuda.jit(device=True)): the if-chain on `code` that compiled kernels
    call, built from TABLE so a new row needs no kernel edit.  `wrap(fn)`, if
    given, makes what a branch calls from a row's scalar function (say, a
    loop applying it to a whole array x); without it an unknown code gives NaN.
    The function is named after the table (its fingerprint): compiled code
    cached by another process from another table keeps another name."""
    function = f"{which}_{fingerprint():x}"
    namespace, lines = {"nan": math.nan}, [f"def {function}(code, x):"]
    for name, row in TABLE.items():
        fn = getattr(row, which)
        if fn is not None:
            namespace[f"{which}_{name}"] = (wrap or compile)(fn)
            lines.append(f"    if code == {row.code}:\n        return {which}_{name}(x)")
    lines.append("    return x" if wrap else "    return nan")
    exec("\n".join(lines), namespace)        # noqa: S102 - source built from the table
    return compile(namespace[function])


def code_key(fn):
    """A scalar function's math as text (its bytecode, constants and names):
    the same text, the same function, in any process."""
    if fn is None:
        return "-"
    c = fn.__code__
    consts = tuple(k for k in c.co_consts if not hasattr(k, "co_code"))
    return repr((c.co_code, consts, c.co_names))


def fingerprint():
    """A stable integer naming the table's codes and scalar math (their
    bytecode), so a compiled-code cache built from another table is noticed."""
    import hashlib

    text = repr([LEAKY_SLOPE] + [(n, r.code, code_key(r.sigma), code_key(r.dsigma))
                                  for n, r in TABLE.items()])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")
