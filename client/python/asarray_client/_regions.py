"""Memory this process creates for the server to alias: regions (a sealed
memfd, or a named segment in /dev/shm), each mapped whole, and a client's
registry of them (_Regions): which region an array lies in, a new or
recycled one for each allocation of empty(), zeros(), share() and staged
bytes, and the server's handle of each allocation it holds.

Ownership: regions belong to this process. A small one whose arrays were
all collected waits in a pool for the next allocation of its size, which
takes it only when no handle in any process still aliases it (see
_Region.recycle); a big one, or one the pool drops, is closed (and a named
one unlinked). Named ones are unlinked at exit (not after a crash); memfds
go with the last process that holds them, whatever ends it."""
from __future__ import annotations

import collections
import ctypes
import fcntl
import mmap
import os
import secrets
import threading
import weakref
from typing import Any

import numpy as np

from ._refs import TensorRef
from ._releases import _on_collect
from ._steps import _SEND_PENDING

# Regions up to this size are populated when made, and only they wait in the
# pool; mappings up to it are populated too, and segments up to it mapped
# whole and kept idle for reuse (see _Mapping, _Mappings).
_POPULATE_MAX = 1 << 20
_POOL_MAX = 16  # small regions a client keeps for reuse


class _Region:
    """Memory this process created, mapped whole: a sealed memfd (no name),
    or a named segment in /dev/shm. It keeps its descriptor, which recycling
    locks; closed (and a segment unlinked) when collected."""

    def __init__(self, nbytes, memfd):
        capacity = _capacity(nbytes)
        if memfd:
            self._name = [None]
            fd = os.memfd_create("asarray-client", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        else:
            self._name = [_region_name()]  # a list: the finalizer sees renames
            fd = os.open("/dev/shm" + self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if memfd:
                os.ftruncate(fd, capacity)
                # The server maps only memory whose size cannot change under it.
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            os.posix_fallocate(fd, 0, capacity)
            # A small region is populated up front: one pass in the kernel
            # instead of a fault per page. A big one is not: its pages fault
            # in as they are first written, which the copy of share() spreads
            # over threads (populating first cost 57 against 35 ms for 64 MiB
            # on 2 cores, 197 against 122 ms for 256 MiB).
            populate = mmap.MAP_POPULATE if capacity <= _POPULATE_MAX else 0
            self.map = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED | populate)
        except BaseException:
            os.close(fd)
            if not memfd:
                os.unlink("/dev/shm" + self.name)
            raise
        self.fd, self.size = fd, nbytes
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.owner = None  # a weak reference to the array of the allocation in it
        self.held = None  # the TensorRef of that allocation, if the server holds it
        weakref.finalize(self, _discard, self._name, fd)

    @property
    def name(self):
        return self._name[0]

    @property
    def memfd(self):
        return self._name[0] is None

    def recycle(self, nbytes):
        """Makes the region new for an array of `nbytes`, if nobody else uses
        it: asarrayd holds a shared flock (on its own open file description)
        on every client region that a handle in any process aliases, or that
        it reads, so an exclusive one means no handle points here. A named
        region also takes a new name, so that every reference to the old
        arrays names nothing."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if not self.memfd:
                name = _region_name()
                os.rename("/dev/shm" + self.name, "/dev/shm" + name)
                self._name[0] = name
        finally:
            # Unlocked before the region is handed out: the server locks it
            # shared when it receives it.
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.size = nbytes
        return True


class _RegionPool:
    """Small regions whose arrays were all collected, for empty() and share()
    to use again: no new segment, no mapping, no page faults, and no munmap,
    which on some hosts stalls every process for a while. At most _POOL_MAX
    wait; beyond that the oldest is unlinked and unmapped."""

    def __init__(self):
        self._free = collections.deque()
        # Reentrant: a finalizer that collection runs on this thread may give()
        # while take() holds it.
        self._lock = threading.RLock()

    def take(self, nbytes, memfd):
        """A recycled region that holds `nbytes`, or None. The lock is held
        across the attempts (each a non-blocking flock, and a rename for a
        named one), so that two threads never recycle the same region."""
        with self._lock:
            for region in self._fitting(nbytes, memfd):  # oldest first: likeliest free by now
                if region.recycle(nbytes):
                    self._free.remove(region)
                    return region
        return None

    def has(self, nbytes, memfd):
        """Whether a free region would hold `nbytes`, locked or not."""
        with self._lock:
            return bool(self._fitting(nbytes, memfd))

    def _fitting(self, nbytes, memfd):
        """The free regions of the right capacity and kind, oldest first."""
        capacity = _capacity(nbytes)
        return [r for r in self._free if len(r.map) == capacity and r.memfd == memfd]

    def give(self, region):
        """The last array of `region` was collected."""
        if len(region.map) > _POPULATE_MAX:
            return  # unlinked and unmapped with its last reference, now
        with self._lock:
            self._free.append(region)
            dropped = self._free.popleft() if len(self._free) > _POOL_MAX else None
        del dropped


_PARALLEL_COPY_MIN = 4 << 20  # below it one thread copies faster
_COPY_CHUNK_MIN = 2 << 20
_copy_pool = None
_copy_pool_lock = threading.Lock()


def _copy_into(out, arr):
    """out[...] = arr; a big contiguous copy runs on several threads (ctypes
    releases the GIL for memmove), as many as the cores, at most 8."""
    nbytes = out.nbytes
    threads = min(os.cpu_count() or 1, 8, nbytes // _COPY_CHUNK_MIN)
    if (nbytes < _PARALLEL_COPY_MIN or threads < 2 or arr.dtype != out.dtype or
            arr.shape != out.shape or not arr.flags.c_contiguous or
            not out.flags.c_contiguous):
        out[...] = arr
        return
    global _copy_pool
    with _copy_pool_lock:
        if _copy_pool is None:
            import concurrent.futures
            _copy_pool = concurrent.futures.ThreadPoolExecutor(
                8, thread_name_prefix="asarray-copy")
    step = -(-nbytes // threads)
    step = -(-step // mmap.PAGESIZE) * mmap.PAGESIZE
    dst, src = out.ctypes.data, arr.ctypes.data
    parts = [_copy_pool.submit(ctypes.memmove, dst + o, src + o, min(step, nbytes - o))
             for o in range(0, nbytes, step)]
    for part in parts:
        part.result()


def _region_name():
    return f"/asarray-client-{os.getpid()}-{secrets.token_hex(16)}"


def _capacity(nbytes):
    return max(-(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.PAGESIZE)


def _discard(name, fd):
    if name[0] is not None:
        _unlink(name[0])
    os.close(fd)


def _unlink(name):
    try:
        os.unlink("/dev/shm" + name)
    except FileNotFoundError:
        pass



class _Regions:
    """A client's regions, by address: the one an array lies in, a region
    for each new allocation (recycled from the pool when one is free), and
    the arrays that empty(), zeros() and share() returned, with the
    TensorRef of the server's handle of each, so that ref() of one makes no
    call."""

    _by_address: weakref.WeakValueDictionary[int, _Region]
    _allocations: dict[int, tuple[weakref.ref[Any], TensorRef]]

    def __init__(self):
        self._by_address = weakref.WeakValueDictionary()  # address -> _Region
        self._last = None  # a weak reference to the region found last
        self._pool = _RegionPool()
        self._allocations = {}  # id(result of empty()) -> (weak reference, TensorRef)

    def __getitem__(self, address):
        """The region that starts at `address`."""
        return self._by_address[address]

    def holding(self, lo, hi):
        """The region that holds the bytes [lo, hi), or None."""
        region = self._by_address.get(lo)  # an array that starts its region, as empty() makes
        if region is not None and hi <= region.address + region.size:
            return region
        region = self._last() if self._last is not None else None
        if region is not None and region.address <= lo and hi <= region.address + region.size:
            return region  # the leaves of one tree share a region
        for region in list(self._by_address.values()):
            end = region.address + region.size
            # An empty view holds nothing: its start may sit anywhere in the mapping.
            if region.address <= lo and (hi <= end if hi > lo else lo <= region.address + len(region.map)):
                self._last = weakref.ref(region)
                return region
        return None

    def allocate(self, shape, storage, memfd, zero):
        """The steps that give (a new array of `shape` and numpy dtype
        `storage` at the start of a region, the region): a memfd or a named
        one, zeroed where `zero`. The region goes back to the pool when the
        array is collected."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * storage.itemsize
        region = self._pool.take(nbytes, memfd)
        if region is None and self._pool.has(nbytes, memfd) and (yield _SEND_PENDING):
            # The handles that kept a free region locked may be this
            # client's own, still queued: released now, it may be reused.
            region = self._pool.take(nbytes, memfd)
        if region is None:
            region = _Region(nbytes, memfd)  # fresh pages are zero
            self._by_address[region.address] = region
        elif zero:
            ctypes.memset(region.address, 0, nbytes)
        arr = np.ndarray(shape, dtype=storage, buffer=region.map)
        arr.setflags(write=True)
        region.owner = weakref.ref(arr)
        region.held = None
        # `arr` is this allocation's own: every view of it keeps it (numpy
        # stops collapsing bases at the mapping, another type). The region
        # goes back to the pool when it is collected.
        _on_collect(arr, self._pool.give, region)
        return arr, region

    def remember(self, result, arr):
        """`result` (of empty(), zeros() or share()) is what the caller got
        of allocation `arr`: if the server holds it, ref(result) is its
        TensorRef."""
        region = self._by_address.get(arr.ctypes.data)
        held = region.held if region is not None else None
        if held is not None:
            key, allocations = id(result), self._allocations
            # The entry goes with `result` (before its id can be reused).
            allocations[key] = (weakref.ref(result, lambda _: allocations.pop(key, None)), held)

    def allocation(self, array):
        """The TensorRef remember() gave `array`, or None."""
        known = self._allocations.get(id(array))
        if known is not None and known[0]() is array:
            return known[1]
        return None
