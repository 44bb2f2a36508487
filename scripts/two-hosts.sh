#!/usr/bin/env bash
# Runs `singa ARGS...` as ranks on two emulated machines: two Linux network namespaces
# (host-a 10.99.0.1 and host-b 10.99.0.2, each with its own network stack and host name) joined
# by a virtual Ethernet link, optionally limited to a given bandwidth (`tc tbf`, each direction).
# mpirun runs on host-a and starts host-b's ranks through an rsh agent that enters host-b's
# namespace instead of ssh: the launch, the out-of-band wiring and every MPI message go over
# the link as they would between two machines (TCP; no shared memory between the hosts). The
# two hosts share this machine's cores and file system (a cluster with a shared file system).
#
#   bash scripts/two-hosts.sh [--ranks-per-host N] [--gbits G] -- ARGS...
#
# e.g. `bash scripts/two-hosts.sh --gbits 10 -- bench mlp --threads 1 --workers 2 --batch 128`.
# (No added latency: the kernels this was written on lack `netem`; the link's own is measured
# in docs/PERFORMANCE.md.) Needs root (namespaces, links, tc) and singa built with
# `--features mpi` (target/release/singa, or $SINGA_BIN). The namespaces stay for the next run;
# `bash scripts/two-hosts.sh --remove` deletes them.
set -euo pipefail
cd "$(dirname "$0")/.."
SINGA="${SINGA_BIN:-$PWD/target/release/singa}"
PER_HOST=1
GBITS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ranks-per-host) PER_HOST="$2"; shift 2
      [[ "$PER_HOST" =~ ^[1-9][0-9]*$ ]] || { echo "two-hosts.sh: --ranks-per-host takes a count of ranks, got '$PER_HOST'" >&2; exit 2; } ;;
    --gbits) GBITS="$2"; shift 2
      [[ "$GBITS" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "two-hosts.sh: --gbits takes a number of Gbit/s, got '$GBITS'" >&2; exit 2; } ;;
    --remove) ip netns del singa-host-a 2>/dev/null || true; ip netns del singa-host-b 2>/dev/null || true; exit 0 ;;
    --) shift; break ;;
    *) echo "two-hosts.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done


if ! { ip netns list | grep -q '^singa-host-a' && ip netns list | grep -q '^singa-host-b'; }; then
  # A setup cut short before is undone first.
  ip netns del singa-host-a 2>/dev/null || true
  ip netns del singa-host-b 2>/dev/null || true
  ip netns add singa-host-a
  ip netns add singa-host-b
  ip link add singa-veth-a type veth peer name singa-veth-b
  ip link set singa-veth-a netns singa-host-a
  ip link set singa-veth-b netns singa-host-b
  ip -n singa-host-a addr add 10.99.0.1/24 dev singa-veth-a
  ip -n singa-host-b addr add 10.99.0.2/24 dev singa-veth-b
  for h in a b; do
    ip -n "singa-host-$h" link set lo up
    ip -n "singa-host-$h" link set "singa-veth-$h" mtu 9000 up
  done
fi

# The link: limited in both directions, or left as it is (about 2 GB/s on this machine). The
# bucket holds 100 µs of traffic (at least 64 KB), so the rate holds at the scale of a message.
for h in a b; do
  ip netns exec "singa-host-$h" tc qdisc del dev "singa-veth-$h" root 2>/dev/null || true
  if [ -n "$GBITS" ]; then
    burst=$(python3 -c "print(max(65536, int($GBITS * 1e9 / 8 * 100e-6)))")
    ip netns exec "singa-host-$h" tc qdisc add dev "singa-veth-$h" root tbf \
      rate "${GBITS}gbit" burst "$burst" latency 50ms
  fi
done

AGENT="$(mktemp -d)/agent"
cat > "$AGENT" <<'EOF'
#!/bin/sh
# OpenMPI's rsh agent: "HOST COMMAND..." runs COMMAND in that host's namespace.
host="$1"; shift
case "$host" in
  10.99.0.1) h=a ;;
  10.99.0.2) h=b ;;
  *) echo "two-hosts agent: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "singa-host-$h" unshare --uts sh -c "hostname host-$h; $*"
EOF
chmod +x "$AGENT"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Each host would bind its ranks to its first cores, which are the same two cores here.
MPIRUN="$(printf '%q ' mpirun -H "10.99.0.1:$PER_HOST,10.99.0.2:$PER_HOST" -np $((2 * PER_HOST)) \
  --bind-to none --mca plm_rsh_agent "$AGENT" --mca btl tcp,self \
  --mca btl_tcp_if_include 10.99.0.0/24 --mca oob_tcp_if_include 10.99.0.0/24 "$SINGA" "$@")"
exec ip netns exec singa-host-a unshare --uts bash -c "hostname host-a; exec $MPIRUN"
