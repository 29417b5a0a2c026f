#!/usr/bin/env bash
# The main job, end to end: save an artifact, damage it on disk, scrub it back, load it.
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export FTSTORE_STORE="$work/store"
python3 -c "import os; open('$work/model.bin','wb').write(os.urandom(24*1024*1024 + 321))"

ftstore save "$work/model.bin" --name demo-model --meta epoch=7
ftstore ls
echo "--- damaging the stored payload: 200 KiB zeroed, 30 bytes flipped, tail cut off"
python3 - "$FTSTORE_STORE/artifacts/demo-model/1/payload" <<'PY'
import os, random, sys
p = sys.argv[1]
rng = random.Random(1)
with open(p, "r+b") as f:
    f.seek(5_000_000); f.write(bytes(200 * 1024))
    for _ in range(30):
        pos = rng.randrange(os.path.getsize(p)); f.seek(pos); b = f.read(1); f.seek(pos); f.write(bytes([b[0] ^ 0xFF]))
os.truncate(p, os.path.getsize(p) - 300_000)
PY
ftstore verify demo-model || echo "verify exit code $? (damage found, as expected)"
ftstore scrub --repair
ftstore load demo-model -o "$work/restored.bin"
cmp "$work/model.bin" "$work/restored.bin" && echo "restored bytes are identical to the original"
ftstore drill --seed 1
