#!/usr/bin/env bash
# A slim Ray wheel for the lent GPU machines, which have no Ray and no internet, and take at most 64 MiB of
# carried files per call (the plain ray-2.60.0 cp312 wheel is 79 MB; `.whl/` already holds 56 MB).
#
#   bench/pack_ray.sh                                  -> .raywhl/  (cp312, the GPU machines' Python)
#   PYVER=3.11 DEST=/tmp/raywhl311 bench/pack_ray.sh   -> the same recipe for another Python (to test it here)
#
# On the GPU machine (a call that carries .raywhl; /tmp survives between calls while the machine is warm):
#   pip install --no-index --no-deps --target /tmp/site .raywhl/*.whl
#
# What goes: ray + jsonschema, jsonschema-specifications, referencing, rpds-py (Ray's one core dependency the
# GPU image lacks, with its own), at the versions of constraints.txt. The rest of Ray's core dependencies
# (click, filelock, msgpack, packaging, protobuf, pyyaml, requests) are on the image already.
#
# What the ray wheel loses (the farm imports only `ray`, `ray.util.placement_group`,
# `ray.util.scheduling_strategies`, `ray.exceptions`; an embedded cluster's processes import none of these):
#   ray/jars                   the Java worker (31 MB compressed)
#   ray/dashboard/client/build the dashboard's web UI (the farm starts Ray with include_dashboard=False)
#   ray/{rllib,serve,tune,train,data,llm,air}   Ray's libraries
# and the `serve`/`tune` console scripts that point into them. RECORD is rewritten for what is left, so pip
# installs it like any wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

RAY_VERSION=${RAY_VERSION:-2.60.0}
PYVER=${PYVER:-3.12}
DEST=${DEST:-.raywhl}
LIMIT_MIB=${LIMIT_MIB:-45}

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -c constraints.txt -d "$download" \
    "ray==$RAY_VERSION" jsonschema jsonschema-specifications referencing rpds-py

rm -rf "$DEST"
mkdir -p "$DEST"
find "$download" -name '*.whl' ! -name 'ray-*' -exec cp {} "$DEST"/ \;
python3 - "$download"/ray-"$RAY_VERSION"-*.whl "$DEST" <<'EOF'
import base64
import hashlib
import sys
import zipfile
from pathlib import Path

DROP = ("jars/", "dashboard/client/build/", "rllib/", "serve/", "tune/", "train/", "data/", "llm/", "air/")
DROP_SCRIPTS = ("serve =", "tune =")

source, dest = Path(sys.argv[1]), Path(sys.argv[2])
target = dest / source.name
dropped = kept = 0
with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    rows = []
    for info in zin.infolist():
        name = info.filename
        if name == record_name:
            continue
        if name.startswith(tuple("ray/" + d for d in DROP)):
            dropped += info.file_size
            continue
        data = zin.read(info)
        if name.endswith(".dist-info/entry_points.txt"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not line.startswith(DROP_SCRIPTS)).encode()
        out = zipfile.ZipInfo(name, info.date_time)
        out.external_attr = info.external_attr  # executable bits (raylet, gcs_server)
        out.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(out, data, compresslevel=9)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{name},sha256={digest},{len(data)}")
        kept += len(data)
    rows.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(rows) + "\n", compresslevel=9)
print(f"{target.name}: dropped {dropped / 2**20:.1f} MiB, kept {kept / 2**20:.1f} MiB (uncompressed)")
EOF

if [ "$DEST" = .raywhl ] && ! grep -qxF '/.raywhl/' .git/info/exclude 2>/dev/null; then
    echo '/.raywhl/' >> .git/info/exclude
fi
ls -l "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total $(python3 -c "print(f'{$total / 2**20:.1f}')") MiB in $DEST (limit $LIMIT_MIB MiB)"
if [ "$total" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "too large for one carry beside the working tree" >&2
    exit 1
fi
