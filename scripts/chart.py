#!/usr/bin/env python3
"""Renders and lints the Helm chart with Helm's own Go code (PyPI helm-python-sdk), offline.

  chart.py render [VALUES_JSON]   the rendered manifests as one YAML stream
  chart.py lint                   `helm lint --strict`; exits 1 on errors
  chart.py deploy [--check]       writes deploy/ (the chart rendered for `kubectl apply`),
                                  or with --check exits 1 if deploy/ is not current

scripts/test installs the SDK into .tools/venv; run this script with .tools/venv/bin/python.
"""

import json
import pathlib
import re
import sys

import helm_python as helm

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "secrets-store-csi-driver"
DEPLOY = ROOT / "deploy"
RELEASE = "csi-secrets-store"
NAMESPACE = "kube-system"

# deploy/ is upstream's static install: its names (DaemonSet csi-secrets-store), sync RBAC included (apply it or not), the static
# manifests' pod label, fields every supported Kubernetes (1.30+) accepts, and no Helm
# bookkeeping labels.
DEPLOY_VALUES = {
    "fullnameOverride": RELEASE,
    "syncSecret": {"enabled": True},
    # The SecretSync controller's Deployment, RBAC and admission policies, in files of their
    # own; its key Secret is the operator's to create (README), never a committed value.
    "syncController": {"enabled": True, "keySecret": {"create": False}},
    "linux": {"appLabel": "csi-secrets-store"},
    "serviceAccountTokenInSecrets": False,
}
HELM_ONLY_LABELS = re.compile(r"^\s*(helm\.sh/chart|app\.kubernetes\.io/managed-by):.*\n", re.M)
HEADER = "# Generated from charts/secrets-store-csi-driver by scripts/chart.py deploy; do not edit.\n"


def render(values):
    chart = helm.Chart.load(str(CHART))
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(text):
    """Non-empty YAML documents of a rendered template, comments and blank lines kept."""
    return [d.strip("\n") for d in re.split(r"^---\s*$", text, flags=re.M) if d.strip()]


def deploy_name(name):
    """The SecretSync controller's files go to deploy/sync-controller/, so that `kubectl apply
    -f deploy/` installs what upstream's static manifests install and nothing more."""
    if name.startswith("sync-controller") or name == "secretsyncs.yaml":
        return f"sync-controller/{name}"
    return name


def deploy_files():
    files = {}
    for path, text in sorted(render(DEPLOY_VALUES).items()):
        docs = [HELM_ONLY_LABELS.sub("", d) for d in documents(text)]
        if docs:
            name = pathlib.Path(path).name
            files[deploy_name(name)] = HEADER + "\n---\n".join(docs) + "\n"
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        files[deploy_name(crd.name)] = crd.read_text()
    return files


def main(argv):
    command = argv[1] if len(argv) > 1 else "render"
    if command == "render":
        values = json.loads(argv[2]) if len(argv) > 2 else None
        for path, text in sorted(render(values).items()):
            for doc in documents(text):
                print(f"---\n# Source: {path}\n{doc}")
        return 0
    if command == "lint":
        report = helm.lint(str(CHART), strict=True)
        for message in report["messages"]:
            print(f"{message['path']}: {message['error']}")
        return 1 if report["errors"] or any(m["severity"] >= 2 for m in report["messages"]) else 0
    if command == "deploy":
        wanted = deploy_files()
        present = (
            {str(p.relative_to(DEPLOY)): p.read_text() for p in DEPLOY.glob("**/*.yaml")}
            if DEPLOY.exists()
            else {}
        )
        if "--check" in argv:
            stale = sorted(n for n in set(wanted) | set(present) if wanted.get(n) != present.get(n))
            for name in stale:
                print(f"deploy/{name} is not current: run scripts/chart.py deploy")
            return 1 if stale else 0
        DEPLOY.mkdir(exist_ok=True)
        for name in set(present) - set(wanted):
            (DEPLOY / name).unlink()
        for name, text in wanted.items():
            (DEPLOY / name).parent.mkdir(exist_ok=True)
            (DEPLOY / name).write_text(text)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
