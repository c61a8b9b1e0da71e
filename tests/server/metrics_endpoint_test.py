"""/metrics of a real asarrayd: scraped with curl, checked with promtool.

Starts asarrayd with --metrics_listen, makes calls that succeed and calls that
fail, over gRPC and over the local transport, and checks that the scrape's
counts move by exactly those calls; promtool must accept every scrape.
Environment (set by ctest): ASARRAYD, the server binary; PYTHONPATH with the
generated asarray.v1 modules.
"""
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import grpc
import pytest

from asarray.v1 import asarray_pb2 as pb
from asarray.v1 import asarray_pb2_grpc as pb_grpc

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{.*\})?) (\S+)$")


class Asarrayd:
    """An asarrayd on a private socket, with `metrics` as its --metrics_listen."""

    def __init__(self, metrics):
        self.dir = tempfile.mkdtemp(prefix="asarrayd-metrics-")
        self.socket = f"{self.dir}/s/asarrayd.sock"
        self.process = subprocess.Popen(
            [os.environ["ASARRAYD"], f"--listen=unix:{self.socket}",
             f"--shm_prefix=asarrayd-metrics-{os.getpid()}-{os.path.basename(self.dir)[-6:]}",
             f"--metrics_listen={metrics}"],
            stderr=subprocess.PIPE, text=True)
        self.log = []
        self.url = None
        for line in self.process.stderr:
            self.log.append(line)
            found = re.search(r"metrics on (http://\S+/metrics)$", line.strip())
            if found:
                self.url = found.group(1)
                break
        # The rest of its log is kept, read so that it never blocks.
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()
        if self.url is None:
            code = self.process.wait(timeout=30)
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"asarrayd exited with {code} before serving /metrics: "
                               f"{''.join(self.log)}")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


@pytest.fixture
def server():
    s = Asarrayd("127.0.0.1:0")
    yield s
    assert s.stop() == 0, "".join(s.log)  # a sanitizer's report exits otherwise


def curl(*args):
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "20", *args],
                          check=True, capture_output=True, text=True).stdout


def scrape(server):
    text = curl("--fail", server.url)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, value = SERIES.match(line).groups()
        assert series not in samples, f"{series} twice"
        samples[series] = float(value)
    return samples


def calls(transport, method, code):
    return f'asarrayd_calls_total{{transport="{transport}",method="{method}",code="{code}"}}'


def duration_count(transport, method):
    return f'asarrayd_call_duration_seconds_count{{transport="{transport}",method="{method}"}}'


def moved(before, after):
    """The series whose value changed, and by how much (new series from 0)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def grpc_code(fn, *args):
    try:
        result = fn(*args)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)  # a stream: its status comes at the end
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


class Local:
    """A connection of the local transport: one datagram each way."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path + ".local")

    def send(self, data, fds=()):
        socket.send_fds(self.sock, [data], list(fds))
        answer, received, _, _ = socket.recv_fds(self.sock, 1 << 16, 16)
        for fd in received:
            os.close(fd)
        response = pb.LocalResponse()
        response.ParseFromString(answer)
        return response

    def close(self):
        self.sock.close()


def sealed_memfd(nbytes):
    fd = os.memfd_create("metrics-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, nbytes)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def float32_layout(n):
    return pb.Layout(shape=[n], strides=[1])


def test_counts_move_by_the_calls_made_over_both_transports(server):
    channel = grpc.insecure_channel(f"unix:{server.socket}")
    grpc.channel_ready_future(channel).result(timeout=20)
    stub = pb_grpc.AsArrayStub(channel)
    before = scrape(server)

    # gRPC: two that succeed, three that fail (one a stream).
    assert grpc_code(stub.Stats, pb.StatsRequest()) == grpc.StatusCode.OK
    inline = pb.Source(inline_array=pb.InlineArray(
        dtype=pb.DTYPE_FLOAT32, layout=float32_layout(4), storage=bytes(16)))
    assert grpc_code(stub.Convert, pb.ConvertRequest(source=inline)) == grpc.StatusCode.OK
    assert grpc_code(stub.Release, pb.ReleaseRequest(id="nope")) == grpc.StatusCode.NOT_FOUND
    bad = pb.Source(inline_array=pb.InlineArray(layout=float32_layout(4), storage=bytes(16)))
    assert grpc_code(stub.Convert, pb.ConvertRequest(source=bad)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code(stub.Read, pb.ReadRequest(id="nope")) == grpc.StatusCode.NOT_FOUND

    # The local transport: an aliasing Convert and Stats succeed; a Release
    # of no handle and a datagram that is no request fail.
    local = Local(server.socket)
    memfd = sealed_memfd(64)
    aliasing = pb.ConvertRequest(
        source=pb.Source(fd=pb.FdArray(fd_index=0, size=64, dtype=pb.DTYPE_FLOAT32,
                                       layout=float32_layout(16))),
        options=pb.Options(copy=False))
    answer = local.send(pb.LocalRequest(convert=aliasing).SerializeToString(), [memfd])
    os.close(memfd)
    assert answer.code == 0, answer.message
    assert answer.convert.handle.shares_memory
    assert local.send(pb.LocalRequest(stats=pb.StatsRequest()).SerializeToString()).code == 0
    release = pb.LocalRequest(release=pb.ReleaseRequest(id="nope"))
    assert local.send(release.SerializeToString()).code == grpc.StatusCode.NOT_FOUND.value[0]
    assert local.send(b"\xff\xff\xff").code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    after = scrape(server)
    changed = moved(before, after)
    expected_calls = {
        calls("grpc", "Stats", "OK"): 1,
        calls("grpc", "Convert", "OK"): 1,
        calls("grpc", "Convert", "INVALID_ARGUMENT"): 1,
        calls("grpc", "Release", "NOT_FOUND"): 1,
        calls("grpc", "Read", "NOT_FOUND"): 1,
        calls("local", "Convert", "OK"): 1,
        calls("local", "Stats", "OK"): 1,
        calls("local", "Release", "NOT_FOUND"): 1,
        calls("local", "unknown", "INVALID_ARGUMENT"): 1,
    }
    assert {k: v for k, v in changed.items() if k.startswith("asarrayd_calls_total")} == \
        expected_calls
    expected_durations = {("grpc", "Stats"): 1, ("grpc", "Convert"): 2, ("grpc", "Release"): 1,
                          ("grpc", "Read"): 1, ("local", "Convert"): 1, ("local", "Stats"): 1,
                          ("local", "Release"): 1, ("local", "unknown"): 1}
    assert {k: v for k, v in changed.items()
            if k.startswith("asarrayd_call_duration_seconds_count")} == \
        {duration_count(*key): n for key, n in expected_durations.items()}
    for (transport, method), n in expected_durations.items():
        labels = f'transport="{transport}",method="{method}"'
        inf = f'asarrayd_call_duration_seconds_bucket{{{labels},le="+Inf"}}'
        assert after[inf] == after[duration_count(transport, method)]
        buckets = [v for k, v in after.items()
                   if k.startswith(f"asarrayd_call_duration_seconds_bucket{{{labels},")]
        assert buckets == sorted(buckets), "buckets must be cumulative"
        assert after[f"asarrayd_call_duration_seconds_sum{{{labels}}}"] > 0
    assert changed["asarrayd_converts_total"] == 2
    assert changed["asarrayd_errors_total"] == 5
    assert changed["asarrayd_copied_bytes_total"] == 16
    assert changed["asarrayd_aliased_bytes_total"] == 64
    assert changed["asarrayd_converted_bytes_total"] == 80
    assert changed["asarrayd_local_converts_total"] == 1
    assert after["asarrayd_tensors"] == 2
    assert after["asarrayd_local_connections"] == 1
    assert after["asarrayd_connection_leases"] == 1
    assert after["asarrayd_open_fds"] > 0

    # The connection's handle ends with it; the gauges follow.
    local.close()
    channel.close()
    deadline = time.monotonic() + 20
    while scrape(server)["asarrayd_connection_leases"] != 0:
        assert time.monotonic() < deadline, "the connection's lease did not end"
        time.sleep(0.02)
    last = scrape(server)
    assert last["asarrayd_local_connections"] == 0
    assert last["asarrayd_tensors"] == 1


def test_only_get_metrics_is_served(server):
    def status(*args):
        return curl("--output", "/dev/null", "--write-out", "%{http_code}", *args)

    assert status(server.url) == "200"
    base = server.url[:-len("/metrics")]
    assert status(base + "/") == "404"
    assert status(base + "/metrics/more") == "404"
    assert status("--data", "", server.url) == "404"  # a POST
    assert status("--request", "DELETE", server.url) == "404"
    assert "text/plain; version=0.0.4" in curl("--head", server.url)


def test_without_a_host_it_listens_on_loopback_and_stops_with_the_server():
    s = Asarrayd("0")
    assert s.url.startswith("http://127.0.0.1:")
    assert s.url != "http://127.0.0.1:0/metrics"
    scrape(s)
    assert s.stop() == 0
    down = subprocess.run(["curl", "--silent", "--max-time", "20", s.url], capture_output=True)
    assert down.returncode == 7, "nothing may listen there once the server is gone"


@pytest.mark.parametrize("address,message", [
    ("127.0.0.1:http", "the port 'http' is not a number from 0 to 65535"),
    ("127.0.0.1:70000", "the port '70000' is not a number from 0 to 65535"),
    ("::1:80", "an IPv6 host goes in brackets"),
])
def test_a_bad_address_fails_startup(address, message):
    with pytest.raises(RuntimeError, match="exited with 1 .*" + re.escape(message)):
        Asarrayd(address)


def test_a_port_in_use_fails_startup(server):
    taken = server.url[len("http://"):-len("/metrics")]
    with pytest.raises(RuntimeError, match=f"exited with 1 .*cannot listen for metrics on {taken}: "
                                           "Address already in use"):
        Asarrayd(taken)
