#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, built from upstream sources: etcd,
# kube-apiserver (aggregation layer with front-proxy certificates), kube-controller-manager (HPA
# controller at its default 15 s sync), kube-scheduler, kubelet with containerd + runc + the CNI
# bridge, kube-proxy (iptables), CoreDNS for cluster names. Nothing leaves the machine: the
# control plane listens on the pod bridge's gateway and on loopback, pods have no default route,
# Service IPs that kube-proxy did not translate are blackholed, DNS answers cluster names only.
#
#   e2e/local-cluster.sh up       # `make local-cluster`: build (cached) and start; idempotent
#   e2e/local-cluster.sh down     # `make local-cluster-down`: stop, and undo every host change
#   e2e/local-cluster.sh env      # the KUBECONFIG line to use it from a shell
#   e2e/local-cluster.sh load <archive   # an image (`docker save` output) into the node
#
# Needs root and Linux with cgroup v1 or v2. Installs what is missing from Debian (containerd,
# runc, containernetworking-plugins, iptables, conntrack; docker.io and debootstrap to build
# the images). The Kubernetes, etcd, CoreDNS and
# Prometheus binaries come from e2e/cluster/build.sh (Go module proxy; cached under
# CLUSTER_CACHE). Facts behind the choices below: ../shared/CLUSTER-NOTES.md and
# docs/TROUBLESHOOTING.md.
#
# Environment: CLUSTER_STATE (certificates, etcd, kubelet, logs; default
# /var/lib/imageclassifier-cluster), CLUSTER_RUN (pid files and sockets, on tmpfs so that none
# outlives a reboot; default /run/imageclassifier-cluster), CLUSTER_CACHE (built binaries,
# default /var/cache/imageclassifier/cluster).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${CLUSTER_STATE:-/var/lib/imageclassifier-cluster}
cache=${CLUSTER_CACHE:-/var/cache/imageclassifier/cluster}
bin=$cache/bin
node=imageclassifier-node
bridge=icbr0
gateway=10.244.0.1
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16
api_service_ip=10.96.0.1
api_port=6443
context=imageclassifier-local
kubeconfig=$state/admin.kubeconfig
pki=$state/pki
logs=$state/logs
run=${CLUSTER_RUN:-/run/imageclassifier-cluster}
# Kernel settings kubelet or the pod network change; saved at `up`, restored at `down`.
sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory vm.panic_on_oom
  kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Folders kubelet, CNI and containerd create outside our state folder whatever their flags say.
host_dirs=(/var/log/pods /var/log/containers /var/lib/cni /var/lib/kubelet /run/netns /run/containerd
  /etc/cni /opt/cni /opt/containerd)

say() { echo "local-cluster: $*"; }
fail() { echo "local-cluster: $*" >&2; exit 1; }
kc() { kubectl --kubeconfig "$kubeconfig" "$@"; }

# --- processes ----------------------------------------------------------------------------
# Each component is started in its own session, its pid recorded in $run/NAME.pid and its
# output in $logs/NAME.log; `down` stops them in reverse order.
start() { # NAME PROGRAM ARGS...
  local name=$1
  shift
  setsid "$@" >"$logs/$name.log" 2>&1 </dev/null &
  echo "$!" >"$run/$name.pid"
}

running() { # NAME
  [ -f "$run/$1.pid" ] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null
}

stop() { # NAME
  local pid
  [ -f "$run/$1.pid" ] || return 0
  pid=$(cat "$run/$1.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$run/$1.pid"
}

wait_for() { # WHAT SECONDS COMMAND...
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "$what did not come up within ${seconds}s (logs: $logs)"
}

# --- prerequisites ------------------------------------------------------------------------
install_debian_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  # To build the images (e2e/cluster/images.sh) and their Debian base.
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]} (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } \
    || fail "cannot install ${missing[*]} with apt-get"
}

check_host() {
  [ "$(id -u)" = 0 ] || fail "needs root (it runs kubelet, containerd and changes iptables)"
  [ "$(uname -s)" = Linux ] || fail "needs Linux"
  grep -qw overlay /proc/filesystems || fail "the kernel has no overlay filesystem (containerd's snapshotter needs it)"
  [ -d /proc/sys/net/bridge ] || fail "the kernel has no bridge netfilter (br_netfilter): kube-proxy's Service translation for pods needs it"
}

# Another Kubernetes node on this host would share iptables chains and pod namespaces with ours,
# and `down` removes those.
check_no_other_node() {
  if iptables -t nat -S 2>/dev/null | grep -q '^-N KUBE-'; then
    fail "iptables already has KUBE-* chains: another Kubernetes runs on this host (or a previous one left them; remove them first)"
  fi
  if ip netns list 2>/dev/null | grep -q '^cni-'; then
    fail "network namespaces cni-* exist: another container runtime's pods run on this host"
  fi
}

check_ports_free() {
  local port
  for port in 2379 2380 "$api_port" 10248 10249 10250 10256 10257 10259; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      fail "port $port is taken on this machine (another Kubernetes?)"
    fi
  done
}

# --- certificates -------------------------------------------------------------------------
# One cluster CA for serving and client certificates, one front-proxy CA for the aggregator.
make_ca() { # NAME CN
  [ -f "$pki/$1.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$2" \
    -keyout "$pki/$1.key" -out "$pki/$1.crt" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>"$pki/openssl.log" \
    || fail "cannot make the CA $1: $(cat "$pki/openssl.log")"
}

make_cert() { # NAME CA SUBJECT USAGE [SAN]
  local name=$1 ca=$2 subject=$3 usage=$4 san=${5:-}
  [ -f "$pki/$name.crt" ] && return 0
  local ext=$pki/$name.ext
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$ext"
  if ! openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$pki/$name.key" \
    -out "$pki/$name.csr" 2>"$pki/openssl.log" \
    || ! openssl x509 -req -in "$pki/$name.csr" -CA "$pki/$ca.crt" -CAkey "$pki/$ca.key" \
      -CAcreateserial -days 30 -extfile "$ext" -out "$pki/$name.crt" 2>"$pki/openssl.log"; then
    fail "cannot make the certificate $name: $(cat "$pki/openssl.log")"
  fi
  rm -f "$pki/$name.csr" "$ext"
}

make_kubeconfig() { # FILE CERT-NAME
  local file=$1 cert=$2
  kubectl config --kubeconfig "$file" set-cluster "$context" --server "https://$gateway:$api_port" \
    --certificate-authority "$pki/ca.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "$file" set-credentials "$cert" --client-certificate "$pki/$cert.crt" \
    --client-key "$pki/$cert.key" --embed-certs >/dev/null
  kubectl config --kubeconfig "$file" set-context "$context" --cluster "$context" --user "$cert" >/dev/null
  kubectl config --kubeconfig "$file" use-context "$context" >/dev/null
}

make_pki() {
  mkdir -p "$pki"
  chmod 700 "$pki"
  make_ca ca imageclassifier-local-ca
  make_ca front-proxy-ca imageclassifier-local-front-proxy-ca
  make_cert apiserver ca /CN=kube-apiserver serverAuth \
    "IP:$gateway,IP:$api_service_ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  make_cert admin ca "/O=system:masters/CN=imageclassifier-admin" clientAuth
  make_cert apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  make_cert controller-manager ca /CN=system:kube-controller-manager clientAuth
  make_cert scheduler ca /CN=system:kube-scheduler clientAuth
  make_cert kubelet ca "/O=system:nodes/CN=system:node:$node" clientAuth
  make_cert kube-proxy ca /CN=system:kube-proxy clientAuth
  make_cert front-proxy-client front-proxy-ca /CN=front-proxy-client clientAuth
  [ -f "$pki/sa.key" ] || {
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  } || fail "cannot make the service account key"
  make_kubeconfig "$kubeconfig" admin
  make_kubeconfig "$state/controller-manager.kubeconfig" controller-manager
  make_kubeconfig "$state/scheduler.kubeconfig" scheduler
  make_kubeconfig "$state/kubelet.kubeconfig" kubelet
  make_kubeconfig "$state/kube-proxy.kubeconfig" kube-proxy
}

# --- host network -------------------------------------------------------------------------
save_host_settings() {
  [ -f "$state/sysctl.saved" ] && return 0
  local key
  for key in "${sysctls[@]}"; do echo "$key=$(sysctl -n "$key")"; done >"$state/sysctl.saved"
  local dir
  for dir in "${host_dirs[@]}"; do [ -e "$dir" ] || echo "$dir"; done >"$state/dirs.created"
}

network_up() {
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$gateway/24" dev "$bridge"
    ip link set "$bridge" up
  fi
  # A Service IP kube-proxy did not translate goes nowhere, never to the default route.
  ip route show type blackhole | grep -q "^blackhole $service_cidr" || ip route add blackhole "$service_cidr"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # Forwarding is for pod <-> pod (and pod -> Service -> pod) on the bridge only.
  iptables -N IMAGECLASSIFIER-FORWARD 2>/dev/null || iptables -F IMAGECLASSIFIER-FORWARD
  iptables -A IMAGECLASSIFIER-FORWARD -i "$bridge" -o "$bridge" -j ACCEPT
  iptables -A IMAGECLASSIFIER-FORWARD -i "$bridge" -j DROP
  iptables -A IMAGECLASSIFIER-FORWARD -o "$bridge" -j DROP
  iptables -C FORWARD -j IMAGECLASSIFIER-FORWARD 2>/dev/null || iptables -I FORWARD 1 -j IMAGECLASSIFIER-FORWARD
  mkdir -p "$state/cni/net.d" "$state/cni/ipam"
  cat >"$state/cni/net.d/10-imageclassifier.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "imageclassifier",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$gateway"}]],
        "routes": [{"dst": "$service_cidr"}],
        "dataDir": "$state/cni/ipam"
      }
    }
  ]
}
EOF
  # Pods resolve through the cluster DNS only; it never forwards.
  echo "nameserver $gateway" >"$state/resolv.conf"
}

# --- components ---------------------------------------------------------------------------
pause_image() { echo "imageclassifier.local/pause:3.10"; }

start_containerd() {
  running containerd && return 0
  mkdir -p "$state/containerd"
  cat >"$state/containerd/config.toml" <<EOF
version = 2
root = "$state/containerd/root"
state = "$run/containerd"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$run/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  # The pause image is loaded with the others (e2e/cluster/images.sh); nothing is pulled.
  sandbox_image = "$(pause_image)"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
EOF
  start containerd containerd --config "$state/containerd/config.toml"
  wait_for containerd 30 ctr --address "$run/containerd.sock" version
}

start_etcd() {
  running etcd && return 0
  start etcd "$bin/etcd" --name "$node" --data-dir "$state/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$node=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381
  wait_for etcd 30 curl -fs http://127.0.0.1:2381/health
}

start_apiserver() {
  running apiserver && return 0
  # Listens on the bridge gateway only: the host reaches it there, pods through the
  # `kubernetes` Service (kube-proxy translates 10.96.0.1:443 to it). The aggregator sends to
  # the adapter's pod directly (aggregator routing): from the host, Service IPs are blackholed.
  start apiserver "$bin/kube-apiserver" \
    --advertise-address "$gateway" --bind-address "$gateway" --secure-port "$api_port" \
    --etcd-servers http://127.0.0.1:2379 \
    --service-cluster-ip-range "$service_cidr" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" \
    --proxy-client-key-file "$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --profiling=false
  wait_for kube-apiserver 90 kc get --raw /readyz
}

start_controller_manager() {
  running controller-manager && return 0
  # Each controller with its own service account, as kubeadm and minikube run it: the HPA asks
  # the metrics adapter as system:serviceaccount:kube-system:horizontal-pod-autoscaler.
  start controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  wait_for kube-controller-manager 30 curl -fsk https://127.0.0.1:10257/healthz
}

start_scheduler() {
  running scheduler && return 0
  start scheduler "$bin/kube-scheduler" --kubeconfig "$state/scheduler.kubeconfig" \
    --authentication-kubeconfig "$state/scheduler.kubeconfig" \
    --authorization-kubeconfig "$state/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
  wait_for kube-scheduler 30 curl -fsk https://127.0.0.1:10259/healthz
}

start_kubelet() {
  running kubelet && return 0
  mkdir -p "$state/kubelet"
  cat >"$state/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $gateway
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$run/containerd.sock
cgroupDriver: cgroupfs
clusterDNS: [$gateway]
clusterDomain: cluster.local
resolvConf: $state/resolv.conf
failSwapOn: false
# Images are loaded, never pulled: kubelet must not collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}
maxPods: 30
EOF
  start kubelet "$bin/kubelet" --config "$state/kubelet/config.yaml" \
    --kubeconfig "$state/kubelet.kubeconfig" --root-dir "$state/kubelet" \
    --cert-dir "$state/kubelet/pki" --hostname-override "$node" --node-ip "$gateway"
  wait_for "node $node" 60 kc get node "$node"
}

start_kube_proxy() {
  running kube-proxy && return 0
  cat >"$state/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $state/kube-proxy.kubeconfig}
hostnameOverride: $node
clusterCIDR: $pod_cidr
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$gateway/32]
# Leave the host's conntrack table size and timeouts as they are.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy "$bin/kube-proxy" --config "$state/kube-proxy.yaml"
  wait_for kube-proxy 30 curl -fs http://127.0.0.1:10256/healthz
}

start_coredns() {
  running coredns && return 0
  # Cluster names from the API; everything else NXDOMAIN, never forwarded.
  cat >"$state/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $gateway
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig $context
    }
    cache 5
}
.:53 {
    bind $gateway
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
  start coredns "$bin/coredns" -conf "$state/Corefile"
  wait_for coredns 30 grep -q "CoreDNS-" "$logs/coredns.log"
}

wait_for_node_ready() {
  wait_for "node $node Ready" 120 kc wait --for=condition=Ready "node/$node" --timeout=1s
  # Pods can be created once the controller manager made the default service account.
  wait_for "service account default/default" 60 kc -n default get serviceaccount default
}

# --- teardown -----------------------------------------------------------------------------
# Removes what kube-proxy and kubelet put in the iptables of one family: jumps from the built-in
# chains to KUBE-* chains, then those chains (`kube-proxy --cleanup` leaves some behind).
remove_kube_chains() { # iptables|ip6tables
  local tool=$1 table line chain
  command -v "$tool" >/dev/null || return 0
  for table in filter nat mangle; do
    "$tool" -t "$table" -S >/dev/null 2>&1 || continue
    while read -r line; do
      eval "$tool -t $table -D ${line#-A }" 2>/dev/null || true
    done < <("$tool" -t "$table" -S | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE|IMAGECLASSIFIER)-')
    for chain in $("$tool" -t "$table" -S | awk '/^-N (KUBE|IMAGECLASSIFIER)-/ {print $2}'); do
      "$tool" -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $("$tool" -t "$table" -S | awk '/^-N (KUBE|IMAGECLASSIFIER)-/ {print $2}'); do
      "$tool" -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

stop_pods() {
  running containerd || return 0
  local task
  for task in $(ctr --address "$run/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr --address "$run/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
  done
  for _ in $(seq 1 25); do
    [ -z "$(ctr --address "$run/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null)" ] && break
    sleep 0.2
  done
}

down() {
  if [ ! -d "$state" ] && [ ! -d "$run" ]; then
    say "no cluster here ($state does not exist)"
    return 0
  fi
  say "stopping"
  local name
  for name in coredns kube-proxy scheduler controller-manager kubelet; do stop "$name"; done
  stop_pods
  for name in apiserver etcd containerd; do stop "$name"; done
  # Container shims run in their own sessions; none may outlive the cluster.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $run/containerd.sock" 2>/dev/null || true
  sleep 0.5
  # Mounts kubelet (pod volumes, its root) and containerd (rootfs, sandboxes' shm) left under
  # our folders, and the pods' network namespaces.
  awk -v state="$state/" -v run="$run/" \
    'index($2, state) == 1 || index($2, run) == 1 || $2 ~ "^/run/netns/cni-" {print $2}' /proc/mounts \
    | sort -r | while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
  local netns
  for netns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$netns" 2>/dev/null || true; done
  ip link delete "$bridge" 2>/dev/null || true
  ip route del blackhole "$service_cidr" 2>/dev/null || true
  remove_kube_chains iptables
  remove_kube_chains ip6tables
  # kubelet's cgroups (v1: kubepods in each controller's tree; v2: kubepods at the top): any
  # container process a killed shim left behind first, then the groups, deepest first.
  local top
  for top in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$top" ] || continue
    find "$top" -name cgroup.procs -print0 | xargs -0 -r cat 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    sleep 0.2
    find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  if [ -f "$state/sysctl.saved" ]; then
    while IFS= read -r setting; do sysctl -qw "$setting" 2>/dev/null || true; done <"$state/sysctl.saved"
  fi
  if [ -f "$state/dirs.created" ]; then
    while IFS= read -r dir; do rm -rf "$dir"; done <"$state/dirs.created"
  fi
  rm -rf "$state" "$run"
  say "stopped; the host is as it was before 'up' (installed Debian packages stay)"
}

# --- up -----------------------------------------------------------------------------------
up() {
  check_host
  # What a cluster that did not stop (a killed run, a rebooted machine) left behind goes first.
  if [ -d "$state" ] && ! running apiserver; then
    say "cleaning up after a cluster that did not stop"
    down
  fi
  if ! running apiserver; then
    check_ports_free
    check_no_other_node
  fi
  install_debian_packages
  BIN="$bin" "$root/e2e/cluster/build.sh"
  mkdir -p "$state" "$logs" "$run"
  save_host_settings
  make_pki
  network_up
  start_containerd
  BIN="$bin" "$root/e2e/cluster/images.sh" cluster
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_kubelet
  start_kube_proxy
  start_coredns
  wait_for_node_ready
  kc get node -o wide
  say "ready: export KUBECONFIG=$kubeconfig (context $context); logs in $logs"
}

# `docker save` output on stdin into the node's containerd, where kubelet's CRI finds it.
load() {
  running containerd || fail "the cluster is not running: e2e/local-cluster.sh up"
  ctr --address "$run/containerd.sock" -n k8s.io images import - >/dev/null
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  env) echo "export KUBECONFIG=$kubeconfig" ;;
  load) load ;;
  pause-image) pause_image ;;
  # What e2e/host-state.sh compares before `up` and after `down`.
  host-sysctls) echo "${sysctls[*]}" ;;
  host-paths) echo "${host_dirs[*]} $state $run" ;;
  *) fail "usage: $0 up|down|env|load (an image archive on stdin)|pause-image|host-sysctls|host-paths" ;;
esac
