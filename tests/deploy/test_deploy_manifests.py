"""Structural checks of docker/: the Dockerfile, compose.yaml and k8s/.

Each test parses a file and checks a property that docs/deploy.md relies
on: which images the two stages use in either variant, the non-root
user, the health check, the socket directory as the one thing the server
and its clients share (memory crosses as descriptors: no /dev/shm, no IPC
namespace), resources, and where Prometheus scrapes /metrics.
docker/test.sh builds and runs the image itself.
"""

import json
import os
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(os.environ.get("ASARRAY_SOURCE_DIR", pathlib.Path(__file__).parents[2]))
DOCKER = ROOT / "docker"
HEALTH = ["asarrayctl", "health"]


# --- Dockerfile --------------------------------------------------------------

def dockerfile_instructions():
    """(KEYWORD, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def expand(word, env):
    """Dockerfile variable substitution: $V, ${V}, ${V:-word}, ${V:+word}, nested."""
    out, i = "", 0
    while i < len(word):
        if word[i] != "$":
            out += word[i]
            i += 1
        elif word.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                depth += {"{": 1, "}": -1}.get(word[j], 0)
                j += 1
            body = word[i + 2:j - 1]
            name, op, alt = re.match(r"(\w+)(?::([-+]))?(.*)", body, re.S).groups()
            value = env.get(name, "")
            if op == "-":
                value = value or expand(alt, env)
            elif op == "+":
                value = expand(alt, env) if value else ""
            out += value
            i = j
        else:
            name = re.match(r"\w+", word[i + 1:]).group(0)
            out += env.get(name, "")
            i += 1 + len(name)
    return out


def stages(build_args):
    """{alias: {"image": resolved FROM, "body": [(KEYWORD, args)]}} for these build args."""
    env, result, current = {}, {}, None
    for keyword, args in dockerfile_instructions():
        if keyword == "ARG" and current is None:
            name, _, default = args.partition("=")
            env[name] = build_args.get(name, expand(default, env))
        elif keyword == "FROM":
            image, _, alias = args.partition(" AS ")
            current = {"image": expand(image, env), "body": []}
            result[alias.strip()] = current
        elif current is not None:
            current["body"].append((keyword, args))
    return result


def body_args(stage, keyword):
    return [args for k, args in stage["body"] if k == keyword]


def test_cpu_variant_builds_on_debian_and_runs_on_bookworm_slim():
    s = stages({})
    assert list(s) == ["builder", "runtime"]
    assert s["builder"]["image"] in ("debian:bookworm", "debian:bookworm-slim")
    assert s["runtime"]["image"] == "debian:bookworm-slim"


def test_cuda_version_selects_nvidia_cuda_devel_and_runtime_bases():
    s = stages({"CUDA_VERSION": "13.0.1"})
    assert s["builder"]["image"] == "nvidia/cuda:13.0.1-devel-ubuntu24.04"
    assert s["runtime"]["image"] == "nvidia/cuda:13.0.1-runtime-ubuntu24.04"


def test_builder_sets_the_cuda_option_builds_and_runs_the_unit_tests():
    build = " ".join(a for a in body_args(stages({})["builder"], "RUN") if "cmake" in a)
    assert '-DASARRAY_CUDA="$cuda"' in build and "cuda=OFF" in build
    assert "cmake --build" in build
    for test in ("core_test", "npy_test", "service_test"):
        assert re.search(rf"tests/(\w+/)?{test}\b.*do build/\$t", build), test


def test_runtime_stage_holds_only_the_binaries_and_runtime_libraries():
    runtime = stages({})["runtime"]
    copies = body_args(runtime, "COPY")
    assert copies and all(c.startswith("--from=builder ") for c in copies)
    assert any(c.endswith(" /usr/local/bin/") for c in copies)
    install = " ".join(body_args(runtime, "RUN"))
    assert "--no-install-recommends" in install
    assert "rm -rf /var/lib/apt/lists/*" in install
    assert "-dev" not in install
    strip = " ".join(body_args(stages({})["builder"], "RUN"))
    assert "strip -o /out/bin/asarrayd" in strip and "strip -o /out/bin/asarrayctl" in strip


def runtime_uid():
    user = body_args(stages({})["runtime"], "USER")[-1]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def socket_dir():
    """The default socket directory inside the image: $XDG_RUNTIME_DIR/asarrayd."""
    env = dict(e.split("=", 1) for e in body_args(stages({})["runtime"], "ENV"))
    return env["XDG_RUNTIME_DIR"] + "/asarrayd"


def test_runtime_runs_as_a_numeric_non_root_user_owning_the_socket_dir():
    uid, gid = runtime_uid()
    assert uid != 0 and gid != 0
    assert socket_dir() == "/run/asarrayd"
    install = " ".join(body_args(stages({})["runtime"], "RUN"))
    assert f"install -d -o {uid} -g {gid} -m 0700 {socket_dir()}" in install


def test_runtime_health_check_and_entrypoint():
    runtime = stages({})["runtime"]
    (health,) = body_args(runtime, "HEALTHCHECK")
    options, _, command = health.partition("CMD ")
    assert json.loads(command) == HEALTH
    assert "--interval=" in options and "--timeout=" in options
    assert json.loads(body_args(runtime, "ENTRYPOINT")[-1]) == ["asarrayd"]


# --- compose.yaml ------------------------------------------------------------

def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def size_bytes(text):
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(text).lower()).groups()
    return int(number) << {"": 0, "k": 10, "m": 20, "g": 30}[unit]


def flag_bytes(args, name):
    return sum(int(a.split("=", 1)[1]) for a in args if a.startswith(f"--{name}="))


def test_compose_shares_no_ipc_namespace_and_no_dev_shm():
    services = compose()["services"]
    for name, service in services.items():
        for key in ("ipc", "pid", "network_mode"):
            assert key not in service or service[key] != "host", (name, key)
        assert "ipc" not in service, name
        assert "shm_size" not in service, name  # Docker's default 64 MiB is enough
        for volume in service.get("volumes", []):
            assert "/dev/shm" not in volume, (name, volume)


def test_compose_shares_the_socket_dir_and_waits_for_health():
    c = compose()
    services = c["services"]
    mounts = {name: dict(reversed(v.split(":")[:2]) for v in s["volumes"])
              for name, s in services.items()}
    assert mounts["asarrayd"][socket_dir()] == mounts["example-client"][socket_dir()]
    assert mounts["asarrayd"][socket_dir()] in c["volumes"]
    assert services["example-client"]["depends_on"]["asarrayd"]["condition"] == "service_healthy"
    assert "healthcheck" not in services["asarrayd"]  # the image's HEALTHCHECK applies
    assert "--via fd --copy false" in services["example-client"]["command"][0]
    # The socket directory is all they share.
    assert set(mounts["example-client"]) == {socket_dir()}
    assert set(mounts["asarrayd"]) == {socket_dir()}


def commented_block(text, key):
    """Parses the first commented-out YAML block that starts with '# KEY:'."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == f"# {key}:")
    indent = lines[start].index("#")
    block = [lines[start][indent + 2:]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * indent + "#   "):
            break
        block.append(line[indent + 2:])
    return yaml.safe_load("\n".join(block))[key]


def test_compose_builds_the_dockerfile_and_documents_the_cuda_variant():
    build = compose()["services"]["asarrayd"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    text = (DOCKER / "compose.yaml").read_text()
    assert commented_block(text, "args") == {"CUDA_VERSION": "13.0.1"}
    (gpu,) = commented_block(text, "deploy")["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert '# pid: "service:asarrayd"' in text


# --- Kubernetes --------------------------------------------------------------

def k8s(name):
    return [d for d in yaml.safe_load_all((DOCKER / "k8s" / name).read_text()) if d]


def daemonset():
    (ds,) = [d for d in k8s("daemonset.yaml") if d["kind"] == "DaemonSet"]
    return ds


def quantity(text):
    number, unit = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi)?", str(text)).groups()
    return float(number) * {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[unit]


def mounts_by_path(container, volumes):
    """{mountPath: volume source} of a container."""
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


def volumes_of(pod_spec):
    return {v["name"]: {k: v[k] for k in v if k != "name"} for v in pod_spec["volumes"]}


def all_containers(pod_spec):
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def assert_health_probes(container, kinds):
    for kind in kinds:
        assert container[kind]["exec"]["command"] == HEALTH, kind


def assert_resources(pod_spec):
    for c in all_containers(pod_spec):
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][bound]), (c["name"], bound)
        for res in ("cpu", "memory"):
            assert quantity(c["resources"]["requests"][res]) <= quantity(
                c["resources"]["limits"][res]), (c["name"], res)


def assert_locked_down(container):
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]


def effective_user(pod_spec, container):
    sc = {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}
    return sc.get("runAsUser"), sc.get("runAsNonRoot")


def test_daemonset_runs_one_non_root_server_per_node():
    ds = daemonset()
    assert ds["apiVersion"] == "apps/v1"
    spec = ds["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    assert effective_user(spec, server) == (runtime_uid()[0], True)
    assert server["securityContext"]["runAsGroup"] == runtime_uid()[1]
    assert_locked_down(server)
    for key in ("hostIPC", "hostPID", "hostNetwork"):
        assert not spec.get(key), key
    # Two servers on a node would share one socket path.
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0


def test_daemonset_probes_and_resources():
    spec = daemonset()["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    assert_health_probes(server, ("livenessProbe", "readinessProbe"))
    assert_resources(spec)
    needed = flag_bytes(server["args"], "max_bytes") + flag_bytes(
        server["args"], "segment_pool_bytes")
    assert 0 < needed < quantity(server["resources"]["limits"]["memory"])


def test_daemonset_shares_only_the_socket_dir_with_the_node():
    spec = daemonset()["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    mounts = mounts_by_path(server, volumes_of(spec))
    assert set(mounts) == {socket_dir()}
    assert mounts[socket_dir()]["hostPath"] == {"path": "/run/asarrayd", "type": "DirectoryOrCreate"}
    assert [v["hostPath"]["path"] for v in volumes_of(spec).values()] == ["/run/asarrayd"]


def test_daemonset_init_container_gives_the_socket_dir_to_the_server_uid():
    spec = daemonset()["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    volumes = volumes_of(spec)
    uid, gid = runtime_uid()
    assert init["command"][:2] == ["chown", f"{uid}:{gid}"]
    chowned = {volumes[m["name"]]["hostPath"]["path"] for m in init["volumeMounts"]
               if m["mountPath"] in init["command"][2:]}
    assert chowned == {v["hostPath"]["path"] for v in volumes.values()}
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False


def test_daemonset_serves_metrics_where_its_scrape_annotations_say():
    template = daemonset()["spec"]["template"]
    (server,) = template["spec"]["containers"]
    annotations = template["metadata"]["annotations"]
    # Annotation values are strings: an unquoted true or 9180 is not.
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    (flag,) = [a.split("=", 1)[1] for a in server["args"] if a.startswith("--metrics_listen=")]
    host, _, port = flag.rpartition(":")
    # Without a host it would listen on loopback, out of the scraper's reach.
    assert host == "0.0.0.0"
    (exposed,) = [p for p in server["ports"] if p["name"] == "metrics"]
    assert exposed["containerPort"] == int(port) == int(annotations["prometheus.io/port"])
    assert exposed.get("protocol", "TCP") == "TCP"
    assert "hostPort" not in exposed  # the pod's own IP, not the node's


def test_client_pod_maps_only_the_servers_socket_dir_as_the_servers_uid():
    ds_spec = daemonset()["spec"]["template"]["spec"]
    server_mounts = mounts_by_path(ds_spec["containers"][0], volumes_of(ds_spec))
    (pod,) = k8s("client-pod.yaml")
    spec = pod["spec"]
    (client,) = spec["containers"]
    mounts = mounts_by_path(client, volumes_of(spec))
    path = socket_dir()
    assert mounts[path]["hostPath"]["path"] == server_mounts[path]["hostPath"]["path"]
    assert mounts[path]["hostPath"]["type"] == "Directory"
    assert [p for p, v in mounts.items() if "hostPath" in v] == [path]
    assert "/dev/shm" not in mounts
    env = {e["name"]: e["value"] for e in client["env"]}
    assert env["XDG_RUNTIME_DIR"] + "/asarrayd" == socket_dir()
    assert effective_user(spec, client) == (runtime_uid()[0], True)
    assert not spec.get("hostIPC")
    assert_locked_down(client)
    assert_resources(spec)
    assert "--via fd --copy false" in client["args"][0]


def test_sidecar_pod_shares_only_a_memory_backed_socket_dir():
    (pod,) = k8s("sidecar-pod.yaml")
    spec = pod["spec"]
    (sidecar,) = spec["initContainers"]
    (app,) = spec["containers"]
    assert sidecar["restartPolicy"] == "Always"
    assert_health_probes(sidecar, ("startupProbe", "livenessProbe", "readinessProbe"))
    assert_resources(spec)
    volumes = volumes_of(spec)
    for c in (sidecar, app):
        assert "/dev/shm" not in mounts_by_path(c, volumes), c["name"]
    assert "--via fd --copy false" in app["args"][0]
    runtime_dirs = set()
    for c in (sidecar, app):
        (runtime,) = [e["value"] for e in c["env"] if e["name"] == "XDG_RUNTIME_DIR"]
        assert "emptyDir" in mounts_by_path(c, volumes)[runtime]
        runtime_dirs.add(runtime)
        assert effective_user(spec, c) == (runtime_uid()[0], True)
        assert_locked_down(c)
    assert len(runtime_dirs) == 1
    assert not spec.get("hostIPC")


@pytest.mark.parametrize("name", ["daemonset.yaml", "client-pod.yaml", "sidecar-pod.yaml"])
def test_every_container_runs_the_asarrayd_image(name):
    for doc in k8s(name):
        if doc["kind"] in ("Pod", "DaemonSet"):
            spec = doc["spec"]["template"]["spec"] if doc["kind"] == "DaemonSet" else doc["spec"]
            for c in all_containers(spec):
                assert c["image"] == "asarrayd:latest", (name, c["name"])
