#!/bin/sh
# Flash a model from an edge-toolchain release bundle onto a device over SSH.
#
# The consumer contract of a bundle, in plain POSIX shell:
#   1. unpack it and check every file against SHA256SUMS (sha256sum -c)
#   2. read manifest.json (jq if installed, else python3) for the primary model file
#   3. copy the model and manifest.json to the device, into a temp name then rename,
#      and check the sha256 again on the device
#
# usage: flash.sh BUNDLE.tar.gz [USER@]HOST [REMOTE_DIR]
#   REMOTE_DIR defaults to models/<model>-<version>-<target> under the login directory
#   SSH_OPTS   extra options for ssh, e.g. "-F ./ssh_config" or "-o Port=2222 -i key"
# exit codes: 0 flashed; 1 bad bundle or checksum mismatch; 2 usage; 3 device side failed
set -eu

usage() { echo "usage: $0 BUNDLE.tar.gz [USER@]HOST [REMOTE_DIR]" >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
bundle=$1
host=$2
ssh_opts=${SSH_OPTS:-}

[ -f "$bundle" ] || { echo "flash.sh: no such bundle: $bundle" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

tar -xzf "$bundle" -C "$work" || { echo "flash.sh: cannot unpack $bundle" >&2; exit 1; }
name=$(basename "$bundle" .tar.gz)
dir="$work/$name"
[ -f "$dir/SHA256SUMS" ] && [ -f "$dir/manifest.json" ] || {
    echo "flash.sh: $bundle has no $name/SHA256SUMS or manifest.json" >&2; exit 1; }

# 1. every file against SHA256SUMS
(cd "$dir" && sha256sum --check --strict --quiet SHA256SUMS) || {
    echo "flash.sh: checksum mismatch in $bundle: refusing to flash" >&2; exit 1; }

# 2. the manifest
field() {  # field JQ_PATH PYTHON_EXPRESSION
    if command -v jq >/dev/null 2>&1; then
        jq -r "$1" "$dir/manifest.json"
    else
        python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print($2)" "$dir/manifest.json"
    fi
}
model_file=$(field '.primary.file' 'm["primary"]["file"]')
model_sha=$(field '.primary.sha256' 'm["primary"]["sha256"]')
target=$(field '.target.name' 'm["target"]["name"]')
case $model_file in
    models/*) ;;
    *) echo "flash.sh: unexpected primary file '$model_file' in manifest.json" >&2; exit 1 ;;
esac
[ "$(sha256sum "$dir/$model_file" | cut -d' ' -f1)" = "$model_sha" ] || {
    echo "flash.sh: $model_file does not match manifest.json" >&2; exit 1; }
model=$(basename "$model_file")
remote_dir=${3:-models/$name}
echo "flashing $model (target $target) to $host:$remote_dir"

# 3. copy, rename into place, check on the device
# shellcheck disable=SC2086  # SSH_OPTS is a list of options
ssh $ssh_opts "$host" "mkdir -p '$remote_dir' && cat > '$remote_dir/.$model.part'" < "$dir/$model_file" || {
    echo "flash.sh: copying $model to $host failed" >&2; exit 3; }
# shellcheck disable=SC2086
ssh $ssh_opts "$host" "cat > '$remote_dir/manifest.json'" < "$dir/manifest.json" || exit 3
# shellcheck disable=SC2086
remote_sha=$(ssh $ssh_opts "$host" "sha256sum '$remote_dir/.$model.part'" | cut -d' ' -f1) || exit 3
if [ "$remote_sha" != "$model_sha" ]; then
    # shellcheck disable=SC2086
    ssh $ssh_opts "$host" "rm -f '$remote_dir/.$model.part'" || true
    echo "flash.sh: $model arrived damaged on $host (sha256 $remote_sha)" >&2
    exit 3
fi
# shellcheck disable=SC2086
ssh $ssh_opts "$host" "mv -f '$remote_dir/.$model.part' '$remote_dir/$model'" || exit 3
echo "flashed $model sha256 $model_sha"
