#!/usr/bin/env bash
# Runs a throwaway single-node Kafka broker (KRaft, from the jars kafka-fetch.sh put in .cache)
# and a Redis on free loopback ports, for the integration tests, the demo and the bench.
#
#   services.sh start [--dir DIR] [--redis-aof] [--redis-auth]   fresh, empty Kafka and Redis
#   services.sh start-redis [--dir DIR] [--redis-aof] [--redis-auth]   only a fresh Redis
#   services.sh stop [--dir DIR]                  stop what runs there, keeping the logs
#   services.sh status [--dir DIR]                exit status 0 when all that was started runs
#   services.sh restart-kafka [--dir DIR]         stop and start again, same ports and data
#   services.sh restart-redis [--dir DIR]         likewise (data survives only with --redis-aof)
#
# DIR (default run/) holds everything of one pair: configs, data, pid files, kafka.log, redis.log
# and services.env, which bash can source:
#   KAFKA_BOOTSTRAP=127.0.0.1:P  REDIS_HOST=127.0.0.1  REDIS_PORT=R  SERVICES_DIR=DIR
#   KAFKA_SASL_BOOTSTRAP=127.0.0.1:S  KAFKA_SASL_MECHANISM=PLAIN
#   KAFKA_SASL_USER=copystream  KAFKA_SASL_PASSWORD=<random>
# and, with --redis-auth (Redis then refuses clients that do not authenticate):
#   REDIS_PASSWORD=<random>        the default user's password (requirepass)
#   REDIS_ACL_USER=copystream  REDIS_ACL_PASSWORD=<random>   an ACL user with the commands
#                                  copystream needs (docs/SECURITY.md), on all keys
# The broker always has the SASL_PLAINTEXT listener with SASL/PLAIN beside the PLAINTEXT one:
# it costs one more acceptor thread and no measurable start-up time, and a second broker only
# for the SASL tests would cost a JVM (~0.5 GB) and seconds on every run. Passwords are new
# random strings at every start, so a test can search output for them without false matches.
# start-redis starts a Redis alone, e.g. a second one with --redis-auth beside a pair.
# Pairs in different DIRs run side by side without sharing anything.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

usage() {
    sed -n 's/^#   \(services.sh \)/usage: \1/p' "$0" >&2
    exit 2
}

cmd=${1:-}
(($#)) && shift
dir=$ROOT/run
aof=no
redis_auth=no
while (($#)); do
    case $1 in
        --dir) (($# >= 2)) || usage; dir=$2; shift 2 ;;
        --dir=*) dir=${1#--dir=}; shift ;;
        --redis-aof) aof=yes; shift ;;
        --redis-auth) redis_auth=yes; shift ;;
        *) usage ;;
    esac
done
case $cmd in
    start | start-redis | stop | status | restart-kafka | restart-redis) ;;
    *) usage ;;
esac
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# A zombie counts as gone: the servers are orphans once services.sh exits, and pid 1 may reap
# them only seconds later.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# A pid file is trusted only while its process is alive and has the expected name, so a stale
# file whose pid was reused by something else is never signalled.
pid_of() {
    local name=$1 comm=$2 pid
    pid=$(cat "$dir/$name.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$comm" ]] || return 1
    alive "$pid" || return 1
    echo "$pid"
}
kafka_pid() { pid_of kafka java; }
redis_pid() { pid_of redis redis-server; }

stop_one() {
    local name=$1 pid i
    if pid=$("${name}_pid"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "services: $name (pid $pid) ignored TERM for 15 s, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            while alive "$pid"; do sleep 0.1; done
        fi
    fi
    rm -f "$dir/$name.pid"
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Random ports below Linux's ephemeral range (32768+), so that no client connection of the tests
# can be holding one of them by the time the servers bind.
free_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
ports = []
while len(ports) < int(sys.argv[1]):
    port = random.randint(20000, 32000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    if port not in ports:
        ports.append(port)
print(*ports)
PY
}

# What kafka.tools.StorageTool random-uuid prints, without starting a JVM for it.
kafka_cluster_id() {
    python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

# A random password: hex, so that it needs no quoting in a properties file, JAAS or redis.conf.
new_password() {
    od -An -N12 -tx1 /dev/urandom | tr -d ' \n'
}

# The broker's properties; $dir/services.env.new gets its lines. With SASL/PLAIN on listener
# SASL the users are those of the JAAS line: user_<name>="<password>". The controller and
# inter-broker traffic stay on PLAINTEXT, so the broker itself needs no credentials.
write_kafka_config() {
    local kport=$1 cport=$2 sport=$3 sasl_user=copystream sasl_password
    sasl_password=$(new_password)
    mkdir -p "$dir/kafka/data"
    # Small segments and short retention keep a long bench from filling the disk; a low minimum
    # session timeout lets failover tests use short consumer session timeouts.
    cat >"$dir/kafka/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$kport,SASL://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$kport,SASL://127.0.0.1:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
listener.name.sasl.sasl.enabled.mechanisms=PLAIN
listener.name.sasl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$sasl_user="$sasl_password";
log.dirs=$dir/kafka/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=4
log.segment.bytes=16777216
log.retention.ms=3600000
log.retention.check.interval.ms=60000
log.cleaner.dedupe.buffer.size=16777216
EOF
    cat >"$dir/kafka/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$dir/kafka.log
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
    {
        printf 'KAFKA_BOOTSTRAP=%q\n' "127.0.0.1:$kport"
        printf 'KAFKA_SASL_BOOTSTRAP=%q\n' "127.0.0.1:$sport"
        printf 'KAFKA_SASL_MECHANISM=PLAIN\n'
        printf 'KAFKA_SASL_USER=%q\n' "$sasl_user"
        printf 'KAFKA_SASL_PASSWORD=%q\n' "$sasl_password"
    } >>"$dir/services.env.new"
}

# Redis' config; $dir/services.env.new gets its lines. With --redis-auth the default user needs
# a password (requirepass) and there is an ACL user too, so clients of either kind can be tried;
# the ACL user gets only the command categories docs/SECURITY.md tells operators to grant, so the
# tests that run as it check that advice.
write_redis_config() {
    local rport=$1 password acl_user=copystream acl_password
    mkdir -p "$dir/redis"
    # Without AOF, a restart loses everything, which is what "Redis lost its data" tests need.
    cat >"$dir/redis/redis.conf" <<EOF
bind 127.0.0.1
port $rport
daemonize no
save ""
appendonly $aof
appendfsync always
dir $dir/redis
logfile $dir/redis.log
EOF
    {
        printf 'REDIS_HOST=%q\n' 127.0.0.1
        printf 'REDIS_PORT=%q\n' "$rport"
    } >>"$dir/services.env.new"
    [[ $redis_auth == yes ]] || return 0
    password=$(new_password)
    acl_password=$(new_password)
    cat >>"$dir/redis/redis.conf" <<EOF
requirepass $password
user $acl_user on >$acl_password ~* +@read +@write +@scripting +select -@dangerous
EOF
    {
        printf 'REDIS_PASSWORD=%q\n' "$password"
        printf 'REDIS_ACL_USER=%q\n' "$acl_user"
        printf 'REDIS_ACL_PASSWORD=%q\n' "$acl_password"
    } >>"$dir/services.env.new"
}

# An array, not a function: `function &` would fork a shell and the pid file would name it.
kafka_java=(java -Xms256m -Xmx768m -Djava.awt.headless=true
    -Dlog4j.configuration="file:$dir/kafka/log4j.properties" -cp "$KAFKA_LIBS/*")

# Output of the JVM itself (a crash, a bad flag) lands in kafka.log next to log4j's lines.
launch_kafka() {
    "${kafka_java[@]}" kafka.Kafka "$dir/kafka/server.properties" </dev/null >>"$dir/kafka.log" 2>&1 &
    echo $! >"$dir/kafka.pid"
}

launch_redis() {
    redis-server "$dir/redis/redis.conf" </dev/null >>"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
}

# Ready means "Kafka Server started" was logged after byte $1 of kafka.log (so a restart is not
# fooled by the previous start's line) and the listener accepts connections.
wait_kafka() {
    local from=$1 port=$2 deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        kafka_pid >/dev/null || return 1
        if tail -c "+$((from + 1))" "$dir/kafka.log" | grep -q 'Kafka Server started' &&
            port_open "$port"; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# $2: the default user's password, if Redis wants one. REDISCLI_AUTH keeps it off the command line.
wait_redis() {
    local port=$1 password=${2:-} deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        redis_pid >/dev/null || return 1
        [[ "$(REDISCLI_AUTH=$password redis-cli --no-auth-warning -h 127.0.0.1 -p "$port" ping \
            2>/dev/null)" == PONG ]] && return 0
        sleep 0.1
    done
    return 1
}

show_failure() {
    local name=$1
    echo "services: $name did not come up in $dir; last lines of $name.log:" >&2
    tail -n 30 "$dir/$name.log" >&2 || true
}

log_size() {
    stat -c %s "$dir/$1.log" 2>/dev/null || echo 0
}

# The value of NAME in services.env (or, with $2 = .new, in the one being written).
env_value() {
    local line
    line=$(grep "^$1=" "$dir/services.env${2:-}" 2>/dev/null) || return 1
    echo "${line#*=}"
}

env_port() {
    local value
    value=$(env_value "$1") || die "no services were started in $dir"
    echo "${value##*:}"
}

# $1 = kafka: the broker and Redis; redis: Redis alone.
start() {
    local what=$1 attempt kport cport sport rport failed
    if kafka_pid >/dev/null || redis_pid >/dev/null; then
        die "services already running in $dir (services.sh stop --dir $dir)"
    fi
    [[ $what == redis || -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] ||
        "$ROOT/scripts/kafka-fetch.sh"
    rm -f "$dir/services.env"
    # Another process may take a port between our check and the servers' bind: try new ports.
    for attempt in 1 2 3; do
        read -r rport kport cport sport < <(free_ports 4)
        rm -rf "$dir/kafka" "$dir/redis"
        : >"$dir/redis.log"
        : >"$dir/services.env.new"
        write_redis_config "$rport"
        if [[ $what == kafka ]]; then
            : >"$dir/kafka.log"
            write_kafka_config "$kport" "$cport" "$sport"
            "${kafka_java[@]}" kafka.tools.StorageTool format -t "$(kafka_cluster_id)" \
                -c "$dir/kafka/server.properties" </dev/null >>"$dir/kafka.log" 2>&1 ||
                { show_failure kafka; return 1; }
            launch_kafka
        fi
        printf 'SERVICES_DIR=%q\n' "$dir" >>"$dir/services.env.new"
        launch_redis
        if ! wait_redis "$rport" "$(env_value REDIS_PASSWORD .new)"; then
            failed=redis
        elif [[ $what == kafka ]] && ! wait_kafka 0 "$kport"; then
            failed=kafka
        else
            mv "$dir/services.env.new" "$dir/services.env"
            return 0
        fi
        if ((attempt == 3)) || ! grep -qs 'Address already in use' "$dir/$failed.log"; then
            show_failure "$failed"
            stop_one kafka
            stop_one redis
            return 1
        fi
        stop_one kafka
        stop_one redis
    done
}

restart_kafka() {
    local port from
    port=$(env_port KAFKA_BOOTSTRAP)
    stop_one kafka
    from=$(log_size kafka)
    launch_kafka
    wait_kafka "$from" "$port" || { show_failure kafka; stop_one kafka; return 1; }
}

restart_redis() {
    local port
    port=$(env_port REDIS_PORT)
    stop_one redis
    launch_redis
    wait_redis "$port" "$(env_value REDIS_PASSWORD)" || { show_failure redis; stop_one redis; return 1; }
}

# Only what was started counts: a folder of start-redis has no broker to miss.
status() {
    local name pid rc=0
    for name in kafka redis; do
        [[ -d $dir/$name ]] || continue
        if pid=$("${name}_pid"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: stopped"
            rc=1
        fi
    done
    ((rc == 0)) && cat "$dir/services.env"
    return $rc
}

case $cmd in
    start) start kafka ;;
    start-redis) start redis ;;
    stop) stop_one kafka; stop_one redis ;;
    status) status ;;
    restart-kafka) restart_kafka ;;
    restart-redis) restart_redis ;;
esac
