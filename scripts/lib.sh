# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Sourced by the scripts beside it: where the project and the Kafka broker's jars are, and die().

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The broker the tests, demo and bench run against. The 3.9 line, because copystream uses
# Debian 12's librdkafka 2.0.2, which works with it (classic consumer groups, old ApiVersions);
# Kafka 4.0 removed old protocol versions (KIP-896) and is no safe pairing for a client that old.
# kafka/pom.xml names the same version.
KAFKA_VERSION=3.9.2
KAFKA_HOME=$ROOT/.cache/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# Debian's OpenBLAS 0.3.21 does not recognise some CPUs (virtual ones that report no model,
# like these machines) and falls back to its oldest kernels, several times slower than the
# CPU allows; the model's steps run ~25 % faster with the right ones. OpenBLAS reads
# OPENBLAS_CORETYPE when it is loaded, so it has to be in the environment of the process.
# This picks the kernels the CPU supports, unless the caller chose already.
openblas_env() {
    if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
        if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
            export OPENBLAS_CORETYPE=SkylakeX
        elif grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
            export OPENBLAS_CORETYPE=Haswell
        fi
    fi
}

# Points copystream's configuration at the broker and Redis that services.sh started in DIR,
# with the HTTP server off and quiet logs: what the demo and the benchmarks run against.
use_services() {
    # shellcheck disable=SC1091
    . "$1/services.env"
    export COPYSTREAM_KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP
    export COPYSTREAM_REDIS_HOST=$REDIS_HOST COPYSTREAM_REDIS_PORT=$REDIS_PORT
    export COPYSTREAM_HTTP_PORT=0 COPYSTREAM_LOG_LEVEL=warn
    # services.sh start --redis-auth: Redis wants the default user's password.
    if [ -n "${REDIS_PASSWORD:-}" ]; then export COPYSTREAM_REDIS_PASSWORD=$REDIS_PASSWORD; fi
}
