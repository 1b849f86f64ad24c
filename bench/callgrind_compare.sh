#!/usr/bin/env bash
# Instructions per call of bench/callgrind_hot.py's cases, for the
# checkouts given (each built in place), e.g.
#   bash bench/callgrind_compare.sh /tmp/old /work/main
# valgrind needs the real interpreter (a pyenv shim is a shell script).
set -euo pipefail
PY=$(python -c "import sys; print(sys.executable)")
HERE=$(cd "$(dirname "$0")" && pwd)
CASES=$("$PY" -c "import sys; sys.path.insert(0, '$HERE'); import callgrind_hot as c; print(' '.join(c.CASES))")
count() {   # tree case n -> instructions
  (cd "$1" && PYTHONHASHSEED=0 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind \
     --callgrind-out-file=/tmp/cg.%p.out "$PY" "$HERE/callgrind_hot.py" "$2" "$3" 2>&1 \
     | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
}
printf "| case |"; for t in "$@"; do printf " %s |" "$t"; done; echo
printf "|---|"; for t in "$@"; do printf -- "---|"; done; echo
for c in $CASES; do
  case $c in *k64_n64|*B256|*k2000|*B64_n64|per_sample_jacobian) lo=20; hi=120;; *) lo=100; hi=600;; esac
  printf "| %s |" "$c"
  for t in "$@"; do
    a=$(count "$t" "$c" $lo); b=$(count "$t" "$c" $hi)
    printf " %s |" $(( (b - a) / (hi - lo) ))
  done
  echo
done
rm -f /tmp/cg.*.out
