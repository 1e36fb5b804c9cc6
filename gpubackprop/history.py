"""What training records: the History of epochs, and the TrainingDiverged error."""


class TrainingDiverged(RuntimeError):
    """The cost or the parameters became NaN or infinite.

    `epoch` (counted from 0) and `step` (within the epoch, from 0) say where
    it was detected (the message also names the epoch as the progress
    lines count it, from 1); the network and the optimizer are back at the state
    they had at the start of that epoch or at the last checkpoint within it,
    and no checkpoint was written after that point."""

    def __init__(self, epoch, step):
        self.epoch, self.step = epoch, step
        super().__init__(f"training diverged: the cost or the parameters became NaN or "
                         f"infinite at epoch {epoch}, step {step} (both counted from 0: the "
                         f"progress lines' epoch {epoch + 1}); the network keeps the "
                         f"parameters it had at the last good point (the start of the epoch "
                         f"or the last checkpoint); lower the learning rate?")


class History:
    """Per-epoch records: history.loss, .accuracy, .val_loss, .val_accuracy,
    .time (lists, one entry per epoch); history[i] is epoch i's dict."""

    KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "time")

    def __init__(self, records=None):
        self.records = list(records or [])

    def append(self, record):
        self.records.append(record)

    def __getattr__(self, key):
        if key in History.KEYS:
            return [r.get(key) for r in self.records]
        raise AttributeError(key)

    def __getitem__(self, i):
        return self.records[i]

    def __len__(self):
        return len(self.records)

    def as_dict(self):
        return {k: getattr(self, k) for k in self.KEYS}

    def __repr__(self):
        last = self.records[-1] if self.records else {}
        return f"History({len(self)} epochs, last={last})"
