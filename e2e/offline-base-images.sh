#!/usr/bin/env bash
# Base images for machines that cannot pull from a registry (air-gapped build hosts, CI here).
# Makes, under the names the Dockerfile uses, so the Dockerfile itself stays standard:
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm from Debian's package archive
#   rust:1.95-bookworm     that base + gcc/pkg-config (apt) + this machine's Rust toolchain
# On a normal machine, skip this: the same names resolve to the official images.
#
#   e2e/offline-base-images.sh            # both (skips images that exist; FORCE=1 remakes)
#   ONLY=runtime e2e/offline-base-images.sh
# Needs root, debootstrap, a running docker engine, and (for the builder) rustup's toolchain.
set -euo pipefail

runtime_image=${RUNTIME_IMAGE:-debian:bookworm-slim}
builder_image=${RUST_IMAGE:-rust:1.95-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker=${DOCKER:-docker}

fail() { echo "offline-base-images: $*" >&2; exit 1; }
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT
exists() { "$docker" image inspect "$1" >/dev/null 2>&1; }
"$docker" info >/dev/null 2>&1 || fail "no docker engine answers (start dockerd, or set DOCKER_HOST)"

if [ "${ONLY:-}" != builder ] && { [ "${FORCE:-0}" = 1 ] || ! exists "$runtime_image"; }; then
  command -v debootstrap >/dev/null || fail "needs debootstrap (apt-get install debootstrap)"
  rootfs=$(mktemp -d)
  scratch+=("$rootfs")
  echo "offline-base-images: debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  # Trim what a runtime image never needs.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | "$docker" import - "$runtime_image" >/dev/null
  echo "offline-base-images: made $runtime_image"
fi

if [ "${ONLY:-}" != runtime ] && { [ "${FORCE:-0}" = 1 ] || ! exists "$builder_image"; }; then
  command -v rustc >/dev/null || fail "needs a Rust toolchain on this machine (rustup)"
  sysroot=$(rustc --print sysroot)
  context=$(mktemp -d)
  scratch+=("$context")
  cp -a "$sysroot" "$context/rust"   # rustc, cargo, std for this machine's target
  # Trust what this machine trusts: crates.io may only be reachable through a proxy or mirror
  # whose certificate authority is in the host's bundle, not in Debian's.
  cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
  cat >"$context/Dockerfile" <<EOF
FROM $runtime_image
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:\$PATH CARGO_HOME=/usr/local/cargo \
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
RUN mkdir -p /usr/local/cargo && cargo --version && rustc --version
EOF
  echo "offline-base-images: builder from $sysroot"
  "$docker" build --network host -q -t "$builder_image" "$context" >/dev/null
  echo "offline-base-images: made $builder_image"
fi
