#!/usr/bin/env bash
# comfix's main job on this machine, with no network beyond building comfix itself.
#
# Validate the shipped sample spec; generate a small ComfyUI-like core and a node pack as local
# git repositories and two model files; write a version spec that uses them; show the plan;
# `comfix realize` it into a home (resolving it into a lock and a fresh store first); realize it
# again (a no-op check); show the home's status and verify the store. The Python environment
# (.venv) joins when that issue lands.
#
# Usage: scripts/demo.sh [WORKDIR]   (default: a new temporary directory, printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
work="${1:-$(mktemp -d -t comfix-demo-XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
bin="$PWD/target/release/comfix"
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
printf 'torch\nsafetensors\n' > "$src/ComfyUI/requirements.txt"
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

mkdir -p "$work/versions"
cat > "$work/versions/demo.json" <<JSON
{
  "schema_version": 2,
  "version_id": "demo",
  "comfy": { "repo": "$src/ComfyUI", "ref": "master" },
  "custom_nodes": [ { "repo": "$src/ComfyUI-GGUF", "name": "gguf" } ],
  "models": [
    { "source": "file://$src/models/vae.safetensors", "name": "vae", "target_subdir": "vae" },
    { "source": "file://$src/models/unet.safetensors", "name": "unet", "target_subdir": "diffusion_models" }
  ]
}
JSON

echo "== comfix realize --dry-run (the plan; changes nothing)"
comfix realize --dry-run --spec "$work/versions/demo.json" --target "$work/home"
echo "== comfix realize --spec $work/versions/demo.json --target $work/home"
comfix realize --spec "$work/versions/demo.json" --target "$work/home"
echo "== the lock: $work/versions/demo.lock.json"
cat "$work/versions/demo.lock.json"
echo "== the home"
ls -l "$work/home" "$work/home/ComfyUI/" "$work/home/ComfyUI/custom_nodes/"
ls -lR "$work/home/models/"
cat "$work/home/ComfyUI/extra_model_paths.yaml"
git -C "$work/home/ComfyUI/custom_nodes/gguf" log --oneline -1
echo "== comfix realize again, --offline: nothing changed, so nothing to do"
comfix realize --offline --spec "$work/versions/demo.json" --target "$work/home"
echo "== comfix status"
comfix status --target "$work/home"
echo "== comfix store verify --check-contents"
comfix store verify --check-contents
echo "demo home: $work/home  store: $work/store"
