"""Bad calls across the public API: each raises a clear ValueError/TypeError
(or FileNotFoundError) naming the argument, before any work is done.

The table BAD_CALLS lists (id, call, exception type, message fragment); each
call takes a context `c` with a small network, data and a temporary folder.
"""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import io as gio
from gpubackprop import memory
from gpubackprop.device import Device

N = 20


def _net(**kw):
    kw.setdefault("backend", "numpy")
    return gb.MLP.from_sizes([3, 4, 2], seed=0, **kw)


def _trainer(**kw):
    return gb.Trainer(_net(), optimizer=gb.SGD(lr=0.5, momentum=0.5), batch_size=5, **kw)


def _net_file(c, meta_change=None, arrays_change=None, name="net.safetensors"):
    """A network file, optionally with its metadata or arrays tampered with."""
    path = c.tmp / name
    net = _net()
    arrays, meta = net.state_arrays(), net.metadata()
    if meta_change:
        meta.update(meta_change)
    if arrays_change:
        arrays.update(arrays_change)
    gio.save_file(path, arrays, meta)
    return path


def _ckpt_file(c):
    path = c.tmp / "ckpt.safetensors"
    _trainer().fit(c.X, c.y, epochs=1, checkpoint=path)
    return path


def _forged_header(c):
    """W0 claims a terabyte: refused before anything of that size is allocated."""
    header = json.dumps({"__metadata__": gio.encode_meta(_net().metadata()),
                         "W0": {"dtype": "F64", "shape": [10 ** 11, 10],
                                "data_offsets": [0, 8 * 10 ** 12]}}).encode()
    path = c.tmp / "forged.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    return path


def _old_npz(c):
    path = c.tmp / "old.npz"
    np.savez(path, W0=np.zeros((4, 3)))
    return path


def _text_file(c):
    path = c.tmp / "notes.safetensors"
    path.write_text("not an archive")
    return path


def _symlink_loop(c):
    path = c.tmp / "loop.safetensors"
    os.symlink(path, path)
    return path


def _fifo(c):
    path = c.tmp / "pipe.idx"
    os.mkfifo(path)
    return path


def _idx_file(c):
    path = c.tmp / "small.idx"
    path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 24]) + bytes(24))     # 24 uint8 values
    return path


def _nan_net():
    net = _net()
    net.layers[0].W[0, 0] = np.nan
    return net


def _fit_on_a_locked_checkpoint(c):
    from gpubackprop.paths import PathLock

    with PathLock(c.tmp / "c.safetensors"):
        c.trainer.fit(c.X, c.y, checkpoint=c.tmp / "c.safetensors")


BAD_CALLS = [
    # -- devices, tensors, backends ---------------------------------------------------------
    ("device_unknown", lambda c: gb.device("gpux"), ValueError,
     r"unknown device 'gpux'.*did you mean 'gpu'"),
    ("device_not_str", lambda c: gb.device(3), TypeError, "device must be a string"),
    ("device_cpu_index", lambda c: gb.device("cpu:1"), ValueError, "takes no index"),
    ("device_bad_index", lambda c: gb.device("cuda:x"), ValueError,
     "device index must be an integer"),
    ("tensor_dtype", lambda c: gb.Tensor([1.0], dtype="int32"), ValueError,
     "dtype must be 'float32' or 'float64'; got 'int32'"),
    ("tensor_device", lambda c: gb.Tensor([1.0], device="cpuu"), ValueError,
     "did you mean 'cpu'"),
    ("backend_wrong_device", lambda c: _net(backend="cupy"), ValueError,
     "runs on cuda devices, not on cpu"),
    # -- layers and networks -----------------------------------------------------------------
    ("dense_zero", lambda c: gb.Dense(0, 3), ValueError, "n_in must be an integer >= 1; got 0"),
    ("dense_float", lambda c: gb.Dense(2, 2.5), TypeError, "n_out must be an integer"),
    ("dense_activation", lambda c: gb.Dense(2, 2, activation="sigmod"), ValueError,
     r"unknown activation 'sigmod'.*did you mean 'sigmoid'"),
    ("dense_W_shape", lambda c: gb.Dense(2, 3, W=np.zeros((2, 3))), ValueError,
     r"W of Dense\(2, 3\) must have shape \(3, 2\); got \(2, 3\)"),
    ("dense_b_nan", lambda c: gb.Dense(2, 3, b=[0.0, np.nan, 0.0]), ValueError,
     r"b of Dense\(2, 3\) contains NaN"),
    ("set_params_shape", lambda c: c.net.layers[0].set_params(W=np.zeros((3, 3))), ValueError,
     r"must have shape \(4, 3\)"),
    ("mlp_no_chain", lambda c: gb.MLP([gb.Dense(3, 4), gb.Dense(5, 2)]), ValueError,
     r"do not chain: layers\[0\] has 4 outputs but layers\[1\] expects 5"),
    ("mlp_not_dense", lambda c: gb.MLP([gb.Dense(3, 4), "relu"]), TypeError,
     r"layers\[1\] must be a gpubackprop.Dense"),
    ("mlp_empty", lambda c: gb.MLP([]), ValueError, "non-empty list"),
    ("mlp_dtype", lambda c: _net(dtype="float16"), ValueError,
     "dtype must be 'float32' or 'float64'"),
    ("mlp_device", lambda c: _net(device="tpu"), ValueError, "unknown device 'tpu'"),
    ("softmax_hidden", lambda c: gb.MLP.from_sizes([3, 4, 2], activation="softmax"), ValueError,
     "softmax is an output activation only"),
    ("sizes_short", lambda c: gb.MLP.from_sizes([3]), ValueError, "at least two layer sizes"),
    ("sizes_zero", lambda c: gb.MLP.from_sizes([3, 0]), ValueError, r"sizes\[1\] must be an integer >= 1; got 0"),
    # -- forward, predict, loss, gradients -----------------------------------------------------
    ("forward_columns", lambda c: c.net.forward(np.zeros((2, 5))), ValueError,
     r"X must have shape \(batch, 3\) for a network with 3 inputs; got \(2, 5\)"),
    ("forward_nan", lambda c: c.net.forward(np.full((2, 3), np.nan)), ValueError,
     "X contains NaN or infinite"),
    ("forward_empty", lambda c: c.net.forward(np.zeros((0, 3))), ValueError, "X is empty"),
    ("forward_strings", lambda c: c.net.forward([["a", "b", "c"]]), TypeError,
     "X must hold real numbers"),
    ("forward_ragged", lambda c: c.net.forward([[1, 2, 3], [1, 2]]), ValueError,
     "X must be a rectangular array"),
    ("forward_not_array", lambda c: c.net.forward("x"), TypeError, "X must be an array"),
    ("predict_inf", lambda c: c.net.predict(np.array([[1.0, np.inf, 0.0]])), ValueError,
     "X contains NaN or infinite"),
    ("labels_out_of_range", lambda c: c.net.gradients(c.X, c.y + 1), ValueError,
     r"class labels out of range: expected 0..1 for 2 outputs; got min 1, max 2"),
    ("labels_negative", lambda c: c.net.loss(c.X, -c.y), ValueError, "out of range"),
    ("labels_fractional", lambda c: c.net.gradients(c.X, c.y + 0.5), ValueError,
     "whole numbers"),
    ("labels_rows", lambda c: c.net.gradients(c.X, c.y[:7]), ValueError,
     r"Y must have 20 rows, one per row of X; got shape \(7,\)"),
    ("targets_columns", lambda c: c.net.loss(c.X, np.zeros((N, 3))), ValueError,
     r"targets \(batch, 2\)"),
    ("targets_nan", lambda c: c.net.loss(c.X, np.full((N, 2), np.nan)), ValueError,
     "Y contains NaN"),
    ("loss_unknown", lambda c: c.net.gradients(c.X, c.y, loss="crossentropy"), ValueError,
     r"unknown loss 'crossentropy'.*did you mean 'cross_entropy'"),
    ("reduction_unknown", lambda c: c.net.loss(c.X, c.y, reduction="avg"), ValueError,
     "unknown reduction 'avg'"),
    ("ce_needs_softmax", lambda c: c.net.loss(c.X, c.y, loss="cross_entropy"), ValueError,
     "needs the output layer's activation to be 'softmax'"),
    # -- gradcheck ----------------------------------------------------------------------------
    ("gradcheck_net", lambda c: gb.gradcheck("net", c.X, c.y), TypeError,
     "net must be a gpubackprop.MLP"),
    ("gradcheck_eps", lambda c: gb.gradcheck(c.net, c.X, c.y, eps=0), ValueError,
     r"eps must be a finite number > 0; got"),
    ("gradcheck_n_check", lambda c: gb.gradcheck(c.net, c.X, c.y, n_check=0), ValueError,
     "n_check must be an integer >= 1"),
    # -- optimizer and trainer -------------------------------------------------------------
    ("sgd_lr_negative", lambda c: gb.SGD(lr=-0.1), ValueError,
     r"lr must be a finite number > 0; got -0.1"),
    ("sgd_lr_nan", lambda c: gb.SGD(lr=float("nan")), ValueError, "lr must be a finite number"),
    ("sgd_lr_str", lambda c: gb.SGD(lr="0.1"), TypeError, "lr must be a real number"),
    ("sgd_momentum_one", lambda c: gb.SGD(momentum=1.0), ValueError,
     r"momentum must be a finite number >= 0 and < 1; got 1.0"),
    ("sgd_momentum_negative", lambda c: gb.SGD(momentum=-0.5), ValueError, "momentum"),
    ("sgd_weight_decay", lambda c: gb.SGD(weight_decay=-1), ValueError, "weight_decay"),
    ("trainer_net", lambda c: gb.Trainer("net"), TypeError, "net must be a gpubackprop.MLP"),
    ("trainer_batch_zero", lambda c: gb.Trainer(c.net, batch_size=0), ValueError,
     "batch_size must be an integer >= 1; got 0"),
    ("trainer_batch_float", lambda c: gb.Trainer(c.net, batch_size=2.0), TypeError,
     "batch_size must be an integer"),
    ("trainer_optimizer", lambda c: gb.Trainer(c.net, optimizer="sgd"), TypeError,
     "optimizer must be a gpubackprop.SGD"),
    ("trainer_seed", lambda c: gb.Trainer(c.net, seed=-1), ValueError,
     "seed must be an integer >= 0; got -1"),
    ("trainer_loss", lambda c: gb.Trainer(c.net, loss="mae"), ValueError, "unknown loss 'mae'"),
    ("fit_epochs_zero", lambda c: c.trainer.fit(c.X, c.y, epochs=0), ValueError,
     "epochs must be an integer >= 1; got 0"),
    ("fit_batch_too_big", lambda c: gb.Trainer(c.net, batch_size=50).fit(c.X, c.y), ValueError,
     r"batch_size \(50\) is larger than the number of training examples \(20\)"),
    ("fit_lengths", lambda c: c.trainer.fit(c.X, c.y[:10]), ValueError,
     r"training Y must have 20 rows"),
    ("fit_labels_range", lambda c: c.trainer.fit(c.X, c.y * 5), ValueError,
     "training Y holds class labels out of range"),
    ("fit_empty", lambda c: c.trainer.fit(np.zeros((0, 3)), np.zeros(0, int)), ValueError,
     "training X is empty"),
    ("fit_validation_not_pair", lambda c: c.trainer.fit(c.X, c.y, validation=c.X), TypeError,
     "validation must be a pair"),
    ("fit_validation_columns",
     lambda c: c.trainer.fit(c.X, c.y, validation=(c.X[:, :2], c.y)), ValueError,
     r"validation X must have shape \(batch, 3\)"),
    ("fit_checkpoint_every_zero",
     lambda c: c.trainer.fit(c.X, c.y, checkpoint=c.tmp / "c.safetensors", checkpoint_every=0),
     ValueError, "checkpoint_every must be an integer >= 1"),
    ("fit_checkpoint_every_alone", lambda c: c.trainer.fit(c.X, c.y, checkpoint_every=2),
     ValueError, "checkpoint_every needs checkpoint"),
    ("fit_checkpoint_type", lambda c: c.trainer.fit(c.X, c.y, checkpoint=3), TypeError,
     "checkpoint must be a file path"),
    ("fit_checkpoint_folder",
     lambda c: c.trainer.fit(c.X, c.y, checkpoint=c.tmp / "missing" / "c.safetensors"), ValueError,
     "checkpoint folder"),
    ("fit_checkpoint_is_dir", lambda c: c.trainer.fit(c.X, c.y, checkpoint=c.tmp), ValueError,
     "checkpoint must be a file path; got the folder"),
    ("fit_resume_alone", lambda c: c.trainer.fit(c.X, c.y, resume=True), ValueError,
     "resume=True needs the checkpoint path"),
    ("fit_resume_type",
     lambda c: c.trainer.fit(c.X, c.y, checkpoint=c.tmp / "c.safetensors", resume="yes"), TypeError,
     "resume must be True, False or 'auto'"),
    ("fit_callback", lambda c: c.trainer.fit(c.X, c.y, callback=3), TypeError,
     "callback must be callable"),
    ("fit_progress", lambda c: c.trainer.fit(c.X, c.y, progress="yes"), TypeError,
     "progress must be True, False or None"),
    ("evaluate_chunk", lambda c: c.trainer.evaluate(c.X, c.y, chunk=0), ValueError,
     "chunk must be an integer >= 1"),
    # -- files -------------------------------------------------------------------------------
    ("load_missing", lambda c: gb.load(c.tmp / "nope.safetensors"), FileNotFoundError,
     "no such file"),
    ("load_not_safetensors", lambda c: gb.load(_text_file(c)), ValueError,
     "notes.safetensors: not a readable safetensors file"),
    ("load_checkpoint_as_net", lambda c: gb.load(_ckpt_file(c)), ValueError,
     "expected a 'gpubackprop.mlp' file; got format 'gpubackprop.checkpoint'"),
    ("load_version", lambda c: gb.load(_net_file(c, {"version": 99})), ValueError,
     "file version 99 .* is not supported"),
    ("load_sizes_negative", lambda c: gb.load(_net_file(c, {"sizes": [3, -4, 2]})), ValueError,
     "'sizes' must be a list of at least two positive integers"),
    ("load_sizes_bool", lambda c: gb.load(_net_file(c, {"sizes": [3, True, 2]})), ValueError,
     "'sizes'"),
    ("load_activation", lambda c: gb.load(_net_file(c, {"activations": ["sigmod", "sigmoid"]})),
     ValueError, "'activations' must be a list of 2 names"),
    ("load_dtype", lambda c: gb.load(_net_file(c, {"dtype": "int64"})), ValueError,
     "'dtype' must be 'float32' or 'float64'"),
    ("load_shapes", lambda c: gb.load(_net_file(c, {"sizes": [3, 5, 2]})), ValueError,
     r"array 'W0' has shape \(4, 3\); the sizes \[3, 5, 2\] say \(5, 3\)"),
    ("load_array_dtype",
     lambda c: gb.load(_net_file(c, arrays_change={"b1": np.zeros(2, np.float32)})),
     ValueError, "array 'b1' has dtype float32; the metadata says float64"),
    ("load_extra_array", lambda c: gb.load(_net_file(c, arrays_change={"W7": np.zeros(1)})),
     ValueError, r"unexpected arrays \['W7'\]"),
    ("load_forged_header", lambda c: gb.load(_forged_header(c)), ValueError,
     "forged.safetensors: not a readable safetensors file"),
    ("load_old_npz", lambda c: gb.load(_old_npz(c)), ValueError,
     "old.npz: this is an .npz archive, the file format of earlier gpubackprop"),
    ("load_meta_no_format", lambda c: gb.load(_net_file(c, {"format": "list"})), ValueError,
     "expected a 'gpubackprop.mlp' file; got format 'list'"),
    # -- data --------------------------------------------------------------------------------
    ("data_spec", lambda c: gb.data.load("digit"), ValueError, "unknown data spec 'digit'"),
    ("data_spec_type", lambda c: gb.data.load(3), TypeError, "data spec must be a string"),
    ("read_idx_missing", lambda c: gb.data.read_idx(c.tmp / "none.idx"), FileNotFoundError,
     "No such file.*none.idx"),
    ("read_idx_garbage", lambda c: gb.data.read_idx(_text_file(c)), ValueError, "notes.safetensors"),
    ("mnist_missing", lambda c: gb.data.load_mnist(c.tmp / "nodir"), FileNotFoundError,
     "does not exist"),
    ("digits_fraction", lambda c: gb.data.load_digits(test_fraction=1.5), ValueError,
     "test_fraction"),
    # -- issue 14: overflow, shared layers, hyperparameters set late, paths, files ---------------
    ("set_params_overflow",
     lambda c: _net(dtype="float32").layers[0].set_params(W=np.full((4, 3), 1e300)),
     ValueError, r"W of Dense\(3, 4\) holds values that overflow float32"),
    ("dense_overflow", lambda c: gb.MLP([gb.Dense(3, 4, W=np.full((4, 3), 1e39)), gb.Dense(4, 2)],
                                        dtype="float32"),
     ValueError, r"W of Dense\(3, 4\) holds values that overflow float32 \(largest magnitude 1e\+39"),
    ("forward_overflow", lambda c: _net(dtype="float32").forward(np.full((2, 3), 1e300)),
     ValueError, "X holds values that overflow float32"),
    ("targets_overflow", lambda c: _net(dtype="float32").loss(c.X, np.full((N, 2), -1e300)),
     ValueError, "Y holds values that overflow float32"),
    ("labels_huge", lambda c: c.net.loss(c.X, np.full(N, 1e20)), ValueError,
     r"out of range: expected 0..1 for 2 outputs; got min 1e\+20, max 1e\+20"),
    ("save_nan", lambda c: _nan_net().save(c.tmp / "n.safetensors"), ValueError,
     r"W of layers\[0\] contains NaN or infinite values, and gb.load refuses"),
    ("dense_in_two_mlps", lambda c: gb.MLP([c.net.layers[0], gb.Dense(4, 2)]), ValueError,
     r"layers\[0\] .* already belongs to another MLP.*layer.copy\(\)"),
    ("dense_twice", lambda c: gb.MLP([gb.Dense(3, 3)] * 2), ValueError,
     r"layers\[0\] and layers\[1\] are the same Dense object"),
    ("sgd_lr_set_negative", lambda c: setattr(c.trainer.optimizer, "lr", -1.0), ValueError,
     "lr must be a finite number .*got -1.0"),
    ("sgd_momentum_set", lambda c: setattr(c.trainer.optimizer, "momentum", 1.5), ValueError,
     "momentum must be a finite number .*got 1.5"),
    ("trainer_batch_set_zero", lambda c: setattr(c.trainer, "batch_size", 0), ValueError,
     "batch_size must be an integer >= 1; got 0"),
    ("fit_resume_missing",
     lambda c: c.trainer.fit(c.X, c.y, checkpoint=c.tmp / "typo.safetensors", resume=True),
     FileNotFoundError, "nothing to resume at .*typo.safetensors.*pass resume=False"),
    ("fit_checkpoint_loop", lambda c: c.trainer.fit(c.X, c.y, checkpoint=_symlink_loop(c)),
     ValueError, "checkpoint .*loop.safetensors' is a symbolic link loop"),
    ("fit_checkpoint_locked", _fit_on_a_locked_checkpoint, RuntimeError,
     rf"checkpoint .*c.safetensors' is in use by another run \(pid {os.getpid()}\)"),
    ("read_idx_fifo", lambda c: gb.data.read_idx(_fifo(c)), ValueError,
     "pipe.idx' : it is a FIFO|pipe.idx': it is a FIFO"),
    ("read_idx_folder", lambda c: gb.data.read_idx(c.tmp), ValueError, "it is a folder"),
    ("read_idx_budget", lambda c: gb.data.read_idx(_idx_file(c), max_bytes=10), ValueError,
     r"\(24,\) of uint8 = 24 bytes, more than the limit of 10 bytes"),
    ("mnist_max_bytes", lambda c: gb.data.load_mnist(c.tmp, max_bytes=0), ValueError,
     "max_bytes must be an integer >= 1; got 0"),
    ("tensor_ragged", lambda c: gb.Tensor([[1.0, 2.0], [3.0]]), ValueError,
     "array must be rectangular: the nested lists given have rows of different lengths"),
    ("load_folder", lambda c: gb.load(c.tmp), IsADirectoryError,
     "is a folder; give the path of a file in it"),
    ("targets_ce_not_distribution",
     lambda c: gb.MLP.from_sizes([3, 2], output_activation="softmax").loss(
         c.X, np.ones((N, 2)), loss="cross_entropy"), ValueError,
     r"Y row 0 is not a probability distribution \(sum 2, smallest entry 1\)"),
    ("forward_masked", lambda c: c.net.forward(np.ma.masked_less(c.X, 0)), TypeError,
     r"X is a masked array, whose mask the network would ignore"),
    # -- the sixth session's review ---------------------------------------------------------------
    ("assign_W_shape", lambda c: setattr(c.net.layers[0], "W", np.zeros((3, 4))), ValueError,
     r"W of Dense\(3, 4\) must have shape \(4, 3\); got \(3, 4\)"),
    ("assign_b_none", lambda c: setattr(c.net.layers[0], "b", None), TypeError,
     r"b of Dense\(3, 4\) cannot be set to None"),
    ("assign_W_nan", lambda c: setattr(c.net.layers[1], "W", np.full((2, 4), np.nan)),
     ValueError, r"W of Dense\(4, 2\) contains NaN or infinite values"),
    ("softmax_one_output", lambda c: gb.MLP.from_sizes([3, 1], output_activation="softmax"),
     ValueError, "a softmax output needs at least 2 outputs"),
    ("device_unknown", lambda c: gb.device("tpu"), ValueError,
     r"unknown device 'tpu'; expected one of \['auto', 'cpu', 'cuda', 'cuda-emulator', 'gpu'\]"),
    ("save_none", lambda c: c.net.save(None), TypeError,
     r"network path must be a file path \(str or os.PathLike\); got NoneType"),
    ("save_no_folder", lambda c: c.net.save(c.tmp / "no" / "net.safetensors"), ValueError,
     "network path folder .*no' does not exist"),
    ("load_none", lambda c: gb.load(None), TypeError,
     r"path must be a file path \(str or os.PathLike\); got NoneType"),
    # -- memory --------------------------------------------------------------------------------
    ("estimate_batch", lambda c: memory.estimate(c.net, 0, 10), ValueError,
     "batch_size must be an integer >= 1"),
    ("estimate_net", lambda c: memory.estimate("net", 1, 10), TypeError,
     "net must be a gpubackprop.MLP"),
]


@pytest.fixture
def c(tmp_path):
    rng = np.random.default_rng(0)
    return SimpleNamespace(tmp=tmp_path, net=_net(), trainer=_trainer(),
                           X=rng.normal(size=(N, 3)), y=np.arange(N) % 2)


@pytest.mark.parametrize("name, call, exc, fragment", BAD_CALLS,
                         ids=[case[0] for case in BAD_CALLS])
def test_bad_call_raises_clearly(c, name, call, exc, fragment):
    with pytest.raises(exc, match=fragment):
        call(c)


# -- no work is done before the error ------------------------------------------------------
FAILING_FITS = [
    ("lengths", lambda c, ck: dict(X=c.X, Y=c.y[:5], checkpoint=ck)),
    ("nan_X", lambda c, ck: dict(X=np.where(np.eye(N, 3) > 0, np.nan, c.X), Y=c.y,
                                 checkpoint=ck)),
    ("labels", lambda c, ck: dict(X=c.X, Y=c.y + 2, checkpoint=ck)),
    ("validation", lambda c, ck: dict(X=c.X, Y=c.y, validation=(c.X, c.y[:3]), checkpoint=ck)),
    ("batch", lambda c, ck: dict(X=c.X[:3], Y=c.y[:3], checkpoint=ck)),
    ("epochs", lambda c, ck: dict(X=c.X, Y=c.y, epochs=-1, checkpoint=ck)),
    ("callback", lambda c, ck: dict(X=c.X, Y=c.y, callback="print", checkpoint=ck)),
]


@pytest.mark.parametrize("name, kwargs", FAILING_FITS, ids=[f[0] for f in FAILING_FITS])
def test_failing_fit_changes_nothing_and_writes_no_checkpoint(c, name, kwargs):
    t = c.trainer
    before = [(W.copy(), b.copy()) for W, b in t.net.params]
    rng_state = t.rng.bit_generator.state
    ckpt = c.tmp / "never.safetensors"
    kw = kwargs(c, ckpt)
    with pytest.raises((ValueError, TypeError)):
        t.fit(kw.pop("X"), kw.pop("Y"), **kw)
    for (W, b), (W0, b0) in zip(t.net.params, before):
        assert np.array_equal(W, W0) and np.array_equal(b, b0)
    assert t.rng.bit_generator.state == rng_state
    assert len(t.history) == 0
    assert os.listdir(c.tmp) == []                     # no checkpoint, no temp file


def test_refused_resume_keeps_the_network_and_the_file(c):
    path = _ckpt_file(c)
    before_bytes = path.read_bytes()
    t = gb.Trainer(_net(), optimizer=gb.SGD(lr=0.5, momentum=0.5), batch_size=4)  # other bs
    before = [(W.copy(), b.copy()) for W, b in t.net.params]
    with pytest.raises(ValueError, match="batch_size: checkpoint has 5, this run has 4"):
        t.fit(c.X, c.y, epochs=3, checkpoint=path, resume=True)
    for (W, b), (W0, b0) in zip(t.net.params, before):
        assert np.array_equal(W, W0) and np.array_equal(b, b0)
    assert path.read_bytes() == before_bytes


def test_save_refuses_object_arrays_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="only float32 and float64 arrays"):
        gio.save_file(tmp_path / "x.safetensors", {"a": np.array([object()])}, {"format": "x"})
    assert os.listdir(tmp_path) == []


def test_network_file_round_trip_and_strict_json(tmp_path):
    net = _net()
    net.save(tmp_path / "n.safetensors")
    back = gb.load(tmp_path / "n.safetensors")
    assert back.sizes == net.sizes and back.dtype == net.dtype
    # the metadata is JSON strings in safetensors' header, nothing to unpickle
    from safetensors import safe_open

    with safe_open(str(tmp_path / "n.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    assert json.loads(meta["sizes"]) == [3, 4, 2]


# -- memory: will the run fit on the device? --------------------------------------------------
def test_estimate_matches_hand_counted_bytes():
    net = _net()                                   # [3, 4, 2] float64: P = 16 + 10 = 26
    est = memory.estimate(net, batch_size=5, n_samples=20, n_val=7)
    assert est == {
        "parameters": 26 * 8,
        "momentum": 26 * 8,
        "snapshot": 2 * 26 * 8,
        "data": 20 * (3 + 2) * 8 + 20 * 8,       # X, one-hot Y, the int64 shuffle
        "activations": 5 * (3 + 4 + 2 + 2) * 8,  # a_0..a_2 and the batch's targets
        "deltas": 5 * (4 + 2) * 8,
        "gradients": 26 * 8,                     # every layer's dW, db
        "backend_scratch": 0,                    # the numpy backend keeps none
        "step_costs": 4 * 8,
        "validation": 7 * (3 + 2) * 8 + 7 * (3 + 4 + 2) * 8,
        "total": 3496,
    }
    assert sum(v for k, v in est.items() if k != "total") == est["total"]


def test_estimate_float32_without_momentum_and_uneven_batches():
    net = gb.MLP.from_sizes([10, 7, 3], dtype="float32", backend="numpy")   # P = 77 + 24
    est = memory.estimate(net, batch_size=64, n_samples=100, momentum=False)
    assert est["parameters"] == 101 * 4 and est["momentum"] == 0
    assert est["snapshot"] == 101 * 4
    assert est["data"] == 100 * 13 * 4 + 800
    assert est["activations"] == 64 * (20 + 3) * 4
    assert est["deltas"] == 64 * 10 * 4
    assert est["gradients"] == 101 * 4
    assert est["step_costs"] == 2 * 4 and est["validation"] == 0
    small = memory.estimate(net, batch_size=64, n_samples=10, momentum=False)
    assert small["activations"] == 10 * 23 * 4          # the batch is at most the data


def test_check_fits_says_what_is_needed_free_and_what_to_change():
    est = memory.estimate(_net(), batch_size=5, n_samples=20, n_val=7)
    memory.check_fits(est, free_bytes=10 ** 9)          # fits: no error
    with pytest.raises(memory.DeviceOutOfMemory,
                       match=r"needs about .* MiB .* only .* MiB are free.*dtype='float32'") as e:
        memory.check_fits(est, free_bytes=1000, device="cuda:0")
    assert isinstance(e.value, RuntimeError)
    assert e.value.needed["total"] == 3496 and e.value.free == 1000
    assert "part of the data set" in str(e.value)    # the data is the biggest part here
    big_batch = memory.estimate(_net(), batch_size=10 ** 6, n_samples=10 ** 6)
    with pytest.raises(memory.DeviceOutOfMemory, match="smaller batch_size"):
        memory.check_fits(big_batch, free_bytes=10 ** 6, dtype="float32")


def test_fit_on_a_cuda_device_checks_memory_before_moving_data(c, monkeypatch):
    net = _net()
    net.device = Device("cuda", 0)        # pretend: no data reaches the device anyway
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1000)
    monkeypatch.setattr(memory, "oom_types", lambda device: ())
    t = gb.Trainer(net, batch_size=5)
    with pytest.raises(memory.DeviceOutOfMemory, match="not enough memory on cuda:0"):
        t.fit(c.X, c.y)


def test_out_of_memory_during_fit_becomes_a_clear_error(c, monkeypatch):
    class FakeOOM(Exception):
        pass

    def train_steps(*args, **kwargs):
        raise FakeOOM("out of memory allocating 1,024 bytes")

    monkeypatch.setattr(memory, "oom_types", lambda device: (FakeOOM,))
    t = c.trainer
    monkeypatch.setattr(t, "_steps", train_steps)
    with pytest.raises(memory.DeviceOutOfMemory, match="ran out of memory during training"
                       ".*smaller batch_size") as e:
        t.fit(c.X, c.y)
    assert isinstance(e.value.__cause__, FakeOOM)
    assert e.value.needed["total"] > 0
