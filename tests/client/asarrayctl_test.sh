#!/usr/bin/env bash
# End-to-end test of asarrayctl against a private asarrayd.
# usage: asarrayctl_test.sh ASARRAYD ASARRAYCTL
# numpy and torch (via /usr/bin/python3, or $ASARRAY_TORCH_PYTHON) are the reference.
set -u

if [[ $# -ne 2 ]]; then
  echo "usage: $0 ASARRAYD ASARRAYCTL" >&2
  exit 2
fi
SERVER=$(realpath "$1")
CTL=$(realpath "$2")
PY=${ASARRAY_TORCH_PYTHON:-/usr/bin/python3}
PROTO=$(realpath "$(dirname "$0")/../../proto/asarray/v1/asarray.proto")
PREFIX="asarrayd-ctltest-$$"

TMP=$(mktemp -d)
export XDG_RUNTIME_DIR="$TMP"
cd "$TMP" || exit 1
passed=0
failed=0
server_pid=

pass() { passed=$((passed + 1)); echo "PASS $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1" >&2; }

# check NAME CMD...: passes when CMD exits 0.
check() {
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}

# ctl_fails NAME EXIT CODE ARGS...: asarrayctl ARGS must exit EXIT with CODE on stderr.
ctl_fails() {
  local name=$1 want_rc=$2 code=$3
  shift 3
  "$CTL" "$@" >out.txt 2>err.txt
  local rc=$?
  if [[ $rc -eq $want_rc ]] && grep -q "$code" err.txt; then
    pass "$name"
  else
    fail "$name (exit $rc, stderr: $(head -c 300 err.txt))"
  fi
}

# py SCRIPT [ARGS...]: runs python with numpy as np, json and sys imported.
py() {
  local script=$1
  shift
  "$PY" -c "import sys, json; import numpy as np
$script" "$@"
}

cleanup() {
  local rc=$?
  if [[ -n $server_pid ]]; then
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      fail "asarrayd stops within 10 s of SIGTERM"
      kill -KILL "$server_pid" 2>/dev/null
    fi
    wait "$server_pid"
    local server_rc=$?
    if [[ $server_rc -ne 0 ]]; then fail "asarrayd exits 0 on SIGTERM (got $server_rc)"; fi
  fi
  local left
  left=$(ls /dev/shm | grep "^$PREFIX-" || true)
  if [[ -n $left ]]; then
    fail "segments left in /dev/shm: $left"
    for f in $left; do rm -f "/dev/shm/$f"; done
  else
    pass "no /dev/shm/$PREFIX* left after shutdown"
  fi
  if [[ $failed -ne 0 && -f server.log ]]; then
    echo "--- server log" >&2
    tail -20 server.log >&2
  fi
  cd / && rm -rf "$TMP"
  echo "asarrayctl: $passed passed, $failed failed"
  if [[ $failed -ne 0 ]]; then exit 1; fi
  exit "$rc"
}
trap cleanup EXIT

"$SERVER" --shm_prefix "$PREFIX" 2>server.log &
server_pid=$!
for _ in $(seq 100); do
  if [[ $("$CTL" health 2>/dev/null) == SERVING ]]; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if [[ $("$CTL" health 2>/dev/null) != SERVING ]]; then
  fail "asarrayd serves on \$XDG_RUNTIME_DIR/asarrayd/asarrayd.sock"
  exit 1
fi
pass "health prints SERVING"

py '
np.save("f32.npy", (np.arange(12, dtype="<f4").reshape(3, 4) - 5.5) / 3)
np.save("fort.npy", np.asfortranarray(np.arange(6, dtype="<i8").reshape(2, 3)))
np.save("cast.npy", np.array([1 / 3, 1e-8, 65520, -2.5, 3.14159, 1e5, 0.1, -0.0], "<f4"))
np.save("big.npy", np.arange(3, dtype=">f4"))
np.save("obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
' || { fail "numpy writes the inputs"; exit 1; }

# expect_json FILE PYTHON-EXPR: the expression (over j, the first JSON line) is true.
expect_json() {
  py 'j = json.loads(open(sys.argv[1]).readline()); ok = eval("(" + sys.argv[2] + ")")
if not ok: print("  got", j, file=sys.stderr)
sys.exit(0 if ok else 1)' "$@"
}
# same_array A.npy B.npy: same dtype, shape and values.
same_array() {
  py 'a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
ok = a.dtype == b.dtype and a.shape == b.shape and a.tobytes("C") == b.tobytes("C")
if not ok: print("  ", a.dtype, a.shape, a, "vs", b.dtype, b.shape, b, file=sys.stderr)
sys.exit(0 if ok else 1)' "$@"
}

# --via shm (the default) aliases the client's segment.
"$CTL" convert f32.npy --save f32_out.npy >shm.json 2>err.txt
check "convert --via shm exits 0" test $? -eq 0
check "convert --via shm shares memory, float32 (3, 4) strides (4, 1)" expect_json shm.json \
  'j["shares_memory"] is True and j["dtype"] == "float32" and j["shape"] == [3, 4]
   and j["strides"] == [4, 1] and j["requires_grad"] is False and j["memory"]["kind"] == "shm"'
check "convert --save writes the input's array" same_array f32.npy f32_out.npy
ID=$(py 'print(json.load(open("shm.json"))["id"])')

"$CTL" convert f32.npy --via inline --save inline_out.npy >inline.json 2>err.txt
check "convert --via inline exits 0" test $? -eq 0
check "convert --via inline does not share memory" expect_json inline.json \
  'j["shares_memory"] is False and j["dtype"] == "float32" and j["shape"] == [3, 4]'
check "convert --via inline --save writes the input's array" same_array f32.npy inline_out.npy
ctl_fails "--via inline --copy false is FAILED_PRECONDITION" 1 FAILED_PRECONDITION \
  convert f32.npy --via inline --copy false

# Casts against torch.
"$CTL" convert cast.npy --dtype float16 --save f16.npy >f16.json 2>err.txt
check "convert --dtype float16 exits 0" test $? -eq 0
check "--dtype float16 reports float16 and a copy" expect_json f16.json \
  'j["dtype"] == "float16" and j["shares_memory"] is False and j["shape"] == [8]'
check "--dtype float16 matches torch.asarray" py '
import torch
want = torch.asarray(np.load("cast.npy"), dtype=torch.float16).numpy()
got = np.load("f16.npy")
sys.exit(0 if got.dtype == np.float16 and got.tobytes() == want.tobytes() else 1)'
"$CTL" convert cast.npy --dtype bfloat16 --save bf16.npy >bf16.json 2>err.txt
check "convert --dtype bfloat16 exits 0" test $? -eq 0
check "--dtype bfloat16 reports bfloat16" expect_json bf16.json 'j["dtype"] == "bfloat16"'
check "--dtype bfloat16 saves torch's bits as <u2" py '
import torch
want = torch.asarray(np.load("cast.npy"), dtype=torch.bfloat16).view(torch.int16).numpy()
got = np.load("bf16.npy")
sys.exit(0 if got.dtype == np.dtype("<u2") and got.tobytes() == want.tobytes() else 1)'

# Literals.
"$CTL" convert --json '[[1, 2.5], [3, 4]]' --requires-grad --save lit.npy >lit.json 2>err.txt
check "convert --json --requires-grad exits 0" test $? -eq 0
check "--json gives float32 (2, 2) requiring grad" expect_json lit.json \
  'j["dtype"] == "float32" and j["shape"] == [2, 2] and j["requires_grad"] is True'
check "--json values match torch.asarray" py '
import torch
want = torch.asarray([[1, 2.5], [3, 4]]).numpy()
got = np.load("lit.npy")
sys.exit(0 if got.dtype == want.dtype and np.array_equal(got, want) else 1)'
ctl_fails "--json of ints with --requires-grad is INVALID_ARGUMENT" 1 INVALID_ARGUMENT \
  convert --json '[1, 2]' --requires-grad

# CUDA: with a device, --device cuda prints a CUDA IPC handle and --save reads
# the result back through it; without one, a clear FAILED_PRECONDITION.
"$CTL" stats >stats0.json 2>err.txt
if py 'sys.exit(0 if json.load(open("stats0.json"))["cuda_devices"] > 0 else 1)'; then
  "$CTL" convert cast.npy --device cuda --dtype bfloat16 --save cuda_bf16.npy >cuda.json 2>err.txt
  check "convert --device cuda exits 0" test $? -eq 0
  check "--device cuda prints a CUDA IPC handle" expect_json cuda.json \
    'j["device"] == "cuda:0" and j["memory"]["kind"] == "cuda" and j["shares_memory"] is False
     and len(j["memory"]["ipc_handle"]) == 128 and j["memory"]["size"] == 16'
  check "--device cuda --save writes the same bits as the CPU cast" same_array bf16.npy cuda_bf16.npy
  "$CTL" release "$(py 'print(json.load(open("cuda.json"))["id"])')" >/dev/null 2>err.txt
  check "releasing the CUDA handle exits 0" test $? -eq 0
else
  ctl_fails "--device cuda without a device is FAILED_PRECONDITION" 1 \
    "FAILED_PRECONDITION.*no CUDA device is available" convert cast.npy --device cuda
fi

# Fortran order keeps its column-major strides, as torch.asarray does.
"$CTL" convert fort.npy --save fort_out.npy >fort.json 2>err.txt
check "convert Fortran-order exits 0" test $? -eq 0
check "Fortran-order input stays column-major and shared" expect_json fort.json \
  'j["dtype"] == "int64" and j["shape"] == [2, 3] and j["strides"] == [1, 2]
   and j["shares_memory"] is True'
check "Fortran-order --save writes the same array" same_array fort.npy fort_out.npy

check "the server's segments carry --shm_prefix" bash -c "ls /dev/shm | grep -q '^$PREFIX-'"

# Handles: read, list, stats, release.
"$CTL" read "$ID" --save read_out.npy >read.json 2>err.txt
check "read ID --save exits 0" test $? -eq 0
check "read ID --save writes the converted array" same_array f32.npy read_out.npy
"$CTL" list >list.txt 2>err.txt
check "list exits 0" test $? -eq 0
check "list shows the live ids" py '
ids = {json.loads(l)["id"] for l in open("list.txt") if l.strip()}
want = {json.load(open(f))["id"] for f in ("shm.json", "inline.json", "fort.json", "lit.json")}
sys.exit(0 if want <= ids else 1)'
"$CTL" stats >stats.json 2>err.txt
check "stats exits 0" test $? -eq 0
check "stats counts the listed tensors" py '
s = json.load(open("stats.json"))
n = sum(1 for l in open("list.txt") if l.strip())
sys.exit(0 if isinstance(s["tensors"], int) and s["tensors"] == n else 1)'
check "stats prints every field of StatsResponse, numbers as numbers" py '
import re
proto = open(sys.argv[1]).read()
body = re.search(r"message StatsResponse \{(.*?)\n\}", proto, re.S).group(1)
fields = re.findall(r"^\s*(\w+) (\w+) = \d+;", body, re.M)
s = json.load(open("stats.json"))
ok = len(fields) > 25 and set(s) == {name for _, name in fields} and all(
    isinstance(s[name], str if kind == "string" else int) for kind, name in fields)
if not ok: print("  fields", fields, "stats", s, file=sys.stderr)
sys.exit(0 if ok else 1)' "$PROTO"
"$CTL" release "$ID" >/dev/null 2>err.txt
check "release ID exits 0" test $? -eq 0
ctl_fails "read after release is NOT_FOUND" 1 NOT_FOUND read "$ID" --save gone.npy
"$CTL" list >list2.txt 2>err.txt
check "list no longer shows a released id" bash -c "! grep -q '\"$ID\"' list2.txt"

# Memory as descriptors: --via fd sends a memfd over the local transport and
# take maps another process's tensor by id; neither names anything in /dev/shm.
# (Other tests run beside this one: only the server's own names are counted.)
named() { ls /dev/shm | grep -c "^$PREFIX-" || true; }
shm_before=$(named)
"$CTL" convert f32.npy --via fd --copy false >fd.json 2>err.txt
check "convert --via fd exits 0" test $? -eq 0
check "convert --via fd aliases the memfd (memory kind fd, the request's own)" expect_json fd.json \
  'j["shares_memory"] is True and j["memory"]["kind"] == "fd" and j["memory"]["request_fd"] is True'
FD_ID=$(py 'print(json.load(open(sys.argv[1]))["id"])' fd.json)
"$CTL" take "$FD_ID" --copy false --save take_out.npy >take.json 2>err.txt
check "take ID --copy false exits 0" test $? -eq 0
check "take maps the same memory from its descriptor" expect_json take.json \
  'j["shares_memory"] is True and j["memory"]["kind"] == "fd" and j["memory"]["request_fd"] is False'
check "take --save writes the first command's array" same_array f32.npy take_out.npy
"$CTL" take "$FD_ID" --dtype float64 --save take64.npy >take64.json 2>err.txt
check "take --dtype float64 casts into a memfd of the server's" expect_json take64.json \
  'j["shares_memory"] is False and j["memory"]["kind"] == "fd"'
check "no /dev/shm entry came from the fd path" test "$(named)" -eq "$shm_before"
for f in fd.json take.json take64.json; do
  "$CTL" release "$(py 'print(json.load(open(sys.argv[1]))["id"])' $f)" 2>err.txt
done
ctl_fails "take of an unknown id is NOT_FOUND" 1 NOT_FOUND take 0123456789abcdef

# Batches: several files, or an .npz, convert in one ConvertBatch call.
py '
rng = np.random.default_rng(3)
a = {"m32": rng.standard_normal((4, 5)).astype("<f4"), "scalar": np.array(7.25),
     "empty": np.zeros((0, 2), "<i4"),
     "mfort": np.asfortranarray(np.arange(12, dtype="<i2").reshape(3, 4) - 6),
     "mask": np.array([True, False, True])}
np.savez("plain.npz", **a)
np.savez("batch.npz", **a, z=(np.arange(3) - 1j).astype("<c16"))
np.savez_compressed("batch_z.npz", **a, z=(np.arange(3) - 1j).astype("<c16"))
np.save("one.npy", np.arange(5, dtype="<i8"))
np.savez("clash.npz", f32=np.zeros(2, "<f4"))
np.savez("nothing.npz")
import zipfile
with zipfile.ZipFile("notes.npz", "w") as z:
    z.writestr("m32.npy", open("f32.npy", "rb").read())
    z.writestr("notes.txt", "not an array")
' || fail "numpy writes the batch inputs"
# lines FILE KEY...: one JSON line per KEY, in order, each with its key.
lines() {
  py 'got = [json.loads(l)["key"] for l in open(sys.argv[1]) if l.strip()]
if got != sys.argv[2:]: print("  keys", got, file=sys.stderr)
sys.exit(0 if got == sys.argv[2:] else 1)' "$@"
}
# same_npz SAVED.npz [INPUTS...]: SAVED holds the arrays of INPUTS (.npz
# members and .npy files, by stem), the same dtype, shape and values.
same_npz() {
  py '
import os
want = {}
for f in sys.argv[2:]:
    if f.endswith(".npz"):
        want.update(dict(np.load(f)))
    else:
        want[os.path.basename(f)[:-4]] = np.load(f)
got = dict(np.load(sys.argv[1]))
ok = sorted(got) == sorted(want) and all(
    got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
    and got[k].tobytes("C") == want[k].tobytes("C") for k in want)
if not ok: print("  ", got, "vs", want, file=sys.stderr)
sys.exit(0 if ok else 1)' "$@"
}
"$CTL" convert f32.npy fort.npy cast.npy --save many.npz >many.json 2>err.txt
check "convert of three .npy exits 0" test $? -eq 0
check "three .npy give three lines keyed by their stems" lines many.json f32 fort cast
check "the batch over shm aliases each file, Fortran order kept" py '
j = [json.loads(l) for l in open("many.json")]
sys.exit(0 if all(h["shares_memory"] for h in j) and j[1]["strides"] == [1, 2] else 1)'
check "--save OUT.npz of three .npy holds each of them" same_npz many.npz f32.npy fort.npy cast.npy
"$CTL" list >list3.txt 2>err.txt
ctl_fails "a batch fails as a whole, naming the item" 1 "item 1 (fort)" \
  convert f32.npy fort.npy --dtype float32 --copy false
"$CTL" list >list4.txt 2>err.txt
check "a failed batch keeps none of its results" test "$(wc -l <list3.txt)" -eq "$(wc -l <list4.txt)"
for npz in batch.npz batch_z.npz; do
  "$CTL" convert "$npz" --save "saved_$npz" >"$npz.json" 2>err.txt
  check "convert $npz exits 0" test $? -eq 0
  check "$npz gives a line per member, keyed as np.load keys them" \
    lines "$npz.json" m32 scalar empty mfort mask z
  check "--save of $npz holds the same arrays" same_npz "saved_$npz" "$npz"
done
"$CTL" convert batch_z.npz one.npy --via inline --save mix.npz >mix.json 2>err.txt
check "convert of an .npz and a .npy --via inline exits 0" test $? -eq 0
check "an .npz and a .npy give the members, then the file's stem" \
  lines mix.json m32 scalar empty mfort mask z one
check "--save of an .npz and a .npy holds them all" same_npz mix.npz batch_z.npz one.npy
"$CTL" convert plain.npz one.npy --via fd --dtype float16 --save cast_batch.npz >fdb.json 2>err.txt
check "convert of an .npz and a .npy --via fd --dtype float16 exits 0" test $? -eq 0
check "the batch's results over fd are memfds of the server's" py '
j = [json.loads(l) for l in open("fdb.json")]
sys.exit(0 if len(j) == 6 and all(h["memory"]["kind"] == "fd" and h["dtype"] == "float16"
                                   for h in j if h["shape"] != [0, 2]) else 1)'
check "--dtype float16 --save OUT.npz matches torch.asarray of each" py '
import torch
want = dict(np.load("plain.npz"))
want["one"] = np.load("one.npy")
got = dict(np.load("cast_batch.npz"))
ok = sorted(got) == sorted(want)
for k, v in want.items():
    t = torch.asarray(v, dtype=torch.float16).numpy()
    ok = ok and got[k].dtype == np.float16 and got[k].shape == t.shape and got[k].tobytes() == t.tobytes()
sys.exit(0 if ok else 1)'
"$CTL" convert one.npy --save one.npz >one.json 2>err.txt
check "convert of one .npy --save OUT.npz exits 0" test $? -eq 0
check "one .npy --save OUT.npz gives its keyed line" lines one.json one
check "one .npy --save OUT.npz saves an .npz of it" same_npz one.npz one.npy
ctl_fails "two arrays of one key are INVALID_ARGUMENT" 1 "INVALID_ARGUMENT.*key 'f32'" \
  convert f32.npy clash.npz
ctl_fails "--save OUT.npy of several arrays is a usage error" 2 "OUT.npz" \
  convert f32.npy cast.npy --save out.npy
ctl_fails "an .npz with no arrays is INVALID_ARGUMENT" 1 INVALID_ARGUMENT convert nothing.npz
ctl_fails "an .npz member that is not .npy is INVALID_ARGUMENT, named" 1 \
  "INVALID_ARGUMENT.*member 'notes.txt'" convert notes.npz
ctl_fails "a bad .npy among several is INVALID_ARGUMENT, named" 1 "INVALID_ARGUMENT: big.npy" \
  convert f32.npy big.npy

# Bad inputs and usage.
ctl_fails "big-endian .npy is INVALID_ARGUMENT" 1 INVALID_ARGUMENT convert big.npy
ctl_fails "object .npy is INVALID_ARGUMENT" 1 INVALID_ARGUMENT convert obj.npy
ctl_fails "an unknown command exits 2" 2 usage frobnicate
ctl_fails "an unknown option exits 2, naming it" 2 "INVALID_ARGUMENT.*--frobnicate" \
  convert f32.npy --frobnicate
ctl_fails "no command exits 2" 2 "INVALID_ARGUMENT.*subcommand"
ctl_fails "--copy takes only true, false or none" 2 "INVALID_ARGUMENT.*--copy" \
  convert f32.npy --copy maybe
ctl_fails "--via takes only shm, inline or fd" 2 "INVALID_ARGUMENT.*--via" \
  convert f32.npy --via carrier-pigeon
ctl_fails "take without ID exits 2" 2 "INVALID_ARGUMENT.*ID" take
ctl_fails "read without --save exits 2" 2 "INVALID_ARGUMENT.*--save" read 0123456789abcdef
ctl_fails "help of an unknown command exits 2" 2 "unknown command 'frobnicate'" help frobnicate
ctl_fails "a usage error prints the command's usage" 2 "usage: asarrayctl take" take
# help_lists NAME WANT... -- ARGS...: asarrayctl ARGS exits 0 and prints every WANT on stdout.
help_lists() {
  local name=$1
  shift
  local want=()
  while [[ $1 != -- ]]; do want+=("$1"); shift; done
  shift
  "$CTL" "$@" >out.txt 2>err.txt
  local rc=$? missing=""
  for w in "${want[@]}"; do grep -q -- "$w" out.txt || missing+=" $w"; done
  if [[ $rc -eq 0 && -z $missing && ! -s err.txt ]]; then
    pass "$name"
  else
    fail "$name (exit $rc, missing:$missing, stderr: $(head -c 300 err.txt))"
  fi
}
for flag in --help -h; do
  help_lists "asarrayctl $flag lists every command" \
    "usage: asarrayctl" convert take read release list stats health help --server -- "$flag"
done
help_lists "asarrayctl help lists every command" convert take release health -- help
help_lists "help convert gives convert's options" \
  "usage: asarrayctl convert" --json --via --dtype --device --copy --requires-grad --save \
  -- help convert
help_lists "convert --help gives convert's options" "usage: asarrayctl convert" --via --json \
  -- convert --help
help_lists "take -h gives take's options" "usage: asarrayctl take" ID --dtype --copy -- take -h
help_lists "help read gives read's options" "usage: asarrayctl read" --save -- help read
for cmd in release list stats health; do
  help_lists "help $cmd gives its usage" "usage: asarrayctl $cmd" -- help "$cmd"
done
# The connection options may come before or after the command.
check "--server after the command is taken" \
  bash -c '[[ $("$0" health --server "unix:$XDG_RUNTIME_DIR/asarrayd/asarrayd.sock") == SERVING ]]' \
  "$CTL"
check "--server of an empty socket fails with exit 1" \
  bash -c '"$0" --server unix:/nonexistent/x.sock health 2>/dev/null; [[ $? -eq 1 ]]' "$CTL"

# asarrayd's own help: its flags, not the libraries'.
"$SERVER" --help >server_help.txt 2>&1
check "asarrayd --help exits 0" test $? -eq 0
for flag in --listen --tls_cert --lease_ttl --max_bytes --workers --local_transport; do
  check "asarrayd --help lists $flag" grep -q -- "$flag" server_help.txt
done
check "asarrayd --help leaves out the libraries' flags" \
  bash -c '! grep -q -- "--flagfile\|--fromenv\|--tryfromenv" server_help.txt'
"$SERVER" --helpfull >server_helpfull.txt 2>&1
check "asarrayd --helpfull also lists the libraries' flags" grep -q -- --flagfile server_helpfull.txt
"$SERVER" --version >server_version.txt 2>&1
check "asarrayd --version exits 0 and names it" grep -q "^asarrayd [0-9]" server_version.txt
"$SERVER" stray >/dev/null 2>server_bad.txt
check "asarrayd with a stray argument exits 2, naming it" \
  bash -c '[[ $0 -eq 2 ]] && grep -q "stray" server_bad.txt' "$?"
"$SERVER" --frobnicate >/dev/null 2>server_bad.txt
check "asarrayd with an unknown flag fails, naming it" \
  bash -c '[[ $0 -ne 0 ]] && grep -q frobnicate server_bad.txt' "$?"
