"""The results' host memory, mapped into this process: each handle's
file (a memfd the answer or the request brought, or a named segment),
mapped once for all the handles of an answer that lie in it, and viewed by
one array per handle, whose collection ends the handle's lease. A small
segment's mapping stays idle after its last view goes, for the next handle
in the same file."""
from __future__ import annotations

import collections
import ctypes
import mmap
import os
import threading
import weakref

import numpy as np

from ._arrays import _finish, _wrap
from ._dtypes import _DTYPES
from ._regions import _POPULATE_MAX
from ._releases import _on_collect

_IDLE_MAX = 16  # idle mappings a client keeps


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Mapping:
    """One mapping of a handle's file (a named segment, or a memfd sent as a
    descriptor): a file of at most _POPULATE_MAX bytes whole (so that any
    later handle in it can reuse the mapping), a larger one from the page
    that holds the handle's bytes. `start`: where those bytes begin in the
    mapping; `buffer`: the bytes, which arrays view, unmapped once the last
    of them and this object are gone. It keeps no descriptor (Python's mmap
    would keep a duplicate open for as long as it lives); one it is given
    stays the caller's."""

    def __init__(self, name, offset, size, given_fd=None):
        if given_fd is not None:
            fd, writable = given_fd, True
        else:
            try:
                fd, writable = os.open("/dev/shm" + name, os.O_RDWR), True
            except PermissionError:
                fd, writable = os.open("/dev/shm" + name, os.O_RDONLY), False
        try:
            st = os.fstat(fd)
            whole = offset + size <= st.st_size <= _POPULATE_MAX
            base = 0 if whole else offset // mmap.PAGESIZE * mmap.PAGESIZE
            length = st.st_size if whole else offset - base + size
            # A small mapping is populated in the same call: one pass in the
            # kernel is cheaper than the page fault of the first read.
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if length <= _POPULATE_MAX else 0)
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            address = _LIBC.mmap(None, max(length, 1), prot, flags, fd, base)
            if address in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                raise OSError(err, f"mapping {name or 'a memfd'}: {os.strerror(err)}")
        finally:
            if given_fd is None:
                os.close(fd)
        self.buffer = (ctypes.c_char * length).from_address(address)
        weakref.finalize(self.buffer, _LIBC.munmap, address, max(length, 1))
        self.name, self.length, self.start, self.reusable = name, length, offset - base, whole
        self.writable = writable
        self.file = (st.st_dev, st.st_ino, st.st_size)
        self.live = {}  # the live handles that view it: id -> (Handle, start, end)
        self.address = address if writable else 0

    def serves(self, offset, size):
        """Whether a handle of `size` bytes at `offset` can use this mapping."""
        return self.reusable and offset + size <= self.length


def _disjoint(members):
    """Handles of one file, (index, location, descriptor), in groups whose
    bytes do not overlap (first fit by offset: the fewest groups)."""
    groups, ends = [], []
    for member in sorted(members, key=lambda m: m[1].offset):
        begin, end = member[1].offset, member[1].offset + member[1].size
        for g, last in enumerate(ends):
            if last <= begin:
                groups[g].append(member)
                ends[g] = end
                break
        else:
            groups.append([member])
            ends.append(end)
    return groups


class _Mappings:
    """A client's mappings of handle segments. When the last view of a handle
    is collected, the mapping of a small segment stays, idle, for the next
    handle in the same segment, which then needs no open and no map: a
    consumer that converts the same producer buffer again and again maps it
    once. Idle mappings are found by file, not by name, since a producer's
    recycled region comes back under a new one. At most _IDLE_MAX stay; the
    oldest is unmapped off the caller's thread. An idle mapping keeps its
    segment's memory (at most _IDLE_MAX times _POPULATE_MAX bytes), not its
    name."""

    _handles: weakref.WeakValueDictionary[int, _Mapping]

    def __init__(self, releaser):
        self._releaser = releaser
        self._idle = collections.OrderedDict()  # (dev, inode, size) -> idle _Mapping
        self._lock = threading.RLock()  # done() may run from a collection under it
        self._handles = weakref.WeakValueDictionary()  # mapping address -> mapping

    def open(self, name, offset, size, fd=None):
        """(mapping, where the bytes at `offset` begin in it) of a named
        segment, or of the file behind descriptor `fd` (which stays open)."""
        mapping = None
        if self._idle:
            try:
                st = os.fstat(fd) if fd is not None else os.stat("/dev/shm" + name)
            except OSError:
                st = None  # the open below says why
            if st is not None:
                with self._lock:
                    mapping = self._idle.pop((st.st_dev, st.st_ino, st.st_size), None)
        if mapping is not None:
            if mapping.serves(offset, size):
                return mapping, offset
            self._releaser.unmap_later(mapping)
        mapping = _Mapping(name, offset, size, fd)
        return mapping, mapping.start

    def done(self, mapping, handle_id):
        """The handle's last view was collected: ends its lease, and keeps
        its mapping idle once no other live handle views it."""
        with self._lock:
            mapping.live.pop(handle_id, None)
            last = not mapping.live
        self._releaser(handle_id)
        if not last or not mapping.reusable:
            return  # others view it, or it is unmapped with its last reference
        with self._lock:
            evicted = [self._idle.pop(mapping.file, None)]
            self._idle[mapping.file] = mapping
            if len(self._idle) > _IDLE_MAX:
                evicted.append(self._idle.popitem(last=False)[1])
        for old in evicted:
            if old is not None and old is not mapping:
                self._releaser.unmap_later(old)

    def map_all(self, handles, like, request_fds, received, open_cuda):
        """The arrays of the handles of one answer. A CUDA handle opens on its
        own; host memory (a descriptor, the request's own or one the answer
        brought, or a named segment) is mapped once a file for all of its
        handles, such as a batch's arena: handles whose bytes overlap (aliases
        of one region) get mappings of their own, so that handle() tells them
        apart. Whatever fails releases the handles not mapped yet.
        `open_cuda`(handle, like) gives the result of a CUDA handle."""
        results = [None] * len(handles)
        files = {}  # (st_dev, st_ino) or name -> [(index, location, descriptor)]
        file_of = {}  # descriptor -> its (st_dev, st_ino)
        unsettled = set(range(len(handles)))
        try:
            for i, handle in enumerate(handles):
                if handle.proto.HasField("cuda"):
                    unsettled.discard(i)  # open_cuda releases it if it fails
                    results[i] = open_cuda(handle, like)
                    continue
                location, fd = _location(handle, request_fds, received)
                if location.size == 0:  # nothing to map; the array alone holds the lease
                    results[i] = self.view(handle, like)
                    unsettled.discard(i)
                    continue
                key = location.name if fd is None else file_of.get(fd)
                if key is None:
                    st = os.fstat(fd)
                    key = file_of[fd] = (st.st_dev, st.st_ino)
                files.setdefault(key, []).append((i, location, fd))
            for members in files.values():
                for group in _disjoint(members):
                    lo = min(location.offset for _, location, _ in group)
                    hi = max(location.offset + location.size for _, location, _ in group)
                    _, location, fd = group[0]
                    mapping, start = self.open(location.name if fd is None else None, lo, hi - lo,
                                               fd)
                    self._handles[mapping.address] = mapping
                    for i, location, _ in group:
                        results[i] = self.view(handles[i], like, mapping,
                                               start + location.offset - lo, location.size)
                        unsettled.discard(i)
        except BaseException:
            for i in unsettled:
                self._releaser(handles[i].id)
            raise
        return results

    def view(self, handle, like, mapping=None, start=0, size=0):
        """The array of a handle: its `size` bytes at `start` in `mapping`,
        or none (an empty one) without a mapping."""
        storage = _DTYPES[handle.dtype][1]
        strides = [s * storage.itemsize for s in handle.strides]
        if mapping is None:
            arr = np.ndarray(handle.shape, dtype=storage, buffer=bytearray(0), strides=strides)
            _on_collect(arr, self._releaser, handle.id)
        else:
            arr = np.ndarray(handle.shape, dtype=storage, buffer=mapping.buffer,
                             offset=start + handle.offset * storage.itemsize, strides=strides)
            if not mapping.writable:
                arr.setflags(write=False)
            mapping.live[handle.id] = (handle, start, start + size)
            # `arr` is this handle's own: every view of it, numpy's or
            # torch's, keeps it (numpy stops collapsing bases at the mapping,
            # another type).
            _on_collect(arr, self.done, mapping, handle.id)
        return _finish(_wrap(arr, handle.dtype, like), handle, like)

    def handle_of(self, address):
        """The Handle of the live host result whose bytes hold `address`, or None."""
        for mapping in list(self._handles.values()):
            at = address - mapping.address
            if 0 <= at < max(mapping.length, 1):
                for handle, start, end in list(mapping.live.values()):
                    if start <= at < max(end, start + 1):
                        return handle
        return None


def _location(handle, request_fds, received):
    """(location, descriptor or None) of a host handle's memory."""
    if handle.proto.HasField("fd"):
        location = handle.proto.fd
        held = request_fds if location.request_fd else received
        if location.fd_index >= len(held):
            raise RuntimeError(f"the handle names descriptor {location.fd_index} of "
                               f"{len(held)}")
        return location, held[location.fd_index]
    location = handle.proto.shared_memory
    if not location.name:
        raise RuntimeError("the handle names no memory this process can map")
    return location, None
