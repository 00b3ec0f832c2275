#!/usr/bin/env bash
# The tools the test suite needs beyond the Rust toolchain, installed into the project's own
# `.tools/` (never into the system Python: Debian's and Ubuntu's refuse `pip install`, PEP 668):
#   - uv, pinned (src/python/uv.rs UV_VERSION): locks Python requirements and builds venvs;
#   - moto's server, pinned: the real S3-compatible server the bucket-cache tests start;
#   - PyYAML, to read extra_model_paths.yaml the way ComfyUI does.
# Prints the environment to use them (`eval "$(scripts/test-tools.sh)"`); a second run reuses
# what is there. Needs `python3` with pip (`apt-get install python3-pip` on Debian) and PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
uv_version="$(sed -n 's/^pub const UV_VERSION: &str = "\(.*\)";/\1/p' "$root/src/python/uv.rs")"
moto_version=5.2.1
yaml_version=6.0.3
stamp="uv=$uv_version moto=$moto_version pyyaml=$yaml_version"

if [ "$(cat "$tools/stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "== installing the test tools into $tools ($stamp)" >&2
  rm -rf "$tools"
  mkdir -p "$tools/bin"
  # `--target` installs beside the system's packages, not into them (pip's PEP 668 check is for
  # the interpreter's own environment); uv's wheel is a static binary.
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
    --target "$tools/uv" "uv==$uv_version" >&2
  ln -s "$tools/uv/bin/uv" "$tools/bin/uv"
  # moto and PyYAML in a venv of their own, made by that uv, with the machine's python3; uv
  # trusts the machine's certificates (a proxy's CA in the system store), as pip and comfix do.
  UV_NATIVE_TLS=1 UV_CACHE_DIR="$tools/uv-cache" "$tools/bin/uv" venv --quiet --no-project \
    --python "$(command -v python3)" "$tools/venv" >&2
  UV_NATIVE_TLS=1 UV_CACHE_DIR="$tools/uv-cache" "$tools/bin/uv" pip install --quiet --python "$tools/venv/bin/python" \
    "moto[server]==$moto_version" "pyyaml==$yaml_version" >&2
  ln -s "$tools/venv/bin/moto_server" "$tools/bin/moto_server"
  rm -rf "$tools/uv-cache"
  echo "$stamp" >"$tools/stamp"
fi
echo "export PATH=\"$tools/bin:\$PATH\""
echo "export COMFIX_TEST_PYTHON=\"$tools/venv/bin/python\""
