"""The CPU's usable cores and the worker threads that share them: the
compiled epoch's split steps and the data checks of a fit use one pool."""
import concurrent.futures
import os


def usable_cores():
    """The cores this process may run on (its affinity, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                 # no affinity on this system (macOS)
        return os.cpu_count() or 1


_pools = {}
if hasattr(os, "register_at_fork"):     # a forked child has none of the pools' threads
    os.register_at_fork(after_in_child=_pools.clear)


def pool(workers):
    """A pool of `workers` threads (at least one), made once per count."""
    if workers not in _pools:
        _pools[workers] = concurrent.futures.ThreadPoolExecutor(
            max(1, workers), thread_name_prefix="gpubackprop")
    return _pools[workers]
