#!/usr/bin/env bash
# Downloads the pretrained ResNet50 of `make model` to OUT and checks its SHA-256 against the
# known ones; keeps an existing OUT that already matches. Which file and why: docs/ADDING-A-MODEL.md.
#
#   inference/scripts/fetch-resnet50.sh OUT
#
# Environment: RESNET50_URLS (space-separated, tried in order), RESNET50_SHA256S (space-separated
# accepted digests).
set -euo pipefail
out=${1:?usage: fetch-resnet50.sh OUT}
# The ONNX model zoo's validated ResNet50-v1, fp32, opset 12 (MXNet Gluon weights; the zoo's README:
# 74.97 % top-1, 92.33 % top-5 on ImageNet val). The zoo moved its files under validated/ in 2024;
# the old path is tried second.
urls=${RESNET50_URLS:-https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model/resnet50-v1-12.onnx https://github.com/onnx/models/raw/main/vision/classification/resnet/model/resnet50-v1-12.onnx}
# The zoo's hub manifest (ONNX_HUB_MANIFEST.json: model_sha, 102576593 bytes), and the file's
# earlier revision (its git LFS pointer: 102576419 bytes). Both hold the same weights; the
# photo check of `make model` is what shows they are trained ones.
digests=${RESNET50_SHA256S:-3f03fdef724b22947eed826f1eef1dc5c34151bb4c37d634f1db89dfa2dd1526 ab65bdc02c5b3123eb3cdf6dac01742438517d8635d4f233913b2be1c70db3b6}

known() { # file -> true when its digest is one of $digests
  local digest
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  case " $digests " in *" $digest "*) return 0 ;; *) return 1 ;; esac
}

if [ -f "$out" ] && known "$out"; then
  echo "$out: already downloaded (SHA-256 checked)"
  exit 0
fi
command -v curl >/dev/null || { echo "fetch-resnet50.sh: needs curl" >&2; exit 1; }
part="$out.part"
trap 'rm -f "$part"' EXIT
for url in $urls; do
  echo "downloading $url"
  if ! curl -fL --retry 3 -o "$part" "$url"; then
    echo "fetch-resnet50.sh: $url failed" >&2
    continue
  fi
  if known "$part"; then
    mv "$part" "$out"
    echo "$out: SHA-256 $(sha256sum "$out" | cut -d' ' -f1) is a known ResNet50-v1-12"
    exit 0
  fi
  echo "fetch-resnet50.sh: $url gave a file with SHA-256 $(sha256sum "$part" | cut -d' ' -f1), not one of: $digests" >&2
done
echo "fetch-resnet50.sh: no pretrained ResNet50 downloaded; without internet, make model OFFLINE=1 makes one with random weights" >&2
exit 1
