#!/usr/bin/env bash
# Install what the tests need into .venv and run the whole test suite, plus short drills on
# a local store and on an S3 store in a real SeaweedFS server started (and stopped) here.
#
# The versions installed are the ones in requirements-lock.txt (what CI tested; refresh it
# with `bash scripts/lock.sh`). `--latest` installs the newest releases the library's and
# the tests' own ranges allow, into .venv-latest, so a breaking release is seen on purpose.
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
pins=(-c requirements-lock.txt)
if [ "${1:-}" = "--latest" ]; then
  shift
  venv=.venv-latest
  pins=(--upgrade --upgrade-strategy eager)
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "${pins[@]}" --upgrade pip setuptools wheel >/dev/null
"$venv/bin/python" -m pip install -q "${pins[@]}" --no-build-isolation -e '.[test]' -r requirements-dev.txt
export PATH="$PWD/$venv/bin:$PATH"
seed="${FTSTORE_DRILL_SEED:-1}"
ftstore drill --seed "$seed"
python -m tests.seaweed -- bash -c "
  set -e
  python -c 'import os; open(\"/tmp/ftstore-ci-sample.bin\", \"wb\").write(os.urandom(3_000_000))'
  ftstore save /tmp/ftstore-ci-sample.bin --name ci-sample --store s3://ftstore-ci/drill >/dev/null
  ftstore drill --from-store --store s3://ftstore-ci/drill --seed $seed
  ftstore scrub --store s3://ftstore-ci/drill"
python -m pytest -q "$@"
