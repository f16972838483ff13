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
