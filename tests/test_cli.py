"""The gpubackprop command line."""
import importlib
import re
import subprocess
import sys

import pytest

import gpubackprop as gb
from gpubackprop.cli import main


def test_train_defaults_reach_95_percent_on_digits(capsys):
    assert main(["train", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "epoch  30/30" in out
    last = out.strip().splitlines()[-1]
    accuracy = float(last.split("test accuracy ")[1].split()[0])
    assert accuracy >= 0.95 and "training time" in last


def test_train_saves_and_checkpoints(tmp_path, capsys):
    net, ckpt = tmp_path / "net.safetensors", tmp_path / "ckpt.safetensors"
    assert main(["train", "--device", "cpu", "--backend", "numpy", "--epochs", "2",
                 "--save", str(net), "--checkpoint", str(ckpt)]) == 0
    assert gb.load(net).sizes == [64, 30, 10] and ckpt.exists()
    assert main(["train", "--device", "cpu", "--backend", "numpy", "--epochs", "3",
                 "--checkpoint", str(ckpt), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch   3/3" in out and "epoch   2/3" not in out
    # a finished run says so, without loading the data
    assert main(["train", "--device", "cpu", "--epochs", "3", "--checkpoint", str(ckpt),
                 "--resume"]) == 0
    assert capsys.readouterr().out == (f"{ckpt}: already trained 3 epochs; nothing to do "
                                       "(--epochs 3; ask for more epochs to continue)\n")


def test_resume_auto_starts_a_new_run_then_continues_it(tmp_path, capsys):
    ckpt = str(tmp_path / "auto.safetensors")
    flags = ["train", "--device", "cpu", "--backend", "numpy", "--checkpoint", ckpt,
             "--resume", "auto", "--no-progress"]
    assert main([*flags, "--epochs", "1"]) == 0                  # nothing there: a new run
    assert main([*flags, "--epochs", "2"]) == 0                  # then it continues
    out = capsys.readouterr().out
    assert "epoch   1/1" in out and "epoch   2/2" in out and "epoch   1/2" not in out


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: the flags must be refused before it."""
    def load(*args, **kwargs):
        raise AssertionError("the data was loaded before the arguments were checked")

    monkeypatch.setattr(gb.data, "load", load)


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "--lr must be a finite number > 0; got -1.0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--epochs", "0"], "--epochs must be an integer >= 1; got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--momentum", "1"], "--momentum must be a finite number >= 0 and < 1"),
    (["--resume"], "--resume needs --checkpoint PATH"),
    (["--checkpoint-every", "5"], "--checkpoint-every needs --checkpoint PATH"),
    (["--checkpoint", "/tmp/gpubackprop-no-such-file.safetensors", "--resume"],
     "--resume: there is no checkpoint at /tmp/gpubackprop-no-such-file.safetensors"),
    (["--activation", "softmax"], "unknown --activation 'softmax'"),
    (["--activation", "relux"], "did you mean 'relu'"),
    (["--loss", "cross_entropy", "--output", "sigmoid"],
     "--loss cross_entropy needs --output softmax"),
    (["--loss", "hinge"], "unknown loss 'hinge'"),
    (["--backend", "nupmy"], "unknown --backend 'nupmy'"),
    (["--backend", "cupy"], "--backend cupy: backend 'cupy' runs on cuda devices, not on cpu"),
    (["--save", "/nonexistent-folder/net.safetensors"], "--save .* folder .* does not exist"),
    (["--checkpoint", "/nonexistent-folder/c.safetensors"], "--checkpoint .* does not exist"),
    (["--save", "/tmp/gpubackprop-same.safetensors", "--checkpoint",
      "/tmp/../tmp/gpubackprop-same.safetensors"], "--save .* is the --checkpoint file"),
])
def test_train_flags_are_checked_before_the_data_loads(capsys, no_data, flags, message):
    assert main(["train", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpubackprop train: error: ") and re.search(message, err), err


def test_train_layers_must_fit_the_data(capsys):
    assert main(["train", "--device", "cpu", "--layers", "10,5,10"]) == 2
    assert "--layers must start with 64 inputs" in capsys.readouterr().err


@pytest.mark.parametrize("flags, header", [
    (["--activation", "relu"], "hidden relu, output sigmoid; loss sse"),
    (["--loss", "cross_entropy"], "hidden sigmoid, output softmax; loss cross_entropy"),
    (["--activation", "tanh", "--output", "identity", "--loss", "mse", "--lr", "0.1"],
     "hidden tanh, output identity; loss mse"),
    (["--layers", "64,10"], "layers [64, 10] output sigmoid; loss sse"),
])
def test_train_output_layer_follows_the_loss_and_the_header_says_it(capsys, flags, header):
    assert main(["train", "--device", "cpu", "--backend", "numpy", "--epochs", "1",
                 "--no-progress", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert header in lines[1] and "cpu, numpy backend, float64" in lines[0]
    assert lines[2].startswith("epoch   1/1: loss ")


def test_relu_hidden_layers_learn_with_the_default_output(capsys):
    assert main(["train", "--device", "cpu", "--backend", "numpy", "--activation", "relu",
                 "--lr", "0.5", "--epochs", "5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(last.split("test accuracy ")[1].split()[0]) >= 0.9


def test_gradcheck_passes(capsys):
    assert main(["gradcheck"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_explain_statquest(capsys):
    assert main(["explain", "statquest"]) == 0
    out = capsys.readouterr().out
    assert "20.4" in out and "-15.7" in out and "converges to 2.61" in out


def test_explain_chain(capsys):
    assert main(["explain", "chain"]) == 0
    out = capsys.readouterr().out
    assert "dC0/dw_l = a_{l-1} * sigma'(z_l) * dC0/da_l" in out and "nudge ratio" in out


def test_info_lists_every_backend_for_every_device_kind(capsys):
    from gpubackprop.backends import REGISTRY

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numpy" in out and "devices: cpu" in out
    for name, kind in REGISTRY:
        where = "cuda" if kind == "cuda" else kind
        line = re.search(rf"^  {name} +on {where} +(.*)$", out, re.M)
        assert line, (name, kind, out)
        assert line.group(1) == "available" or len(line.group(1)) > 10    # or why not
    if "cuda:0" not in out:                        # no usable GPU: the reason and a hint
        assert re.search(r"^  cuda: CUDA is not usable.*\n    hint: ", out, re.M)
    # the BLAS each library runs and the kernels OpenBLAS picked (numba's np.dot: SciPy's)
    assert re.search(r"^  BLAS +scipy's \w+ [\d.]+: \w+ kernels, \d+ threads$", out, re.M), out


def test_info_warns_of_avx2_blas_kernels_on_an_avx512_cpu(capsys, monkeypatch):
    device = importlib.import_module("gpubackprop.device")
    monkeypatch.setattr(device, "_cpu_flags", lambda: ["avx2", "avx512f"])
    monkeypatch.setattr(device, "cpu_blas", lambda: [
        {"library": "numpy", "api": "openblas", "version": "0.3.31", "kernels": "Haswell",
         "threads": 2}])
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "BLAS        numpy's openblas 0.3.31: Haswell kernels, 2 threads" in out
    assert re.search(r"^    note: OpenBLAS runs Haswell \(AVX2\) kernels .*OPENBLAS_CORETYPE",
                     out, re.M), out


@pytest.mark.parametrize("reason, hint", [
    ("CUDA is not usable: CuPy could not be imported (No module named 'cupy')",
     "pip install 'gpubackprop[cuda12]'"),
    ("CUDA is not usable: no CUDA device found", "no NVIDIA GPU here"),
    ("CUDA is not usable: the CUDA runtime reports cudaErrorNoDevice: no CUDA-capable "
     "device is detected", "no NVIDIA GPU here"),
    ("CUDA is not usable: the CUDA runtime reports cudaErrorInsufficientDriver: CUDA driver "
     "version is insufficient for CUDA runtime version", "update the NVIDIA driver"),
])
def test_info_hint_matches_what_is_missing(reason, hint):
    from gpubackprop.cli import _cuda_hint

    assert hint in _cuda_hint(reason)


def test_info_names_the_peers_versions_without_importing_them(tmp_path):
    """PyTorch, JAX and scikit-learn are benchmark peers the library never
    imports: info reads their versions from the installed metadata (importing
    them took seconds) and says which are absent."""
    code = ("import sys; from gpubackprop.cli import main, PEERS; main(['info']); "
            "print('imported:', sorted(m for m in PEERS if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("imported: []"), r.stdout
    for module in ("torch", "jax", "sklearn"):
        assert re.search(rf"^  {module} +(\S+ \(a peer|not installed \(a peer)", r.stdout,
                         re.M), r.stdout


def test_info_survives_a_closed_pipe(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gpubackprop", "info"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                            # as `| head -0` would
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 1)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_console_script_runs(tmp_path):
    # from another folder, so the installed package runs, not the source tree
    r = subprocess.run([sys.executable, "-m", "gpubackprop", "explain", "chain"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "nudge ratio" in r.stdout


def test_unknown_command_fails():
    with pytest.raises(SystemExit):
        main(["fly"])
