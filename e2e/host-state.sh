#!/usr/bin/env bash
# What the local cluster may change on the host, printed in a stable form, so that the state
# before `e2e/local-cluster.sh up` and after `down` can be compared (`make e2e-local` does):
# network links and routes, iptables rules (without counters), the kernel settings kubelet and
# the pod network touch, mounts, network namespaces, kubepods cgroups, and the folders kubelet,
# CNI and containerd create.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

echo "# links"
ip -o link show | awk '{print $2}' | sort
echo "# routes"
ip route show table all | grep -v -e '^local ' -e '^broadcast ' -e ' table local ' | sort
echo "# iptables"
for tool in iptables-save ip6tables-save; do
  if command -v "$tool" >/dev/null; then
    # Rules and chains, not counters, table headers, or the built-in chains every table has.
    "$tool" | sed 's/ *\[[0-9]*:[0-9]*\]//' \
      | { grep -v -e '^#' -e '^\*' -e '^COMMIT' -e '^:\(INPUT\|OUTPUT\|FORWARD\|PREROUTING\|POSTROUTING\) ' || true; } \
      | sed "s/^/$tool: /" | sort
  fi
done
echo "# sysctl"
# shellcheck disable=SC2046 # one key per word
sysctl $("$root/e2e/local-cluster.sh" host-sysctls) 2>/dev/null || true
echo "# mounts"
awk '{print $2}' /proc/mounts | sort
echo "# network namespaces"
ip netns list 2>/dev/null | sort
echo "# cgroups"
find /sys/fs/cgroup -maxdepth 3 -type d -name 'kubepods*' 2>/dev/null | sort
echo "# folders"
for dir in $("$root/e2e/local-cluster.sh" host-paths) /run/docker /etc/docker/key.json; do
  [ ! -e "$dir" ] || echo "$dir"
done
echo "# processes"
# (Process names as the kernel keeps them: 15 characters at most.)
ps -eo comm= | { grep -x -E 'kube-apiserver|kube-controller|kube-scheduler|kubelet|kube-proxy|etcd|coredns|containerd|containerd-shim|dockerd' || true; } | sort
