#!/usr/bin/env bash
# Build dlaas-jupyter for development and tests: a virtualenv of its own with JupyterLab (not
# the project's .venv), the front end built with the machine's node/npm, both extensions enabled.
#
#   jupyter/build.sh            build what changed (a second run with nothing changed: < 1 s)
#   jupyter/build.sh --force    build everything again
#
# DLAAS_JUPYTER_VENV: where the virtualenv goes (default jupyter/.venv). Needs python3 (3.11+),
# node (>= 20) and npm, and the PyPI and npm registries. Then run:
#   DLAAS_BUS__URL=amqp://alice:…@host/vhost jupyter/.venv/bin/jupyter lab
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="${DLAAS_JUPYTER_VENV:-$here/.venv}"
cd "$here"

for tool in python3 node npm; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing" >&2; exit 2; }
done

# A step runs when what it reads changed since it last succeeded (or with --force).
force="${1:-}"
mkdir -p "$venv"
stale() { # stale NAME FILE...: true when NAME's inputs changed; `done_ NAME` records them
  digest_now="$( (cat "${@:2}"; node --version; python3 --version) | sha256sum | cut -d' ' -f1)"
  [[ "$force" == "--force" || ! -f "$venv/.dlaas-build-$1" || "$(cat "$venv/.dlaas-build-$1")" != "$digest_now" ]]
}
done_() { echo "$digest_now" >"$venv/.dlaas-build-$1"; }
step() { echo "build.sh: $* (${SECONDS}s)"; }

if stale python requirements-lab.txt "$root/shared/pyproject.toml" || [[ ! -x "$venv/bin/jupyter" ]]; then
  step "virtualenv with JupyterLab"
  [[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -r requirements-lab.txt -e "$root/shared"
  done_ python
fi

if stale node package.json package-lock.json || [[ ! -d node_modules ]]; then
  step "npm install (as package-lock.json pins)"
  # Not `npm ci`: the lock this registry gives lacks the other platforms' optional rspack
  # bindings, and `npm ci` refuses such a lock; `npm install` follows it and leaves it unchanged.
  npm install --no-audit --no-fund --loglevel=error
  done_ node
fi

if stale front build.sh tsconfig.json package.json package-lock.json requirements-lab.txt \
  src/*.ts || [[ ! -e dlaas_jupyter/labextension/package.json ]]; then
  step "TypeScript"
  rm -rf lib tsconfig.tsbuildinfo
  npx --no-install tsc --sourceMap

  step "labextension"
  core="$("$venv/bin/python" -c 'import jupyterlab, pathlib; print(pathlib.Path(jupyterlab.__file__).parent / "staging" / "package.json")')"
  rm -rf dlaas_jupyter/labextension
  # The core package file of the installed JupyterLab: no download of core metadata.
  "$venv/bin/jupyter-builder" build --core-package-file "$core" .
  done_ front
  changed=1
fi

# Python sources are installed editable and the labextension linked: rebuilds need neither.
built="$venv/share/jupyter/labextensions/dlaas-jupyter/package.json"
if stale package build.sh pyproject.toml jupyter-config/server-config/*.json || [[ ! -e "$built" ]]; then
  step "install (editable), link the labextension, enable the server extension"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .
  "$venv/bin/jupyter-builder" develop --overwrite . >/dev/null 2>&1
  "$venv/bin/jupyter" server extension enable --sys-prefix dlaas_jupyter >/dev/null 2>&1
  done_ package
  changed=1
fi
if [[ -n "${changed:-}" ]]; then step "built: $venv"; else echo "build.sh: up to date ($venv)"; fi
