#!/usr/bin/env bash
# Run the coverage-guided fuzz harnesses (fuzz/README.md), each for FUZZ_TIME seconds.
#   bash fuzz/run.sh [TARGET...]      targets: jpeg png exif sanitize dicom multipart (default: all)
# FUZZ_DIR: the work folder (corpora, artifacts, logs); default a new one under $TMPDIR. The
# harnesses write nowhere else (each runs with the work folder as its current directory).
set -uo pipefail
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the source tree either
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-$root/.venv/bin/python}
time_each=${FUZZ_TIME:-300}
work=${FUZZ_DIR:-$(mktemp -d -t adapter-fuzz.XXXXXX)}
declare -A max_len=([jpeg]=65536 [png]=65536 [exif]=4096 [sanitize]=65536 [dicom]=16384 [multipart]=32768)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(jpeg png exif sanitize dicom multipart)

"$python" -c "import atheris" 2>/dev/null || { echo "atheris is missing: $python -m pip install atheris" >&2; exit 2; }
mkdir -p "$work/tmp"
# the harnesses' temporary folders too: libFuzzer ends the process without Python's atexit
export TMPDIR="$work/tmp"
"$python" "$here/seeds.py" "$work/seeds" || exit 2
failed=()
for target in "${targets[@]}"; do
  [ -n "${max_len[$target]:-}" ] || { echo "unknown target $target" >&2; exit 2; }
  mkdir -p "$work/corpus/$target" "$work/artifacts/$target"
  echo "== $target: ${time_each}s, log $work/$target.log"
  (cd "$work" && "$python" "$here/fuzz_$target.py" "$work/corpus/$target" "$work/seeds/$target" \
     -max_total_time="$time_each" -rss_limit_mb=1024 -timeout=5 -max_len="${max_len[$target]}" \
     -report_slow_units=2 -print_final_stats=1 -artifact_prefix="$work/artifacts/$target/" \
     >"$work/$target.log" 2>&1)
  status=$?
  grep -E "^#[0-9]+ +DONE|^Done|stat::number_of_executed_units|ERROR|Slow unit" "$work/$target.log" | tail -4
  [ "$status" -eq 0 ] || failed+=("$target")
done
echo "work folder: $work (corpora, artifacts, logs)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "findings in: ${failed[*]} (see $work/artifacts)" >&2
  exit 1
fi
