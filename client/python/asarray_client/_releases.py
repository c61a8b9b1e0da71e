"""The ends of leases: every result's handle is released once the last
array or tensor viewing it is collected (_on_collect), and at exit for
those still alive. _Releaser sends those releases without making the
collecting thread wait: the ids ride along with the client's next Convert
call, or go out in a Release call from a thread of its own."""
from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref

import grpc

from asarray.v1 import asarray_pb2 as pb

from ._steps import _BlockingIO, _LocalCall, _Rpc, _run_blocking
from ._transport import _close_all


def _release_sender(local, stub):
    """Sends a ReleaseRequest on the calling thread (see _release_steps). Holds no
    reference to the Client."""
    io = _BlockingIO(local, stub, None)
    return lambda request: _run_blocking(io, _release_steps(request, 10))


def _unique(ids):
    """`ids` without repeats, in order."""
    return list(dict.fromkeys(ids))


def _release_steps(request, timeout):
    """The steps of ReleaseRequest `request`: over the local transport when
    it is up and free, else over gRPC within `timeout` seconds."""
    answer = yield _LocalCall(pb.LocalRequest(release=request))
    if answer is None:
        yield _Rpc("Release", request, {"timeout": timeout})
    else:
        _close_all(answer[1])


class _Releaser:
    """Ends the leases of collected views without making the thread that
    dropped them wait on a round trip. Their ids ride along with this
    client's next Convert call (see take()); what no call took within a few
    milliseconds goes out in a Release call from a thread of its own. That
    thread also unmaps the mappings the idle cache lets go (see _Mappings)."""

    _GATHER_S = 0.005  # how long pending ids wait for a call to carry them
    _UNMAP_BATCH = 8

    def __init__(self, send):
        self.send_now = send  # sends one ReleaseRequest, and waits
        self._pending = []
        self._unmap = []
        self._cv = threading.Condition()
        self._busy = 0  # Release calls and calls carrying ids, in flight
        threading.Thread(target=self._run, daemon=True).start()
        _RELEASERS.add(self)

    def __call__(self, handle_id):
        with self._cv:
            self._pending.append(handle_id)
            if len(self._pending) == 1:
                self._cv.notify()

    def take(self):
        """The pending ids, for the caller's call to carry; then settle()."""
        if not self._pending:  # a racy peek is fine: ids left now go next time
            return []
        with self._cv:
            batch, self._pending = self._pending, []
            self._busy += 1
        return batch

    def settle(self, batch, delivered):
        """After the call that carried `batch`: queues it again unless the
        server got it."""
        with self._cv:
            if not delivered:
                self._pending[:0] = batch
            self._busy -= 1
            self._cv.notify_all()

    @contextlib.contextmanager
    def carried(self, request):
        """Around a call of ConvertRequest or ConvertBatchRequest `request`:
        puts the pending ids in its release_ids, and queues them again
        unless the server got them."""
        carried = self.take()
        if not carried:
            yield
            return
        request.release_ids.extend(_unique(carried))
        delivered = False
        try:
            yield
            delivered = True
        except grpc.RpcError as e:
            # Any answer but UNAVAILABLE comes from a server that ran the call,
            # and with it the releases.
            delivered = e.code() != grpc.StatusCode.UNAVAILABLE
            raise
        finally:
            self.settle(carried, delivered)

    def send_pending(self):
        """Sends the queued releases from the calling thread, and waits for
        those already on their way (the sender thread's, or a call's):
        whether there were any."""
        batch = self.take()
        if not batch:
            with self._cv:
                if not self._busy:
                    return False
                self._cv.wait_for(lambda: not self._busy)
            return True
        delivered = False
        try:
            self._send(batch)
            delivered = True
        finally:
            self.settle(batch, delivered)
        return True

    def unmap_later(self, mapping):
        """Drops `mapping` from the background thread, which unmaps it there
        (munmap is not free)."""
        with self._cv:
            self._unmap.append(mapping)
            if len(self._unmap) >= self._UNMAP_BATCH:
                self._cv.notify()

    def flush(self):
        """Waits until every queued release was sent."""
        with self._cv:
            self._cv.wait_for(lambda: not self._pending and not self._busy)

    def drain(self):
        """At exit: sends what is queued from the calling thread, without
        relying on the sender thread, which interpreter shutdown may stop."""
        with self._cv:
            self._cv.wait_for(lambda: not self._busy, timeout=5)
            batch, self._pending = self._pending, []
        self._send(batch)

    def _send(self, batch):
        batch = _unique(batch)  # the server refuses a Release that names an id twice
        if batch:
            try:
                self.send_now(pb.ReleaseRequest(id=batch[0], more_ids=batch[1:]))
            except Exception:  # unknown ids were released already or expired
                pass

    def _run(self):
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._pending or len(self._unmap) >= self._UNMAP_BATCH)
                unmap, self._unmap = self._unmap, []
                gather = bool(self._pending)
                self._busy += gather
            # The last references: the mappings unmap here (one an array
            # still views would stay until that array goes; close() would not
            # wait for it).
            del unmap
            if not gather:
                continue
            time.sleep(self._GATHER_S)  # a Convert may carry them meanwhile
            with self._cv:
                batch, self._pending = self._pending, []
            self._send(batch)
            with self._cv:
                self._busy -= 1
                self._cv.notify_all()


_RELEASERS: weakref.WeakSet[_Releaser] = weakref.WeakSet()
_LEASE_FINALIZERS = set()  # the finalizers of live views, until they run


def _on_collect(obj, fn, *args):
    """Calls fn(*args) once `obj` is collected, or at exit."""
    def run():
        _LEASE_FINALIZERS.discard(finalizer)
        fn(*args)
    finalizer = weakref.finalize(obj, run)
    _LEASE_FINALIZERS.add(finalizer)


@atexit.register
def _flush_all():
    # Views still alive at exit release their handles now: weakref's own exit
    # hook may run after this one (its order depends on who imported first).
    for finalizer in list(_LEASE_FINALIZERS):
        finalizer()
    for releaser in list(_RELEASERS):
        releaser.drain()
