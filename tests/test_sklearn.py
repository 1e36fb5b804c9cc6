"""The scikit-learn estimators: check_estimator, labels, Pipeline and
GridSearchCV, partial_fit, early stopping, pickling, and the same accuracy
as `gpubackprop train` with the same recipe."""
import pickle
import subprocess
import sys

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
# check_estimator skips its pandas and array-API checks when those are absent
pytestmark = pytest.mark.filterwarnings("ignore:Skipping check")

import gpubackprop as gb                                     # noqa: E402
from gpubackprop.cli import main                             # noqa: E402
from gpubackprop.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return gb.data.load("digits", seed=0, dtype="float64")


# check_estimator runs ~110 checks, each fitting a small network on the CPU:
# ~5 s in all with the NumPy backend.  No check is marked as an expected failure.
@pytest.mark.parametrize("estimator", [MLPClassifier(backend="numpy"),
                                       MLPRegressor(backend="numpy")],
                         ids=["MLPClassifier", "MLPRegressor"])
def test_check_estimator_passes(estimator):
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(estimator, on_fail=None)
    failed = [(r["check_name"], repr(r["exception"])) for r in results
              if r["status"] == "failed"]
    assert not failed
    assert sum(r["status"] == "passed" for r in results) > 40


def test_same_accuracy_as_the_cli_with_the_same_recipe(digits, capsys):
    assert main(["train", "--device", "cpu", "--backend", "numpy", "--epochs", "3",
                 "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    cli_accuracy = float(last.split("test accuracy ")[1].split()[0])
    clf = MLPClassifier(hidden_layer_sizes=(30,), activation="sigmoid", loss="sse",
                        learning_rate=3.0, batch_size=10, epochs=3, device="cpu",
                        backend="numpy", random_state=0)
    score = clf.fit(digits.X_train, digits.y_train).score(digits.X_test, digits.y_test)
    assert round(score, 4) == cli_accuracy and score > 0.85
    assert len(clf.loss_curve_) == clf.n_iter_ == 3
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_labels_of_any_kind_and_probabilities(digits):
    X, y = digits.X_train[:400], digits.y_train[:400]
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven",
                      "eight", "nine"])
    for output in (None, "softmax"):
        loss = "cross_entropy" if output else "sse"
        lr = 0.5 if output else 3.0
        clf = MLPClassifier(loss=loss, learning_rate=lr, epochs=10, backend="numpy",
                            random_state=1).fit(X, names[y])
        assert list(clf.classes_) == sorted(names) and clf.n_features_in_ == 64
        proba = clf.predict_proba(digits.X_test)
        assert proba.shape == (len(digits.X_test), 10)
        assert np.allclose(proba.sum(axis=1), 1.0) and (proba >= 0).all()
        pred = clf.predict(digits.X_test)
        assert set(pred) <= set(names)
        assert np.array_equal(pred, clf.classes_[proba.argmax(axis=1)])
        assert np.mean(pred == names[digits.y_test]) > 0.85


def test_one_hot_labels_train_as_the_class_indices_do(digits):
    """One-hot rows (as gb.Trainer takes them) give the same network as their
    class indices; predict then answers in one-hot rows, and score agrees."""
    X, y = digits.X_train[:300], digits.y_train[:300]
    Y = np.eye(10)[y]
    by_index = MLPClassifier(epochs=3, backend="numpy", random_state=0).fit(X, y)
    by_row = MLPClassifier(epochs=3, backend="numpy", random_state=0).fit(X, Y)
    assert np.array_equal(by_row.classes_, np.arange(10))
    assert np.array_equal(by_row.predict_proba(X), by_index.predict_proba(X))
    pred = by_row.predict(digits.X_test)
    assert pred.shape == (len(digits.X_test), 10) and (pred.sum(axis=1) == 1).all()
    assert np.array_equal(pred.argmax(axis=1), by_index.predict(digits.X_test))
    assert by_row.score(digits.X_test, np.eye(10)[digits.y_test]) == \
        by_index.score(digits.X_test, digits.y_test)
    by_row.partial_fit(X, Y)                          # one-hot again: one more epoch
    assert by_row.n_iter_ == 4
    with pytest.raises(ValueError, match="as the first call gave it: one-hot rows"):
        by_row.partial_fit(X, y)
    first = MLPClassifier(backend="numpy", random_state=0).partial_fit(X, Y)  # no classes=
    assert len(first.classes_) == 10


@pytest.mark.parametrize("y, match", [
    (np.array([[1, 1, 0], [0, 1, 0]] * 5), "multi-label targets are not supported"),
    (np.array([[2, 0, 0], [0, 1, 0]] * 5), "must be one-hot rows"),
    (np.zeros((10, 3)), "a single 1 in each"),
])
def test_targets_that_are_not_one_hot_rows_are_refused(y, match):
    X = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError, match=match):
        MLPClassifier(backend="numpy").fit(X, y)


def test_pipeline_and_grid_search(digits):
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), MLPClassifier(loss="cross_entropy", epochs=5,
                                                          backend="numpy", random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__learning_rate": [0.01, 0.3],
                               "mlpclassifier__hidden_layer_sizes": [(16,)]}, cv=2)
    grid.fit(digits.X_train[:600], digits.y_train[:600])
    assert grid.best_params_["mlpclassifier__learning_rate"] == 0.3
    assert grid.score(digits.X_test, digits.y_test) > 0.85


def test_partial_fit_continues_training(digits):
    X, y = digits.X_train, digits.y_train
    clf = MLPClassifier(backend="numpy", random_state=0)
    with pytest.raises(ValueError, match="classes must be given"):
        clf.partial_fit(X[:50], y[:50])
    clf.partial_fit(X, y, classes=np.arange(10))
    first = clf.score(digits.X_test, digits.y_test)
    for _ in range(4):
        clf.partial_fit(X, y)
    assert clf.n_iter_ == 5 and clf.score(digits.X_test, digits.y_test) > first
    # partial_fit epoch by epoch is fit: same seed, same network
    whole = MLPClassifier(backend="numpy", random_state=0, epochs=5).fit(X, y)
    assert np.array_equal(whole.predict_proba(X[:20]), clf.predict_proba(X[:20]))


def test_early_stopping_keeps_the_best_epoch(digits):
    clf = MLPClassifier(backend="numpy", epochs=60, early_stopping=True, n_iter_no_change=3,
                        random_state=0).fit(digits.X_train, digits.y_train)
    assert clf.n_iter_ < 60 and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)


def test_regressor_fits_a_smooth_function():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(400, 2))
    y = np.sin(X[:, 0]) * 50 + X[:, 1] ** 2 * 10 + 300           # units far from 1
    reg = MLPRegressor(epochs=200, learning_rate=0.05, backend="numpy", random_state=0)
    assert reg.fit(X[:300], y[:300]).score(X[300:], y[300:]) > 0.95
    Y2 = np.stack([y, -y], axis=1)
    pred = MLPRegressor(epochs=50, backend="numpy", random_state=0).fit(X, Y2).predict(X)
    assert pred.shape == (400, 2)
    column = MLPRegressor(epochs=2, backend="numpy", random_state=0).fit(X, y[:, None])
    assert column.predict(X).shape == (400,)              # one target: (n,), as scikit-learn


def test_pickled_estimator_predicts_the_same(digits):
    clf = MLPClassifier(epochs=2, backend="numpy", random_state=0).fit(digits.X_train,
                                                                        digits.y_train)
    back = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(back.predict_proba(digits.X_test), clf.predict_proba(digits.X_test))
    back.partial_fit(digits.X_train, digits.y_train)             # and it trains on
    assert back.n_iter_ == 3


def test_bad_parameters_are_refused_at_fit(digits):
    X, y = digits.X_train[:50], digits.y_train[:50]
    with pytest.raises(ValueError, match="hidden_layer_sizes must be positive integers"):
        MLPClassifier(hidden_layer_sizes=(0,)).fit(X, y)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        MLPClassifier(learning_rate=-1.0, backend="numpy").fit(X, y)
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        MLPClassifier(activation="relux", backend="numpy").fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        MLPClassifier(backend="numpy").fit(X, np.zeros(50))
    with pytest.raises(ValueError, match="tol must be a finite number >= 0"):
        MLPClassifier(tol=-1.0, backend="numpy").fit(X, y)
    with pytest.raises(ValueError, match="n_iter_no_change must be an integer >= 1"):
        MLPRegressor(n_iter_no_change=0, backend="numpy").fit(X, y)
    with pytest.raises(ValueError, match="validation_fraction must be"):
        MLPClassifier(validation_fraction=1.0, backend="numpy").fit(X, y)


def test_without_scikit_learn_the_import_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import gpubackprop.sklearn\n"
            "except ImportError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert "gpubackprop.sklearn needs scikit-learn: pip install scikit-learn" in r.stdout
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['sklearn'] = None; "
                        "import gpubackprop; print('ok')"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr                   # the package never needs it
