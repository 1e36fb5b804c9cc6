"""The progress bar: one tqdm bar on stderr with the epoch lines above it.

The terminal test runs `gpubackprop train` in a pseudo-terminal 80 columns
wide and replays what it wrote through a small terminal model (carriage
return, line feed, erase, cursor moves, wrap at the right edge): the screen
must hold exactly one line per epoch and one bar, nothing glued or left over.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import progress

COLUMNS = 80


def _trainer():
    net = gb.MLP.from_sizes([4, 6, 3], backend="numpy", seed=0)
    return gb.Trainer(net, optimizer=gb.SGD(lr=0.5), batch_size=5, seed=0)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 4)), rng.integers(0, 3, 40)


def test_epoch_line():
    r = {"epoch": 3, "loss": 0.08123, "accuracy": 0.94211, "val_loss": 0.1,
         "val_accuracy": 0.9, "time": 0.4123}
    assert progress.epoch_line(r, 30) == ("epoch   3/30: loss 0.0812 acc 0.9421 | "
                                          "test loss 0.1000 acc 0.9000 | 0.41s")
    assert progress.epoch_line({"epoch": 1, "loss": 1.0, "time": 0.0}) == \
        "epoch   1: loss 1.0000 | 0.00s"


@pytest.mark.parametrize("flag, lines", [(None, 0), (False, 0), (True, 3)])
def test_without_a_terminal_no_bar_and_plain_lines_only_when_asked(capsys, flag, lines):
    X, y = _data()
    _trainer().fit(X, y, epochs=3, progress=flag)
    out, err = capsys.readouterr()
    assert err == ""                                       # never a bar off a terminal
    assert out.count("\n") == lines
    assert all(line.startswith(f"epoch   {i + 1}/3: loss ")
               for i, line in enumerate(out.splitlines()))


class _Terminal:
    """Enough of a VT100 to replay tqdm: printable characters (with wrap at
    the right edge), CR, LF, backspace, ESC[K (erase), ESC[nA/B/C/D; other
    escape sequences are ignored."""

    def __init__(self, columns):
        self.columns, self.rows, self.row, self.col = columns, [[]], 0, 0
        self.wrapped = 0

    def feed(self, text):
        for m in re.finditer(r"\x1b\[([0-9;?]*)([A-Za-z])|([\r\n\b])|([^\x1b\r\n\b]+)", text):
            params, command, control, chars = m.groups()
            if command:
                self._csi(int(params or 1) if params.isdigit() else 1, command, params)
            elif control == "\r":
                self.col = 0
            elif control == "\n":
                self._down()
            elif control == "\b":
                self.col = max(0, self.col - 1)
            elif chars:
                for ch in chars:
                    self._put(ch)

    def _down(self):
        self.row += 1
        while len(self.rows) <= self.row:
            self.rows.append([])

    def _put(self, ch):
        if self.col >= self.columns:                  # auto-wrap
            self.wrapped += 1
            self.col = 0
            self._down()
        line = self.rows[self.row]
        line.extend(" " * (self.col + 1 - len(line)))
        line[self.col] = ch
        self.col += 1

    def _csi(self, n, command, params):
        if command == "K":                       # erase to the end (0) or the whole line (2)
            start = self.col if params in ("", "0") else 0
            del self.rows[self.row][start:]
        elif command == "A":
            self.row = max(0, self.row - n)
        elif command == "B":
            for _ in range(n):
                self._down()
        elif command == "C":
            self.col = min(self.columns - 1, self.col + n)
        elif command == "D":
            self.col = max(0, self.col - n)

    def screen(self):
        return ["".join(line).rstrip() for line in self.rows]


def _run_in_pty(argv, cwd, columns=COLUMNS, timeout=300):
    """(exit code, everything the program wrote) for argv run on a pty in
    `cwd` (outside the checkout: the installed package runs)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = dict(os.environ, COLUMNS=str(columns), TERM="xterm")
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            cwd=cwd, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:                      # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_a_terminal_shows_one_line_per_epoch_and_one_bar(tmp_path):
    epochs = 30
    code, raw = _run_in_pty([sys.executable, "-m", "gpubackprop", "train", "--device", "cpu",
                             "--backend", "numpy", "--epochs", str(epochs)], cwd=tmp_path)
    term = _Terminal(COLUMNS)
    term.feed(raw)
    screen = [line for line in term.screen() if line]
    assert code == 0, "\n".join(screen)
    bars = [line for line in screen if "%|" in line]
    epoch_lines = [line for line in screen if line.startswith("epoch ") and line not in bars]
    assert len(epoch_lines) == epochs, "\n".join(screen)
    assert [line[:12] for line in epoch_lines] == [f"epoch {i:3d}/{epochs}" for i in
                                                   range(1, epochs + 1)]
    assert all(re.fullmatch(r"epoch +\d+/\d+: loss [0-9.]+ acc [0-9.]+ \| test loss "
                            r"[0-9.]+ acc [0-9.]+ \| [0-9.]+s", line)
               for line in epoch_lines), "\n".join(screen)
    assert len(bars) == 1 and bars[0].startswith("epoch 30/30 100%|"), "\n".join(screen)
    assert re.search(r"loss=[0-9.]+ acc=[0-9.]+ val=[0-9.]+$", bars[0]), bars[0]
    assert len(bars[0]) <= COLUMNS and term.wrapped == 0        # it fits the width
    others = [line for line in screen if line not in epoch_lines and line not in bars]
    assert len(others) == 3, "\n".join(screen)          # the header's two lines, the result
    assert others[0].startswith("gpubackprop train: digits")
    assert others[1].startswith("layers [64, 30, 10] hidden sigmoid, output sigmoid; loss sse")
    assert others[2].startswith("test accuracy ")


def test_a_notice_goes_above_the_bar_and_into_it(capsys):
    class Tty:                                   # a stream that says it is a terminal
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

        def isatty(self):
            return True

    stream = Tty()
    bar = progress.ProgressBar(100, enabled=None, stream=stream, epochs=1)
    progress.notice("numba: compiling the CPU epoch (first run only)")
    assert "compiling the CPU epoch" in stream.text.splitlines()[-1] or \
        "compiling" in stream.text                 # the bar says it while it waits
    assert "numba: compiling the CPU epoch (first run only)\n" in capsys.readouterr().err
    bar.update(100)
    bar.epoch_done({"epoch": 1, "loss": 0.5, "accuracy": 0.75, "time": 0.1})
    bar.close()
    last = stream.text.split("\r")[-1]
    assert "100%" in last and "loss=0.5000 acc=0.750" in last and "compiling" not in last
    assert capsys.readouterr().out.startswith("epoch   1/1: loss 0.5000")


def test_the_epoch_count_follows_from_the_epoch_length(capsys):
    bar = progress.ProgressBar(30, enabled=True)            # 3 epochs of 10 steps
    assert bar.chunk_steps(10) == 10 and bar.epochs == 3    # no bar off a terminal
    bar.epoch_done({"epoch": 2, "loss": 0.25, "time": 0.5})
    bar.close()
    assert capsys.readouterr().out == "epoch   2/3: loss 0.2500 | 0.50s\n"


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_an_error_mid_run_starts_on_its_own_line(tmp_path):
    code, raw = _run_in_pty([sys.executable, "-m", "gpubackprop", "train", "--device", "cpu",
                             "--backend", "numpy", "--epochs", "3", "--lr", "1e9",
                             "--activation", "identity", "--output", "identity",
                             "--loss", "mse"], cwd=tmp_path)
    term = _Terminal(COLUMNS)
    term.feed(raw)
    screen = [line for line in term.screen() if line]
    assert code == 2, "\n".join(screen)
    errors = [line for line in screen if "error: training diverged" in line]
    assert len(errors) == 1 and errors[0].startswith("gpubackprop train: error: "), \
        "\n".join(screen)
    assert sum("%|" in line for line in screen) <= 1          # the bar, left where it was
