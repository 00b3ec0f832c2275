#!/usr/bin/env bash
# comfix's main job on this machine, with no network beyond building comfix itself.
#
# Today (store + spec): validate the shipped sample spec, generate a small ComfyUI-like core tree
# and a node pack, add them to a fresh store, add a second core that differs in one file, and show
# that the store deduplicated them and verifies. Later issues grow this into realizing
# specs/sample.json from local sources.
#
# Usage: scripts/demo.sh [WORKDIR]   (default: a new temporary directory, printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
work="${1:-$(mktemp -d -t comfix-demo-XXXXXX)}"
mkdir -p "$work"
comfix() { target/release/comfix --store "$work/store" "$@"; }

echo "== comfix spec check sample"
comfix spec check sample

echo "== generating a ComfyUI-like core under $work/src"
core="$work/src/ComfyUI"
rm -rf "$work/src" && mkdir -p "$core/comfy" "$core/custom_nodes" "$work/src/nodes/gguf"
printf 'import comfy\nprint("ComfyUI")\n' > "$core/main.py"
printf 'torch\nsafetensors\naiohttp\n' > "$core/requirements.txt"
for i in $(seq 1 200); do printf '# module %d\nVALUE = %d\n' "$i" "$i" > "$core/comfy/mod_$i.py"; done
: > "$core/comfy/__init__.py"
printf '#!/bin/sh\nexec python3 main.py "$@"\n' > "$core/run.sh" && chmod +x "$core/run.sh"
printf 'NODE_CLASS_MAPPINGS = {}\n' > "$work/src/nodes/gguf/__init__.py"
printf 'gguf>=0.10\n' > "$work/src/nodes/gguf/requirements.txt"

echo "== comfix store add (core, node pack)"
core_path=$(comfix store add "$core" --name comfyui-core)
node_path=$(comfix store add "$work/src/nodes/gguf" --name node-gguf)
echo "$core_path"
echo "$node_path"

echo "== a second core, one file changed: only that file's bytes are new"
cp -a "$core" "$work/src/ComfyUI-next"
printf 'import comfy\nprint("ComfyUI next")\n' > "$work/src/ComfyUI-next/main.py"
comfix --json store add "$work/src/ComfyUI-next" --name comfyui-core \
  | python3 -c 'import json,sys; a=json.load(sys.stdin); print(a["path"]); print("  new objects: %d (%d bytes) for %d files" % (a["new_objects"], a["new_object_bytes"], a["file_count"]))'

echo "== comfix store ls"
comfix store ls
echo "== comfix store path-info $core_path"
comfix store path-info "$core_path"
echo "== comfix store verify --check-contents"
comfix store verify --check-contents
echo "demo store: $work/store"
