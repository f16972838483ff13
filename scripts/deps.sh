#!/usr/bin/env bash
# Installs what building and testing copystream needs and is missing: Debian packages, the Kafka
# broker's jars (kafka-fetch.sh) and the Python test tools in .venv. Prints nothing and takes well
# under a second when everything is already there, so `make test` can always run it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

# clang with libclang-rt-14-dev (its sanitizer and libFuzzer runtimes) builds `make fuzz`;
# llvm brings llvm-symbolizer, without which sanitizer stacks have no file:line.
packages=(
    build-essential pkg-config clang libclang-rt-14-dev llvm valgrind
    librdkafka-dev libavro-dev libhiredis-dev libopenblas-dev libjansson-dev libmicrohttpd-dev
    libxxhash-dev libinih-dev libcmocka-dev tzdata
    redis-server python3 python3-venv
)

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# Java and Maven may come from elsewhere (an SDK manager, a JDK image); any will do.
command -v dpkg-query >/dev/null || die "not a Debian-like system: install ${packages[*]} by hand"
missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done
command -v java >/dev/null || missing+=(default-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if ((${#missing[@]})); then
    echo "deps: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

scripts/kafka-fetch.sh

# The venv is rebuilt when its interpreter is gone (e.g. a removed pyenv version) and its packages
# are reinstalled whenever tests/requirements.txt changes.
venv=$ROOT/.venv
reqs=tests/requirements.txt
stamp=$venv/.requirements.sha256
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "deps: creating .venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
want=$(sha256sum "$reqs" | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    echo "deps: installing $reqs into .venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
    echo "$want" >"$stamp"
fi
