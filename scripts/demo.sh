#!/usr/bin/env bash
# comfix's main job on this machine, with no network beyond building comfix itself (and, on a
# machine without uv, the pinned uv wheel comfix fetches from PyPI into its store).
#
# Validate the shipped sample spec; generate a small ComfyUI-like core and a node pack as local
# git repositories and two model files; write a version spec that uses them; show the plan;
# `comfix realize` it into a home (resolving it into a lock and a fresh store first); realize it
# again (a no-op check); show the home's status and verify the store. The core and the node pack
# require small generated pure-Python packages, resolved and installed from a local wheel
# directory (`--wheels-dir`) into the home's `.venv`. That needs uv: `$COMFIX_UV`, `uv` on PATH,
# the project's own `.tools/bin/uv` (`scripts/test-tools.sh` installs the pinned one there, never
# into the system Python), else the pinned uv comfix fetches into its store from PyPI by itself;
# only with none of these (no PyPI either) does the demo leave the Python environment out.
# Then what comfix is for: a second version sharing the first one's bytes (`store du`), removed
# and collected (`gc`), and the first exported and realized `--offline` into a second store.
#
# Usage: scripts/demo.sh [WORKDIR]   (default: a new temporary directory, printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

# The dev profile (Cargo.toml optimizes the dependencies, where the hashing, compression and
# database work is): it shares its build with `scripts/test.sh`, and builds in a fraction of a
# release build's time. `cargo install --path .` builds the release binary.
echo "== building comfix (the first build takes a few minutes on 2 cores)"
cargo build --locked
work="${1:-$(mktemp -d -t comfix-demo-XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
bin="$PWD/target/debug/comfix"
echo "comfix is at $bin (install it on PATH with: cargo install --path .)"
comfix() { "$bin" --store "$work/store" "$@"; }

echo "== comfix spec check sample"
comfix spec check sample

echo "== generating local sources under $work/sources"
src="$work/sources"
rm -rf "$src" && mkdir -p "$src/models"
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@comfix.invalid GIT_COMMITTER_NAME=demo \
  GIT_COMMITTER_EMAIL=demo@comfix.invalid GIT_AUTHOR_DATE=2026-01-01T00:00:00Z \
  GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
make_repo() { # DIR: commit what the caller generated into DIR, on branch master
  git -C "$1" init -q -b master && git -C "$1" add -A && git -C "$1" commit -q -m "demo"
}
mkdir -p "$src/ComfyUI/comfy" "$src/ComfyUI-GGUF"
printf 'import comfy\nprint("ComfyUI")\n' > "$src/ComfyUI/main.py"
have_uv=true
if [ -z "${COMFIX_UV:-}" ] && ! command -v uv >/dev/null 2>&1; then
  if [ -x "$PWD/.tools/bin/uv" ]; then
    export COMFIX_UV="$PWD/.tools/bin/uv"
  elif python3 -c "import urllib.request as u; u.urlopen('https://pypi.org/simple/uv/', timeout=10)" \
      >/dev/null 2>&1; then
    # What comfix does on a machine without uv: it fetches its pinned uv wheel (SHA-256 checked)
    # into the store, once (`COMFIX_UV_WHEEL_URL` and `COMFIX_UV_WHEEL_SHA256` name a mirror).
    echo "uv is not installed: comfix fetches its pinned uv from PyPI into the store, once"
  else
    have_uv=false
    echo "warning: no uv and PyPI cannot be reached; the demo realizes without a Python environment" >&2
    echo "         (scripts/test-tools.sh installs the pinned uv into .tools/, not the system Python)" >&2
  fi
fi
if $have_uv; then
  printf '# the core needs\ndemo-tensors>=1.0\n' > "$src/ComfyUI/requirements.txt"
  printf '[project]\nname = "gguf"\nversion = "1.0"\ndependencies = ["demo-gguf-reader"]\n' \
    > "$src/ComfyUI-GGUF/pyproject.toml"
fi
for i in $(seq 1 200); do printf 'VALUE = %d\n' "$i" > "$src/ComfyUI/comfy/mod_$i.py"; done
make_repo "$src/ComfyUI"
printf 'NODE_CLASS_MAPPINGS = {}\n' > "$src/ComfyUI-GGUF/__init__.py"
make_repo "$src/ComfyUI-GGUF"
python3 -c "
import hashlib, sys
for name, n in (('vae.safetensors', 4), ('unet.safetensors', 16)):
    with open(sys.argv[1] + '/' + name, 'wb') as f:
        for i in range(n * 256):
            f.write(hashlib.sha256(f'{name}{i}'.encode()).digest() * 128)
" "$src/models"

# A wheel directory: three pure-Python packages, one depending on another, one with a script.
python3 - "$src/wheels" <<'PY'
import base64, hashlib, os, sys, zipfile
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
def wheel(name, version, files, requires=(), scripts=None):
    dist = f"{name.replace('-', '_')}-{version}"
    files = dict(files)
    files[f"{dist}.dist-info/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires))
    files[f"{dist}.dist-info/WHEEL"] = "Wheel-Version: 1.0\nGenerator: demo\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if scripts:
        files[f"{dist}.dist-info/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    record = []
    with zipfile.ZipFile(f"{out}/{dist}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            data = text.encode()
            info = zipfile.ZipInfo(path, (2026, 1, 1, 0, 0, 0))
            z.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{dist}.dist-info/RECORD,,")
        z.writestr(zipfile.ZipInfo(f"{dist}.dist-info/RECORD", (2026, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
wheel("demo-tensors", "1.2.0", {"demo_tensors/__init__.py": "def load(path):\n    return open(path, 'rb').read(16)\n"})
wheel("demo-gguf-reader", "0.3.0", {"demo_gguf_reader/__init__.py": "import demo_tensors\nVERSION = '0.3.0'\n"},
      requires=["demo-tensors>=1.0"])
wheel("demo-cli", "1.0.0", {"demo_cli/__init__.py": "def main():\n    print('demo-cli: the venv works')\n"},
      scripts={"demo-cli": "demo_cli:main"})
PY

mkdir -p "$work/versions"
python_section=""
wheels_args=()
if $have_uv; then
  python_section=',
  "python": { "requirements": ["demo-cli"] }'
  wheels_args=(--wheels-dir "$src/wheels")
fi
cat > "$work/versions/demo.json" <<JSON
{
  "schema_version": 2,
  "version_id": "demo",
  "comfy": { "repo": "$src/ComfyUI", "ref": "master" },
  "custom_nodes": [ { "repo": "$src/ComfyUI-GGUF", "name": "gguf" } ],
  "models": [
    { "source": "file://$src/models/vae.safetensors", "name": "vae", "target_subdir": "vae" },
    { "source": "file://$src/models/unet.safetensors", "name": "unet", "target_subdir": "diffusion_models" }
  ]$python_section
}
JSON

echo "== comfix realize --dry-run (the plan; changes nothing)"
comfix realize --dry-run --spec "$work/versions/demo.json" --target "$work/home"
echo "== comfix realize --spec $work/versions/demo.json --target $work/home"
comfix realize --spec "$work/versions/demo.json" --target "$work/home" "${wheels_args[@]}"
echo "== the lock: $work/versions/demo.lock.json"
cat "$work/versions/demo.lock.json"
echo "== the home"
ls -l "$work/home" "$work/home/ComfyUI/" "$work/home/ComfyUI/custom_nodes/"
ls -lR "$work/home/models/"
cat "$work/home/ComfyUI/extra_model_paths.yaml"
git -C "$work/home/ComfyUI/custom_nodes/gguf" log --oneline -1
if $have_uv; then
  echo "== the home's .venv (a read-only link to the venv in the store)"
  ls -l "$work/home/.venv"
  "$work/home/.venv/bin/python" -c 'import demo_gguf_reader, demo_tensors; print("imports ok:", demo_gguf_reader.VERSION)'
  "$work/home/.venv/bin/demo-cli"
fi
echo "== comfix realize again, --offline: nothing changed, so nothing to do"
comfix realize --offline --spec "$work/versions/demo.json" --target "$work/home" "${wheels_args[@]}"
echo "== comfix status"
comfix status --target "$work/home"
if $have_uv; then
  echo "== run as this user (root included), without PYTHONDONTWRITEBYTECODE: the venv's bytecode is in the store"
  env -u PYTHONDONTWRITEBYTECODE "$work/home/.venv/bin/python" -c 'import demo_gguf_reader; print("imported")'
fi
echo "== comfix store verify --check-contents (nothing the home ran changed the store)"
comfix store verify --check-contents

echo "== a second version: the same core and models, without the node pack"
sed -e 's/"version_id": "demo"/"version_id": "demo-lite"/' \
  -e 's/"custom_nodes": \[ { "repo": "[^"]*", "name": "gguf" } \]/"custom_nodes": []/' \
  "$work/versions/demo.json" > "$work/versions/demo-lite.json"
comfix realize --spec "$work/versions/demo-lite.json" --target "$work/home-lite" "${wheels_args[@]}"
echo "== comfix store du: the models and the core are stored once for both homes"
comfix store du
echo "== the second home goes; comfix gc frees what only it used (no grace period for the demo)"
rm -rf "$work/home-lite"
comfix gc --home-grace 0s
echo "== comfix export demo, signed; then import (trusting the key) and realize --offline into a second, empty store"
public="$(comfix key generate --name demo-team --dir "$work/keys")"
comfix export --spec "$work/versions/demo.json" --sign-key "$work/keys/demo-team.secret" \
  -o "$work/demo.tar.zst"
mkdir -p "$work/elsewhere"
(cd "$work/elsewhere" && "$bin" --store "$work/store-2" import --trusted-key "$public" "$work/demo.tar.zst")
(cd "$work/elsewhere" && "$bin" --store "$work/store-2" realize demo --offline --target "$work/home-2")
"$bin" --store "$work/store-2" status --target "$work/home-2"
echo "demo home: $work/home  store: $work/store  imported: $work/home-2 from $work/store-2"
