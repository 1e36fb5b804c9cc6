"""Costs C and the output error they start backpropagation with.

Per example, with output a and target y (both (n_out,)):

    sse / quadratic   C0 = sum_j (a_j - y_j)^2          dC0/da = 2 (a - y)
    mse               C0 = sum_j (a_j - y_j)^2          (same C0; the batch cost
                      divides by batch * n_out, as PyTorch's MSELoss)
    cross_entropy     C0 = -sum_j y_j log p_j,  p = softmax(z_L)
                      delta_L = p - y   (softmax fused with the log-likelihood)

The cost of a batch is the mean over examples (reduction="mean") or the
plain sum (reduction="sum"); `scale` is the factor that turns the sum of the
per-example gradients into the batch gradient.
"""
from .checks import choice

REDUCTIONS = ("mean", "sum")
_ALIASES = {"quadratic": "sse", "ce": "cross_entropy"}


class Loss:
    """A cost function.  `name` is canonical ("sse", "mse", "cross_entropy")."""

    #: per-element cost codes for the compiled kernels
    CODES = {"sse": 0, "mse": 0, "cross_entropy": 1}

    def __init__(self, name, reduction="mean"):
        self.name = name
        self.reduction = choice("reduction", reduction, REDUCTIONS)
        self.code = self.CODES[name]

    def scale(self, batch, n_out):
        """Factor turning sum over examples of per-example gradients into dC/dparam."""
        if self.reduction == "sum":
            return 1.0
        if self.name == "mse":
            return 1.0 / (batch * n_out)
        return 1.0 / batch

    def metrics(self, total, correct, n, n_out, prefix=""):
        """{prefix + "loss": the mean cost per example (per element for mse),
        prefix + "accuracy": the fraction right (classifiers)} from the sums
        over n examples of C0 and of the rows classified right."""
        from .device import to_host

        out = {prefix + "loss": Loss(self.name, "mean").scale(n, n_out) * float(to_host(total))}
        if n_out > 1:
            out[prefix + "accuracy"] = float(to_host(correct)) / n
        return out

    def check_output(self, activation):
        """Cross entropy needs a softmax output, or identity logits it softmaxes."""
        if self.name == "cross_entropy" and activation not in ("softmax", "identity"):
            raise ValueError(
                "loss='cross_entropy' needs the output layer's activation to be "
                f"'softmax' (or 'identity' logits); got {activation!r}")

    def probabilities(self, a, activation, xp):
        """Class probabilities p for cross entropy (a itself for a softmax output)."""
        if activation == "softmax":
            return a
        from .activations import apply

        return apply("softmax", a, xp)

    def value(self, a, y, activation, xp):
        """The batch cost C (an xp scalar: no host sync)."""
        return self.total(a, y, activation, xp) * self.scale(a.shape[0], a.shape[1])

    def total(self, a, y, activation, xp):
        """Sum over the batch of the per-example costs C0 (an xp scalar)."""
        if self.name == "cross_entropy":
            if activation == "softmax":
                tiny = xp.finfo(a.dtype).tiny
                total = -(y * xp.log(xp.maximum(a, tiny))).sum()
            else:  # identity logits: log softmax, stable
                shifted = a - a.max(axis=1, keepdims=True)
                logp = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
                total = -(y * logp).sum()
        else:
            r = a - y
            total = (r * r).sum()
        return total

    def dC0_da(self, a, y):
        """Per-example dC0/da for the squared costs: 2 (a - y)."""
        return 2.0 * (a - y)

    def __repr__(self):
        return f"Loss({self.name!r}, reduction={self.reduction!r})"


def get(loss, reduction="mean"):
    """A Loss from a name ('sse', 'quadratic', 'mse', 'cross_entropy') or a Loss."""
    if isinstance(loss, Loss):
        if reduction != loss.reduction:
            return Loss(loss.name, reduction)
        return loss
    if isinstance(loss, str):
        loss = _ALIASES.get(loss.lower(), loss)
    name = choice("loss", loss, ("sse", "mse", "cross_entropy", "quadratic"))
    return Loss(_ALIASES.get(name, name), reduction)
