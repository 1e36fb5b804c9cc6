"""Output paths: proven writable before any work, locked while a run writes them.

* `output_path(path, argument)`: a file path to write, checked (a string or
  os.PathLike, not a folder, in a folder that exists, not a symlink loop) and
  resolved once: a symlink is replaced by its target, so the file written is
  the one the link points to and the link stays.
* `check_writable(path, argument)`: the above, then proof that a file can be
  created in the folder (a temporary file, created and removed): a read-only
  file system, a full disk or a missing permission shows before training, with
  the path in the message, instead of after the first epoch.
* `PathLock(path)`: an advisory lock (fcntl.flock on PATH.lock) that a run
  holds while it writes a checkpoint; a second run on the same path (another
  process, or another Trainer in this one) fails at once with the holder's pid.
* Temporary files of atomic writes are named `.NAME.tmp-PID-RANDOM`, so that
  `remove_stale_temps` removes only those of processes that are gone.
* `write_errors(path, what)`: an OSError while writing (ENOSPC, EROFS, ...)
  re-raised naming the path and saying the previous file there is intact.
  Both raise UnwritablePath: an OSError (errno kept) and a ValueError.
"""
import contextlib
import errno
import glob
import os
import secrets

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the lock is a no-op there
    fcntl = None


class UnwritablePath(OSError, ValueError):
    """An output path that cannot be written (a read-only file system, a
    missing permission, a full disk): an OSError with its errno, and a
    ValueError, as a bad argument is (io.UnsupportedOperation is both too).
    Its message names the path and the reason, without an "[Errno N]" prefix."""

    def __str__(self):
        return self.strerror or super().__str__()


class MissingFolder(UnwritablePath, FileNotFoundError):
    """The folder of an output path does not exist."""


def output_path(path, argument):
    """`path` as a str, checked for writing a file; symlinks resolved once.

    TypeError if not a path; ValueError (naming `argument`) for '', a folder,
    a symlink loop or a folder that does not exist."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a file path (str or os.PathLike); "
                        f"got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError(f"{argument} must be a file path; got ''")
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{argument} {path!r} is a symbolic link loop; "
                             "point it at a file or remove it") from None
    if os.path.islink(path):
        path = os.path.realpath(path)       # write the target, keep the link
    if os.path.isdir(path):
        raise ValueError(f"{argument} must be a file path; got the folder {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MissingFolder(errno.ENOENT, f"{argument} folder {folder!r} does not exist "
                                          f"(for {path!r})")
    return path


def check_writable(path, argument, n_bytes=1):
    """output_path(path, argument), then create a temporary file of `n_bytes`
    (the size about to be written) in its folder and remove it; OSError
    naming the path if that fails (EROFS, EACCES, ENOSPC).  Returns the
    checked path."""
    path = output_path(path, argument)
    probe = temp_path(path)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _reserve(fd, max(1, int(n_bytes)))
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise UnwritablePath(exc.errno, f"{argument} {path!r} cannot be written: "
                                        f"{exc.strerror} (checked before any work)") from None
    return path


def _reserve(fd, n_bytes):
    """Make the file n_bytes long with real blocks (a full disk says ENOSPC)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, n_bytes)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    chunk = bytes(min(n_bytes, 1 << 20))
    for start in range(0, n_bytes, len(chunk)):
        os.write(fd, chunk[:n_bytes - start])


# -- temporary files -----------------------------------------------------------------
def temp_prefix(path):
    return "." + os.path.basename(path) + ".tmp-"


def temp_path(path):
    """A fresh temporary file name next to `path`, holding this process's pid."""
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f"{temp_prefix(path)}{os.getpid()}-{secrets.token_hex(6)}")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True       # it exists (another user's), or we cannot tell: keep it
    return True


def remove_stale_temps(path):
    """Delete the temporary files of `path` left by writers that are gone
    (killed mid-write); a temp file of a live process (this one included) is
    kept.  Returns the removed names."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    pattern = os.path.join(glob.escape(folder), glob.escape(temp_prefix(path)) + "*")
    removed = []
    for stale in glob.glob(pattern):
        pid_text = os.path.basename(stale)[len(temp_prefix(path)):].split("-", 1)[0]
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or _pid_alive(int(pid_text))):
            continue
        try:
            os.unlink(stale)
            removed.append(stale)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def write_errors(path, what="file"):
    """Re-raise an OSError of the block (a full disk, a read-only file
    system) as one that names `path` and says the previous file is intact."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise UnwritablePath(exc.errno, f"cannot write {what} {os.fspath(path)!r}: "
                                        f"{exc.strerror}; the previous {what} there (if "
                                        "any) is intact") from exc


# -- the checkpoint lock -------------------------------------------------------------------
class PathLock:
    """An exclusive advisory lock on `path` (fcntl.flock on PATH.lock), held
    from acquire() to release(); `with PathLock(path, "checkpoint"):` too.

    A second holder (another process, or another open in this one) gets a
    RuntimeError at once: "checkpoint X is in use by another run (pid N)".
    The lock file holds the holder's pid and is removed on release."""

    def __init__(self, path, what="checkpoint"):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self.what = what
        self._fd = None

    def acquire(self):
        if fcntl is None:
            return self
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:      # a read-only file system, no permission
                raise OSError(exc.errno, f"{self.what} {self.path!r} cannot be written: "
                                         f"{exc.strerror} (its lock file "
                                         f"{self.lock_path!r} cannot be created)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RuntimeError(f"{self.what} {self.path!r} is in use by another run "
                                   f"(pid {holder}); wait for it to finish or use another "
                                   f"{self.what} path") from None
            # the file may have been removed by a holder releasing in between
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is None:
            return
        try:
            os.unlink(self.lock_path)          # while still holding the lock
        except OSError:
            pass
        os.close(self._fd)                     # closing releases the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"
