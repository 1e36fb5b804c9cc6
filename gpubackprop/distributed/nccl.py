"""NCCL collectives on device (CuPy) arrays, one GPU per rank.

`NcclOps` wraps a `cupy.cuda.nccl.NcclCommunicator` and the compute stream:
the all-reduce is queued on the stream the kernels run on (no extra
synchronization; the optimizer step that follows is ordered after it), and
`check_async_error()` is polled after every call so an NCCL failure raises a
Python error instead of hanging.  `synchronize()` waits for the stream while
polling, and gives up after `timeout` seconds.

The unique id is made on rank 0 and sent over MPI (`comm.bcast`), not
through cupyx.distributed's TCP store (a fixed port and a subprocess).
Everything that needs a GPU is behind `create`; the argument handling
(dtype codes, counts, pointers) is testable with a fake communicator.
"""
import time

#: NumPy dtype name -> the name of its code in cupy.cuda.nccl
DTYPE_CODES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "float16": "NCCL_FLOAT16",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint64": "NCCL_UINT64"}


def pointer(x):
    """The device address of a CUDA array (anything with __cuda_array_interface__)."""
    interface = getattr(x, "__cuda_array_interface__", None)
    if interface is None:
        raise TypeError(f"NCCL needs a device array; got {type(x).__name__}")
    return int(interface["data"][0])


class NcclOps:
    """NCCL collectives of one rank.

    nccl: the cupy.cuda.nccl module (or a fake with the same names);
    communicator: its NcclCommunicator; stream: an object with `.ptr` and
    `.done` (the compute stream), or a callable returning one (CuPy's current
    stream at call time); timeout: seconds synchronize() waits."""

    def __init__(self, nccl, communicator, stream, timeout=600.0):
        self.nccl, self.communicator = nccl, communicator
        self._stream = stream
        self.timeout = float(timeout)

    @property
    def stream(self):
        return self._stream() if callable(self._stream) else self._stream

    def dtype_code(self, dtype):
        name = DTYPE_CODES.get(str(dtype))
        if name is None:
            raise TypeError(f"NCCL collectives take {sorted(DTYPE_CODES)}; got {dtype}")
        return getattr(self.nccl, name)

    def allreduce(self, x):
        """x = the sum of x over ranks, in place, on the compute stream."""
        self.communicator.allReduce(pointer(x), pointer(x), x.size, self.dtype_code(x.dtype),
                                    self.nccl.NCCL_SUM, self.stream.ptr)
        self.poll()

    def allgather(self, x, size):
        """(size, *x.shape): every rank's x, in rank order."""
        gathered = _empty_like_stack(x, size)
        self.communicator.allGather(pointer(x), pointer(gathered), x.size,
                                    self.dtype_code(x.dtype), self.stream.ptr)
        self.poll()
        return gathered

    def bcast(self, x):
        """Rank 0's x on every rank, in place."""
        self.communicator.bcast(pointer(x), x.size, self.dtype_code(x.dtype), 0, self.stream.ptr)
        self.poll()

    def poll(self):
        """Raise now if NCCL reported an asynchronous error (a peer died, a
        network failure); cheap, does not wait."""
        self.communicator.check_async_error()

    def synchronize(self):
        """Wait for the stream, polling NCCL; after `timeout` seconds abort
        the communicator and raise TimeoutError (never wait forever)."""
        stream, start = self.stream, time.monotonic()
        while not stream.done:
            self.poll()
            if time.monotonic() - start > self.timeout:
                self.communicator.abort()
                raise TimeoutError(f"an NCCL collective did not finish in {self.timeout:g} s; "
                                   "a rank probably died or stopped calling collectives")
            time.sleep(1e-4)
        self.poll()


def create(mpi_comm, rank, size, device_index, timeout=600.0):
    """NcclOps for this rank on GPU `device_index`; the unique id travels
    over `mpi_comm` (None for a one-rank world)."""
    import cupy
    from cupy.cuda import nccl

    cupy.cuda.Device(device_index).use()
    uid = nccl.get_unique_id() if rank == 0 else None
    if mpi_comm is not None:
        uid = mpi_comm.bcast(uid, root=0)
    communicator = nccl.NcclCommunicator(size, uid, rank)
    return NcclOps(nccl, communicator, cupy.cuda.get_current_stream, timeout)


def gpu_identity(device_index):
    """(host name, PCI bus id) of a GPU: the same physical GPU gives the same
    pair whatever CUDA_VISIBLE_DEVICES numbers it as."""
    import socket

    import cupy

    return socket.gethostname(), cupy.cuda.Device(device_index).pci_bus_id


def shared_gpu(identities):
    """The first (rank a, rank b, identity) where two ranks name one GPU, or None."""
    seen = {}
    for rank, identity in enumerate(identities):
        if identity in seen:
            return seen[identity], rank, identity
        seen[identity] = rank
    return None


def unavailable_reason():
    """None if cupy.cuda.nccl can be used here, else why not."""
    try:
        import cupy
        from cupy.cuda import nccl
    except Exception as exc:
        return (f"NCCL needs CuPy with NCCL ({type(exc).__name__}: {exc}); "
                "pip install 'gpubackprop[cuda12]' or 'gpubackprop[cuda13]'")
    if not getattr(nccl, "available", True):
        return "CuPy was built without NCCL; install the nvidia-nccl wheel (the cuda extras)"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU is visible"
    except Exception as exc:
        return f"no usable CUDA GPU ({type(exc).__name__}: {exc})"
    return None


def _empty_like_stack(x, size):
    """An uninitialized (size, *x.shape) array where x lives."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy.empty((size,) + x.shape, dtype=x.dtype)
    import numpy as np

    return np.empty((size,) + x.shape, dtype=x.dtype).view(type(x))
