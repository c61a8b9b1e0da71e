"""Calls, as steps. Whatever talks to the server is written once, as a
generator of steps: it yields what it needs done (a _LocalCall, an _Rpc, or
_SEND_PENDING) and is sent the answer, or has the step's error raised where
it yielded. Client runs the steps on the calling thread (_run_blocking);
aio.Client awaits each on its event loop. Requests, results and errors are
one code for both."""


class _LocalCall:
    """A step: LocalRequest `request` over the local transport, with the
    descriptors `fds`. Answers (LocalResponse, received descriptors), or
    None where it goes over gRPC instead (no local transport here, or too
    big for a datagram)."""

    __slots__ = ("request", "fds")

    def __init__(self, request, fds=()):
        self.request, self.fds = request, fds


class _Rpc:
    """A step: gRPC method `method` with `request` (an iterator of messages
    for ConvertUpload) and the call's keyword arguments `options`. Answers
    the response, or for a streamed answer (STREAMED) the list of its
    messages."""

    __slots__ = ("method", "request", "options")
    STREAMED = frozenset(("Read", "ConvertToData"))

    def __init__(self, method, request, options):
        self.method, self.request, self.options = method, request, options


# A step: sends the releases queued (_Releaser.send_pending), and answers
# whether there were any.
_SEND_PENDING = object()


class _Drive:
    """Generator `steps`, run: iterating gives each step it yields, for the
    driver to perform within answering(), setting `answer`. An error raised
    there (cancellation too) is raised in the steps instead, which clean
    up. Once they return, `value` is what they returned."""

    def __init__(self, steps):
        self._steps = steps
        # An error waits here until it is raised in the steps: a local that
        # kept it would tie the driver's frame and its traceback in a cycle,
        # holding what the steps held (a staged memfd) until the cycle
        # collector ran.
        self._failed = []
        self.answer = self.value = None

    def __iter__(self):
        while True:
            try:
                if self._failed:
                    step = self._steps.throw(self._failed.pop())
                else:
                    step = self._steps.send(self.answer)
            except StopIteration as done:
                self.value = done.value
                return
            self.answer = None
            yield step

    def answering(self):
        return self

    def __enter__(self):
        pass

    def __exit__(self, kind, error, traceback):
        if error is not None:
            self._failed.append(error)
        return True


def _run_blocking(io, steps):
    """What generator `steps` returns, each step performed on this thread
    by `io`."""
    drive = _Drive(steps)
    for step in drive:
        with drive.answering():
            drive.answer = io.perform(step)
    return drive.value


class _BlockingIO:
    """Performs steps on the calling thread: over `local` (a _Local, or
    None) and gRPC stub `stub`, and _SEND_PENDING with `releaser`."""

    def __init__(self, local, stub, releaser):
        self.local, self.stub, self.releaser = local, stub, releaser

    def perform(self, step):
        if step is _SEND_PENDING:
            return self.releaser.send_pending()
        if isinstance(step, _LocalCall):
            return None if self.local is None else self.local.call(step.request, step.fds)
        answer = getattr(self.stub, step.method)(step.request, **step.options)
        return list(answer) if step.method in _Rpc.STREAMED else answer
