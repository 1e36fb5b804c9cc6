"""scikit-learn estimators over gpubackprop's MLP and Trainer.

    from gpubackprop.sklearn import MLPClassifier, MLPRegressor
    clf = MLPClassifier(hidden_layer_sizes=(30,), activation="sigmoid", loss="sse",
                        learning_rate=3.0, batch_size=10, epochs=30, device="auto")
    clf.fit(X, y).score(X_test, y_test); clf.predict_proba(X_test)

They pass sklearn.utils.estimator_checks.check_estimator and work in a
Pipeline or GridSearchCV.  Parameters named as scikit-learn's mean the same
(hidden_layer_sizes, activation, batch_size, momentum, random_state,
early_stopping, validation_fraction, n_iter_no_change); `learning_rate` is
SGD's step size (scikit-learn's learning_rate_init), `epochs` the number of
passes (its max_iter), `weight_decay` the L2 term (alpha, as PyTorch adds it
to the gradient).  device="auto" trains on the first GPU when CuPy finds
one, else on the CPU.  scikit-learn is needed only to import this module.
"""
import numbers

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, column_or_1d
except ImportError:  # pragma: no cover - exercised without scikit-learn
    raise ImportError("gpubackprop.sklearn needs scikit-learn: pip install scikit-learn") \
        from None

try:                                    # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:                     # older: the estimator's own method
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)


def _resolve_device(device):
    """'auto' -> the first GPU if one is usable, else 'cpu' (quietly: an
    estimator is fitted many times, in a grid search for one)."""
    if device != "auto":
        return device
    from .device import cuda_status

    return "cuda:0" if cuda_status()[0] else "cpu"


class _MLPBase(BaseEstimator):
    """What both estimators share: building the network, training, early
    stopping.  Subclasses give _default_output(loss) and _validation_score."""

    def _build(self, n_in, n_out):
        import gpubackprop as gb
        from .checks import boolean, positive_int, real

        boolean("early_stopping", self.early_stopping)     # as scikit-learn checks them
        real("validation_fraction", self.validation_fraction, low=0.0, high=1.0,
             high_open=True)
        positive_int("n_iter_no_change", self.n_iter_no_change)
        real("tol", self.tol, low=0.0)
        sizes = [n_in, *self._hidden(), n_out]
        seed = self._seed()
        output = self.output_activation or self._default_output(self.loss)
        self.net_ = gb.MLP.from_sizes(sizes, activation=self.activation,
                                      output_activation=output,
                                      device=_resolve_device(self.device), dtype=self.dtype,
                                      backend=self.backend, seed=seed)
        optimizer = gb.SGD(lr=self.learning_rate, momentum=self.momentum,
                           weight_decay=self.weight_decay)
        self.trainer_ = gb.Trainer(self.net_, loss=self.loss, optimizer=optimizer,
                                   batch_size=self.batch_size, seed=seed)
        self.loss_curve_, self.validation_scores_, self.n_iter_ = [], [], 0
        self.best_validation_score_ = None

    def _hidden(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = (sizes,)
        sizes = list(sizes)
        if not all(isinstance(n, numbers.Integral) and n >= 1 for n in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers; got "
                             f"{self.hidden_layer_sizes!r}")
        return [int(n) for n in sizes]

    def _seed(self):
        if isinstance(self.random_state, numbers.Integral) and self.random_state >= 0:
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(2 ** 31 - 1))

    def _train(self, X, Y, epochs, split=True):
        """`epochs` epochs on (X, Y) (rows of targets); with early_stopping a
        held-out fraction decides when to stop and which parameters to keep."""
        batch = min(self.batch_size, len(X))        # as scikit-learn clips it
        self.trainer_.batch_size = batch
        if not (self.early_stopping and split):
            for r in self.trainer_.fit(X, Y, epochs=epochs, progress=False)[-epochs:]:
                self._record(r)
            return
        rng = check_random_state(self._seed())
        n_val = max(1, int(round(self.validation_fraction * len(X))))
        if n_val >= len(X):
            raise ValueError(f"validation_fraction={self.validation_fraction} leaves no "
                             f"training examples out of {len(X)}")
        order = rng.permutation(len(X))
        val, train = order[:n_val], order[n_val:]
        self.trainer_.batch_size = min(batch, len(train))
        best, best_params, waited = -np.inf, None, 0
        for _ in range(epochs):
            self._record(self.trainer_.fit(X[train], Y[train], epochs=1, progress=False)[-1])
            score = self._validation_score(X[val], Y[val])
            self.validation_scores_.append(score)
            if score > best + self.tol:
                best, waited = score, 0
                best_params = [(W.copy(), b.copy()) for W, b in self.net_.params]
            else:
                waited += 1
                if waited >= self.n_iter_no_change:
                    break
        self.best_validation_score_ = best
        for (W, b), (W0, b0) in zip(self.net_.params, best_params):
            W[...], b[...] = W0, b0

    def _record(self, record):
        self.loss_curve_.append(record["loss"])
        self.n_iter_ += 1

    def _forward(self, X):
        from .device import to_host

        check_is_fitted(self, "net_")
        X = _validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return np.asarray(to_host(self.net_.forward(X)), dtype=np.float64)

    # -- pickling: the network as its arrays (a trained model moves between
    # -- machines; the optimizer's momentum starts over after unpickling) --------
    def __getstate__(self):
        state = self.__dict__.copy()
        net = state.pop("net_", None)
        state.pop("trainer_", None)
        if net is not None:
            state["_network"] = (net.activations, net.dtype, net.state_arrays())
        return state

    def __setstate__(self, state):
        network = state.pop("_network", None)
        self.__dict__.update(state)
        if network is not None:
            import gpubackprop as gb

            acts, dtype, arrays = network
            layers = [gb.Dense(arrays[f"W{i}"].shape[1], arrays[f"W{i}"].shape[0], act,
                               W=arrays[f"W{i}"], b=arrays[f"b{i}"])
                      for i, act in enumerate(acts)]
            self.net_ = gb.MLP(layers, device=_resolve_device(self.device), dtype=dtype,
                               backend=self.backend)
            self.trainer_ = gb.Trainer(
                self.net_, loss=self.loss, batch_size=self.batch_size, seed=self._seed(),
                optimizer=gb.SGD(lr=self.learning_rate, momentum=self.momentum,
                                 weight_decay=self.weight_decay))


_PARAMS_DOC = """
    hidden_layer_sizes  tuple of hidden layer widths, e.g. (30,) or (100, 50)
    activation          hidden layers: sigmoid | tanh | relu | leaky_relu | softplus | identity
    output_activation   None: what the loss needs (see the class)
    loss                sse | mse | cross_entropy (gpubackprop.losses)
    learning_rate       SGD step size (scikit-learn's learning_rate_init)
    batch_size          examples per SGD step (clipped to the data's size)
    epochs              passes over the data in fit (scikit-learn's max_iter)
    momentum, weight_decay   SGD's (weight_decay is scikit-learn's alpha)
    early_stopping, validation_fraction, n_iter_no_change, tol
                        stop when the score on the held-out fraction stops improving
    device, backend, dtype   where and how to train (gpubackprop.MLP)
    random_state        int seed, None or a RandomState
"""


def _store_params(estimator, given):
    """Keep every __init__ argument as an attribute of the same name, unchanged
    (scikit-learn's convention: checks happen in fit)."""
    for name, value in given.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


class MLPClassifier(ClassifierMixin, _MLPBase):
    __doc__ = ("A multilayer perceptron classifier trained by gpubackprop's SGD.\n"
               "Outputs: sigmoid for sse/mse, softmax for cross_entropy; predict_proba\n"
               "normalises the outputs to sum to one.\n" + _PARAMS_DOC)

    def __init__(self, hidden_layer_sizes=(30,), activation="sigmoid", output_activation=None,
                 loss="sse", learning_rate=3.0, batch_size=10, epochs=30, momentum=0.0,
                 weight_decay=0.0, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, device="auto", backend="auto",
                 dtype="float64", random_state=None):
        _store_params(self, locals())

    @staticmethod
    def _default_output(loss):
        return "softmax" if loss in ("cross_entropy", "ce") else "sigmoid"

    def fit(self, X, y):
        """Train a new network for `epochs` epochs; returns self.  y: class
        labels (n_samples,) or one-hot rows (n_samples, n_classes), then
        predict answers in one-hot rows too."""
        X, y = self._check_Xy(X, y, reset=True)
        self._one_hot_y = y.ndim == 2
        self.classes_ = np.arange(y.shape[1]) if self._one_hot_y else np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs at least 2 classes in y; got 1 class "
                             f"({self.classes_[0]!r})")
        self._build(X.shape[1], len(self.classes_))
        self._train(X, self._one_hot(y), self.epochs)
        return self

    def partial_fit(self, X, y, classes=None):
        """One epoch on (X, y); the first call needs `classes` (all labels),
        unless y is one-hot (its columns are the classes)."""
        first = not hasattr(self, "net_")
        X, y = self._check_Xy(X, y, reset=first)
        if first:
            self._one_hot_y = y.ndim == 2
            if classes is None and not self._one_hot_y:
                raise ValueError("classes must be given on the first call to partial_fit "
                                 "(every label the data may hold)")
            self.classes_ = np.arange(y.shape[1]) if classes is None else np.unique(classes)
            if len(self.classes_) < 2:
                raise ValueError("MLPClassifier needs at least 2 classes")
            self._build(X.shape[1], len(self.classes_))
        elif self._one_hot_y != (y.ndim == 2):
            raise ValueError("y must be given as the first call gave it: "
                             + ("one-hot rows" if self._one_hot_y else "class labels (n_samples,)"))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes {list(np.unique(classes))} differ from the first "
                             f"call's {list(self.classes_)}")
        self._train(X, self._one_hot(y), 1, split=False)
        return self

    def _check_Xy(self, X, y, reset):
        """(X, y) checked as scikit-learn does; a 2-D y must be one-hot rows
        (a column vector is labels, with scikit-learn's warning)."""
        X, y = _validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32],
                              multi_output=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if y.ndim == 2:
            ones = (y == 1).sum(axis=1)
            if not (np.isin(y, (0, 1)).all() and (ones == 1).all()):
                raise ValueError(f"y of shape {y.shape} must be one-hot rows (a single 1 in "
                                 f"each, zeros elsewhere) or class labels (n_samples,); "
                                 f"multi-label targets are not supported")
        return X, y

    def _one_hot(self, y):
        if y.ndim == 2:
            if y.shape[1] != len(self.classes_):
                raise ValueError(f"y has {y.shape[1]} one-hot columns; the classifier has "
                                 f"{len(self.classes_)} classes")
            return np.asarray(y, dtype=np.float64)
        idx = np.searchsorted(self.classes_, y)
        if np.any(idx >= len(self.classes_)) or np.any(self.classes_[idx % len(self.classes_)]
                                                        != y):
            unknown = sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))
            raise ValueError(f"y holds labels not in classes_: {unknown}")
        Y = np.zeros((len(y), len(self.classes_)))
        Y[np.arange(len(y)), idx] = 1.0
        return Y

    def _validation_score(self, X, Y):
        return float(np.mean(self._forward(X).argmax(axis=1) == Y.argmax(axis=1)))

    def predict_proba(self, X):
        """(n_samples, n_classes) class probabilities, columns as classes_."""
        a = self._forward(X)
        if (self.output_activation or self._default_output(self.loss)) == "softmax":
            return a
        if self.net_.layers[-1].activation == "identity":       # logits
            a = np.exp(a - a.max(axis=1, keepdims=True))
        a = np.clip(a, 0.0, None)
        total = a.sum(axis=1, keepdims=True)
        return np.where(total > 0, a / np.where(total > 0, total, 1.0), 1.0 / a.shape[1])

    def predict(self, X):
        """The class of the largest output, as a label of classes_ (as a
        one-hot row where fit was given one-hot rows)."""
        k = self._forward(X).argmax(axis=1)
        if getattr(self, "_one_hot_y", False):
            return np.eye(len(self.classes_), dtype=np.int64)[k]
        return self.classes_[k]


class MLPRegressor(RegressorMixin, _MLPBase):
    __doc__ = ("A multilayer perceptron regressor trained by gpubackprop's SGD\n"
               "(identity output, mean squared error by default).\n" + _PARAMS_DOC)

    def __init__(self, hidden_layer_sizes=(30,), activation="tanh", output_activation=None,
                 loss="mse", learning_rate=0.01, batch_size=10, epochs=100, momentum=0.0,
                 weight_decay=0.0, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, tol=1e-4, device="auto", backend="auto",
                 dtype="float64", random_state=None):
        _store_params(self, locals())

    @staticmethod
    def _default_output(loss):
        return "identity"

    def fit(self, X, y):
        """Train a new network for `epochs` epochs; returns self."""
        X, y = _validate_data(self, X, y, multi_output=True, y_numeric=True,
                              dtype=[np.float64, np.float32])
        Y = self._targets(y, first=True)
        self._build(X.shape[1], Y.shape[1])
        self._train(X, Y, self.epochs)
        return self

    def partial_fit(self, X, y):
        """One epoch on (X, y) (a new network on the first call)."""
        first = not hasattr(self, "net_")
        X, y = _validate_data(self, X, y, reset=first, multi_output=True, y_numeric=True,
                              dtype=[np.float64, np.float32])
        Y = self._targets(y, first)
        if first:
            self._build(X.shape[1], Y.shape[1])
        self._train(X, Y, 1, split=False)
        return self

    def _targets(self, y, first):
        """y as rows of standardised targets: the network learns (y - mean) / std
        (the step size then does not depend on y's units); predict undoes it."""
        Y = np.asarray(y, dtype=np.float64)
        if first:
            Y = Y.reshape(len(Y), -1)
            self._y_mean = Y.mean(axis=0)
            std = Y.std(axis=0)
            self._y_scale = np.where(std > 0, std, 1.0)
        return (Y.reshape(len(Y), -1) - self._y_mean) / self._y_scale

    def _validation_score(self, X, Y):
        from sklearn.metrics import r2_score

        return float(r2_score(Y, self._forward(X)))

    def predict(self, X):
        """(n_samples,) predictions for one target (as scikit-learn's, however
        y was given), else (n_samples, n_targets)."""
        out = self._forward(X) * self._y_scale + self._y_mean
        return out[:, 0] if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):              # scikit-learn < 1.6
        return {"multioutput": True}
