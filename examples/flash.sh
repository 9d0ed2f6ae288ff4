#!/bin/sh
# Flash a model from an edge-toolchain release bundle onto a device over SSH.
#
# The consumer contract of a bundle, in plain POSIX shell (a Linux, BusyBox or macOS host):
#   1. list the archive before unpacking it: one top folder named like the bundle file, no
#      duplicate members, only SHA256SUMS, manifest.json, models/NAME and golden/NAME, with
#      NAME made of letters, digits and . _ - (so no name from a bundle can change a command)
#   2. unpack it and check every file against SHA256SUMS (sha256sum, else shasum -a 256)
#   3. read manifest.json (jq if installed, else python3): the primary model file must be one
#      of its artifacts, with the same sha256
#   4. on the device, the model and then manifest.json, each: streamed over ssh's stdin into a
#      temp file, its sha256 checked there, then renamed into place. A failed copy leaves the
#      previous model and manifest as they were. The command the device runs is fixed text
#      (DEVICE_SCRIPT below) plus three checked words: the folder, a file name and a sha256.
#
# usage: flash.sh BUNDLE.tar.gz [USER@]HOST [REMOTE_DIR]
#   REMOTE_DIR defaults to models/<bundle name> under the login directory; letters, digits
#              and / . _ + - only
#   SSH_OPTS   extra options for ssh, e.g. "-F ./ssh_config" or "-o Port=2222 -i key"
# The device needs a POSIX sh, mkdir, cat, mv and sha256sum or shasum (BusyBox has them).
# exit codes: 0 flashed; 1 bad bundle or checksum mismatch; 2 usage; 3 device side failed
set -eu
LC_ALL=C
export LC_ALL

usage() { echo "usage: $0 BUNDLE.tar.gz [USER@]HOST [REMOTE_DIR]" >&2; exit 2; }
fail() { echo "flash.sh: $1" >&2; exit "${2:-1}"; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
bundle=$1
host=$2
ssh_opts=${SSH_OPTS:-}

# safe_name NAME: letters, digits and . _ -, starting with a letter or digit
safe_name() {
    case $1 in
        '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
}

# bundle_file PATH: a file a bundle may hold, relative to its top folder
bundle_file() {
    case $1 in
        SHA256SUMS | manifest.json) return 0 ;;
        models/* | golden/*) safe_name "${1#*/}" ;;
        *) return 1 ;;
    esac
}

# bundle_member MEMBER: a line of `tar -t` naming something the bundle may hold
bundle_member() {
    member=${1%/}
    [ "$member" = "$name" ] && return 0
    case $member in
        "$name"/models | "$name"/golden) return 0 ;;
        "$name"/*) bundle_file "${member#"$name"/}" ;;
        *) return 1 ;;
    esac
}

sha256_of() {  # sha256_of FILE: the hex digest, with whichever tool the host has
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum <"$1"
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 <"$1"
    else
        openssl dgst -sha256 <"$1"
    fi | sed 's/^.*= //; s/ .*$//'
}

case $host in
    '' | -*) fail "HOST must not be empty or start with '-': $host" 2 ;;
esac
[ -f "$bundle" ] || fail "no such bundle: $bundle"
name=$(basename "$bundle" .tar.gz)
case $name in
    '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._+-]*)
        fail "bundle file name '$name.tar.gz': expected <model>-<version>-<target>.tar.gz as written by package" ;;
esac
remote_dir=${3:-models/$name}
case $remote_dir in
    '' | -* | *[!A-Za-z0-9._/+-]*) fail "REMOTE_DIR '$remote_dir': use letters, digits and / . _ + - only" 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# 1. what the archive holds, before anything is unpacked
tar -tzf "$bundle" >"$work/members" 2>/dev/null || fail "cannot unpack $bundle"
duplicates=$(sed 's,/$,,' "$work/members" | sort | uniq -d)
[ -z "$duplicates" ] || fail "$bundle holds a member twice ($(echo "$duplicates" | head -n 1)): refusing to flash"
while IFS= read -r member; do
    bundle_member "$member" || fail "unexpected member '$member' in $bundle: refusing to flash"
done <"$work/members"

mkdir "$work/x"
tar -xozf "$bundle" -C "$work/x" || fail "cannot unpack $bundle"
dir="$work/x/$name"
[ -f "$dir/SHA256SUMS" ] && [ -f "$dir/manifest.json" ] || fail "$bundle has no $name/SHA256SUMS or manifest.json"
strange=$(find "$work/x" ! -type f ! -type d -o -perm -4000 -o -perm -2000 -o -name '*[!A-Za-z0-9._+-]*' | head -n 1)
[ -z "$strange" ] || fail "$bundle holds a link, device, setuid file or oddly named file: refusing to flash"

# 2. every file against SHA256SUMS, and no file left out of it
listed=0
while IFS= read -r line; do
    digest=${line%%  *}
    file=${line#*  }
    case $digest in
        *[!0-9a-f]*) fail "checksum mismatch in $bundle: malformed SHA256SUMS line: refusing to flash" ;;
    esac
    [ ${#digest} -eq 64 ] && [ "$line" = "$digest  $file" ] && bundle_file "$file" ||
        fail "checksum mismatch in $bundle: malformed SHA256SUMS line: refusing to flash"
    [ -f "$dir/$file" ] && [ "$(sha256_of "$dir/$file")" = "$digest" ] ||
        fail "checksum mismatch in $bundle ($file): refusing to flash"
    listed=$((listed + 1))
done <"$dir/SHA256SUMS"
[ -z "$(sed 's/^.\{66\}//' "$dir/SHA256SUMS" | sort | uniq -d)" ] ||
    fail "checksum mismatch in $bundle: SHA256SUMS lists a file twice: refusing to flash"
present=$(find "$dir" -type f ! -name SHA256SUMS | wc -l | tr -d ' ')
[ "$present" -eq "$listed" ] || fail "checksum mismatch in $bundle: a file is not listed in SHA256SUMS: refusing to flash"

# 3. the manifest
field() {  # field JQ_FILTER PYTHON_EXPRESSION
    if command -v jq >/dev/null 2>&1; then
        jq -r "$1" "$dir/manifest.json"
    else
        python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print($2)" "$dir/manifest.json"
    fi
}
model_file=$(field '.primary.file' 'm["primary"]["file"]')
model_sha=$(field '.primary.sha256' 'm["primary"]["sha256"]')
in_artifacts=$(field '.primary as $p | [.artifacts[] | select(.file == $p.file and .sha256 == $p.sha256)] | length' \
    'sum(a["file"] == m["primary"]["file"] and a["sha256"] == m["primary"]["sha256"] for a in m["artifacts"])')
target=$(field '.target.name' 'm["target"]["name"]' | tr -cd 'A-Za-z0-9._+-')
case $model_file in
    models/*) safe_name "${model_file#models/}" ;;
    *) false ;;
esac || fail "unexpected primary file in manifest.json: refusing to flash"
[ "$in_artifacts" = 1 ] || fail "manifest.json's primary $model_file is not one of its artifacts: refusing to flash"
[ "$(sha256_of "$dir/$model_file")" = "$model_sha" ] || fail "$model_file does not match manifest.json"
manifest_sha=$(sha256_of "$dir/manifest.json")
model=${model_file#models/}
echo "flashing $model (target $target) to $host:$remote_dir"

# 4. on the device: temp file, sha256 check, rename; model first, then manifest.json.
# Fixed text: "$1" folder, "$2" file name, "$3" expected sha256 arrive as separate checked words.
# shellcheck disable=SC2016  # expanded by the device's sh
DEVICE_SCRIPT='set -eu; d=$1; f=$2; want=$3; part="$d/.$f.part"
mkdir -p "$d"; trap "rm -f \"\$part\"" EXIT
cat >"$part"
if command -v sha256sum >/dev/null 2>&1; then got=$(sha256sum <"$part"); else got=$(shasum -a 256 <"$part"); fi
got=${got%% *}
if [ "$got" != "$want" ]; then echo "flash.sh: $f arrived damaged (sha256 $got)" >&2; exit 3; fi
mv -f "$part" "$d/$f"'

install() {  # install LOCAL_FILE DEVICE_NAME SHA256
    # shellcheck disable=SC2086  # SSH_OPTS is a list of options
    ssh $ssh_opts "$host" "exec sh -c '$DEVICE_SCRIPT' flash.sh '$remote_dir' '$2' '$3'" <"$1" ||
        fail "installing $2 on $host failed; the device keeps its previous files" 3
}
install "$dir/$model_file" "$model" "$model_sha"
install "$dir/manifest.json" manifest.json "$manifest_sha"
echo "flashed $model sha256 $model_sha"
