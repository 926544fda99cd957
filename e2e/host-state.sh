#!/usr/bin/env bash
# What the local cluster may change on the host, printed in a stable form, so that the state
# before `e2e/local-cluster.sh up` and after `down` can be compared (`make e2e-local` does):
# network links and routes, iptables rules (without counters), the kernel settings kubelet and
# the pod network touch, mounts, network namespaces, kubepods cgroups, and the folders kubelet,
# CNI and containerd create.
set -euo pipefail

echo "# links"
ip -o link show | awk '{print $2}' | sort
echo "# routes"
ip route show table all | grep -v -e '^local ' -e '^broadcast ' -e ' table local ' | sort
echo "# iptables"
for tool in iptables-save ip6tables-save; do
  if command -v "$tool" >/dev/null; then
    # Rules and chains, not counters, table headers, or the built-in chains every table has.
    "$tool" | sed 's/ *\[[0-9]*:[0-9]*\]//' \
      | grep -v -e '^#' -e '^\*' -e '^COMMIT' -e '^:\(INPUT\|OUTPUT\|FORWARD\|PREROUTING\|POSTROUTING\) ' \
      | sed "s/^/$tool: /" | sort
  fi
done
echo "# sysctl"
sysctl net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory \
  vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys \
  kernel.keys.root_maxbytes 2>/dev/null
echo "# mounts"
awk '{print $2}' /proc/mounts | sort
echo "# network namespaces"
ip netns list 2>/dev/null | sort
echo "# cgroups"
find /sys/fs/cgroup -maxdepth 3 -type d -name 'kubepods*' 2>/dev/null | sort
echo "# folders"
for dir in /var/log/pods /var/log/containers /var/lib/cni /var/lib/kubelet /run/netns \
  /run/containerd /run/docker /etc/cni /opt/cni /var/lib/imageclassifier-cluster; do
  [ ! -e "$dir" ] || echo "$dir"
done
echo "# processes"
pgrep -x -l 'kube-apiserver|kube-controller|kube-scheduler|kubelet|kube-proxy|etcd|coredns|containerd|dockerd' \
  | awk '{print $2}' | sort
