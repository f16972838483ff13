#!/usr/bin/env bash
# Puts the Kafka broker's jars (and their runtime dependencies) into .cache/kafka-<version>/libs,
# from Maven Central through mvn, so services.sh can run `java -cp 'libs/*' kafka.Kafka`.
# Does nothing when that folder is already complete for the current kafka/pom.xml.
#
# Kafka 3.9.x, not 4.x: see KAFKA_VERSION in lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

pom=$ROOT/scripts/kafka/pom.xml
stamp=$KAFKA_HOME/.complete
want="$KAFKA_VERSION $(sha256sum "$pom" | cut -d' ' -f1)"

[[ -f $stamp && "$(cat "$stamp")" == "$want" ]] && exit 0

command -v mvn >/dev/null || die "mvn not found (scripts/deps.sh installs it)"
mkdir -p "$KAFKA_HOME"

# Two builds may fetch at once; the second waits and then finds the stamp.
exec 9>"$KAFKA_HOME/.lock"
flock 9
[[ -f $stamp && "$(cat "$stamp")" == "$want" ]] && exit 0

echo "kafka-fetch: fetching Kafka $KAFKA_VERSION jars into ${KAFKA_LIBS#"$ROOT"/}"
tmp=$KAFKA_HOME/libs.tmp
rm -rf "$tmp"
# mvn -q still prints colour resets on Debian's Maven 3.8, so its output is kept for failures.
if ! mvn -q -B -f "$pom" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp" >"$KAFKA_HOME/mvn.log" 2>&1 9>&-; then
    cat "$KAFKA_HOME/mvn.log" >&2
    die "mvn could not fetch the Kafka jars"
fi
[[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "mvn did not produce kafka_2.13-$KAFKA_VERSION.jar"
rm -rf "$KAFKA_LIBS"
mv "$tmp" "$KAFKA_LIBS"
echo "$want" >"$stamp"
