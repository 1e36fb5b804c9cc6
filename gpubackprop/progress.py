"""Training progress: one tqdm bar on stderr, epoch lines above it.

    progress=None   a bar (with epoch lines above it) when stderr is a
                    terminal; nothing otherwise
    progress=True   the same, and plain epoch lines when stderr is not a
                    terminal (a log file, a pipe, a notebook cell's capture)
    progress=False  nothing

Lines go through `write` (tqdm.write underneath), which lifts the bar, prints
the line on stdout and puts the bar back below it, so a line never glues to
the bar.  The bar takes the terminal's width at every redraw.  `notice(text)`
is for one-line messages from anywhere during training (say, a backend about
to compile): the line goes above the bar and the bar says it until the next
step, so a long first compile never looks like a frozen 0%.
"""
import sys

from tqdm.std import tqdm

_active = []          # the bars now on screen (at most one in practice)


def write(line, file=None):
    """Print `line` on `file` (stdout) above any progress bar."""
    file = sys.stdout if file is None else file
    with tqdm.external_write_mode(file=file):
        file.write(line + "\n")
        file.flush()


def notice(text):
    """A one-line message on stderr, above the bar; the bar shows it too."""
    write(text, file=sys.stderr)
    for bar in _active:
        bar.status(text)


def close_all():
    """Close the bars still on screen (a run that raised never closed its
    bar): an error printed next starts on a line of its own."""
    for bar in list(_active):
        bar.close()


def epoch_line(record, epochs=None):
    """'epoch   3/30: loss 0.0812 acc 0.9421 | test loss 0.0917 acc 0.9532 | 0.41s'
    (under 80 columns)."""
    line = f"epoch {record['epoch']:3d}" + (f"/{epochs}" if epochs else "")
    line += f": loss {record['loss']:.4f}"
    if record.get("accuracy") is not None:
        line += f" acc {record['accuracy']:.4f}"
    if record.get("val_loss") is not None:
        line += f" | test loss {record['val_loss']:.4f}"
        if record.get("val_accuracy") is not None:
            line += f" acc {record['val_accuracy']:.4f}"
    return line + f" | {record['time']:.2f}s"


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


class ProgressBar:
    """ProgressBar(total_steps, enabled, epochs=...): update(done) after each
    run of steps, epoch_done(record) after each epoch, close() at the end."""

    def __init__(self, total, enabled=None, stream=None, epochs=None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.epochs = max(int(total), 1), epochs
        self.show_bar = enabled is not False and _isatty(self.stream)
        self.lines = enabled is True or self.show_bar
        self.bar = None
        self._metrics = ""            # the last epoch's numbers, shown in the bar
        self._status = None           # a notice shown until the next update
        if self.show_bar:
            close_all()               # one bar: a run that raised left its own
            self.bar = tqdm(total=self.total, file=self.stream, dynamic_ncols=True,
                            mininterval=0.1, leave=True,
                            desc=f"epoch 1/{epochs}" if epochs else "training",
                            bar_format="{desc} {percentage:3.0f}%|{bar}| "
                                       "{elapsed}<{remaining}{postfix}")
            self.status("starting")
            _active.append(self)

    def chunk_steps(self, steps_per_epoch):
        """How many steps to run between redraws (all of them without a bar).
        Also tells the bar the epoch length, hence the number of epochs if the
        caller did not give it."""
        if self.epochs is None and steps_per_epoch > 0 and self.total % steps_per_epoch == 0:
            self.epochs = self.total // steps_per_epoch
        return max(1, steps_per_epoch // 20) if self.show_bar else steps_per_epoch

    def status(self, text):
        """Text in the bar until the next update (e.g. 'compiling ...')."""
        if self.bar is not None:
            self._status = text
            self.bar.set_postfix_str(text, refresh=True)

    def update(self, done):
        """`done` steps of the whole run are finished."""
        if self.bar is not None:
            if self._status is not None:
                self._status = None
                self.bar.set_postfix_str(self._metrics, refresh=False)
            if self.epochs:                       # the epoch under way
                per_epoch = self.bar.total // self.epochs
                current = min(done // max(per_epoch, 1) + 1, self.epochs)
                self.bar.set_description_str(f"epoch {current}/{self.epochs}", refresh=False)
            self.bar.update(done - self.bar.n)

    def epoch_done(self, record):
        if self.bar is not None:
            shown = {"loss": ("loss", 4), "accuracy": ("acc", 3), "val_accuracy": ("val", 3)}
            self._metrics = " ".join(f"{short}={record[k]:.{digits}f}"
                                     for k, (short, digits) in shown.items()
                                     if record.get(k) is not None)
            self.bar.set_postfix_str(self._metrics, refresh=False)
        if self.lines:
            write(epoch_line(record, self.epochs))

    def close(self):
        if self.bar is not None:
            self.bar.close()
            _active.remove(self)
            self.bar = None

