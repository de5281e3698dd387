#!/usr/bin/env bash
# Builds the release binaries and runs every mesh-bench benchmark, printing a
# markdown summary on stdout (progress and build output on stderr).
#
#   tests/bench/run.sh                 # all benchmarks, default sizes
#   tests/bench/run.sh startup         # only some: startup convergence overhead xds-scale mtls restart lb routing
#   SCALE_PROXIES="1000 5000" tests/bench/run.sh xds-scale
#
# Everything runs on loopback and stops by itself; each benchmark has a hard time
# limit (--max-seconds) after which mesh-bench kills its children and exits.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/mesh-target}"
bin_dir="$CARGO_TARGET_DIR/release"
bench="$bin_dir/mesh-bench"

(cd "$root" && cargo build --release --workspace --bins) >&2

which=("$@")
[ ${#which[@]} -eq 0 ] && which=(startup convergence overhead xds-scale mtls restart lb routing)

echo "# mesh benchmarks ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown))"
echo
for b in "${which[@]}"; do
  case "$b" in
    startup)     cmd=("$bench" startup --runs 20 --max-seconds 300) ;;
    convergence) cmd=("$bench" convergence --runs 30 --debounce-ms 100,10 --max-seconds 300) ;;
    overhead)    cmd=("$bench" overhead --requests 20000 --concurrency 16 --rounds 2 --max-seconds 600) ;;
    restart)     cmd=("$bench" restart --runs 20 --max-seconds 300) ;;
    lb)          cmd=("$bin_dir/mesh-lb-bench" --endpoints 3,10,100,1000 --picks 2000000 --threads 1) ;;
    mtls)        cmd=("$bench" mtls --connectors 8 --handshake-seconds 5 --requests 20000 --concurrency 16 --serial-requests 3000 --rounds 5 --max-seconds 600) ;;
    xds-scale)
      for n in ${SCALE_PROXIES:-1000}; do
        echo "\`\$ mesh-bench xds-scale --proxies $n --rounds 5\`"; echo
        "$bench" xds-scale --proxies "$n" --rounds 5 --max-seconds 600 || echo "xds-scale --proxies $n failed (exit $?)"
      done
      continue ;;
    routing)
      echo "\`\$ cargo bench -p mesh-proxy --bench routing\`"; echo
      (cd "$root" && cargo bench -q -p mesh-proxy --bench routing 2>/dev/null) || echo "routing failed (exit $?)"
      echo; continue ;;
    *) echo "unknown benchmark $b" >&2; exit 2 ;;
  esac
  echo "\`\$ $(basename "${cmd[0]}") ${cmd[*]:1}\`"; echo
  "${cmd[@]}" || echo "$b failed (exit $?)"
done
