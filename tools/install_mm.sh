#!/usr/bin/env bash
# Install the `mm` extra into the project venv: mmcv 2.1.0 built from source with its CPU/CUDA ops
# (PyPI has no mmcv wheel for torch 2.14), then mmengine / mmdet / mmsegmentation.
# The built mmcv wheel lands in pip's wheel cache, so later runs on the same machine take seconds.
set -euo pipefail
PY=${PY:-.venv/bin/python}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}

if "$PY" - <<PYEOF 2>/dev/null
import mmcv, mmcv.ops, mmdet, mmseg, mmengine  # noqa
assert mmcv.__version__ == "$MMCV_VERSION"
PYEOF
then
    echo "mm: already installed"; exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# mmcv's setup.py imports pkg_resources and wheel: an older setuptools, visible to the build only.
"$PY" -m pip install -q --target "$work/buildtools" "setuptools<70" wheel

# torch 2.14's headers need C++20; mmcv's setup.py passes -std=c++14/17 last, so rewrite it.
mkdir -p "$work/bin"
for tool in gcc g++; do
    real=$(command -v "$tool")
    cat > "$work/bin/$tool" <<WRAP
#!/usr/bin/env bash
args=()
for a in "\$@"; do
    case "\$a" in -std=c++14|-std=c++17) args+=("-std=c++20") ;; *) args+=("\$a") ;; esac
done
exec "$real" "\${args[@]}"
WRAP
    chmod +x "$work/bin/$tool"
done

export PATH="$work/bin:$PATH" CC="$work/bin/gcc" CXX="$work/bin/g++"
export MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2}
PYTHONPATH="$work/buildtools${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" -m pip install --no-build-isolation "mmcv==$MMCV_VERSION"

"$PY" -m pip install -q "mmengine==0.10.7" "mmdet==3.3.0" "mmsegmentation==1.2.2" \
    ftfy regex pycocotools shapely terminaltables scipy
"$PY" -c "import mmcv.ops, mmdet.models, mmseg.models; print('mm: mmcv', __import__('mmcv').__version__, 'ok')"
