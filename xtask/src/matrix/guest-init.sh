#!/bin/sh
# PID 1 of a kernel-matrix guest (see xtask/src/matrix/): runs the smoke test on the booted kernel
# and prints every result between `=== BEGIN name` / `=== END name` markers on the console, where
# `cargo xtask matrix` reads and checks them. Everything stays on the guest's own loopback.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
ip link set lo up

# The agent runs as an unprivileged uid with exactly CAP_BPF + CAP_PERFMON, as users deploy it.
AS_AGENT="/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all,+bpf,+perfmon --ambient-caps=-all,+bpf,+perfmon"
READY="Tracing TCP state changes"

section() {
    echo "=== BEGIN $1"
    cat "$2"
    echo "=== END $1"
}

# Waits (at most 30 s) until file $1 holds $2, or process $3 has exited; fails then.
await() {
    i=0
    until grep -q "$2" "$1" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null || return 1
        i=$((i + 1))
        [ "$i" -gt 300 ] && return 1
        sleep 0.1
    done
}

# Waits (at most 30 s) until a TCP socket listens on hex port $1 (IPv4 or IPv6).
await_listen() {
    i=0
    until grep -q ":$1 0\{8,32\}:0000 0A" /proc/net/tcp /proc/net/tcp6; do
        i=$((i + 1))
        [ "$i" -gt 300 ] && return 1
        sleep 0.1
    done
}

# Stops agent $1 with SIGINT and prints its exit status as section $2.
stop() {
    kill -INT "$1"
    wait "$1"
    echo "$?" > "/tmp/$2.status"
    section "$2.status" "/tmp/$2.status"
}

echo "=== KERNEL $(uname -r)"
# A listener older than the agents (and the classic tracepoint's record): the OTLP agent finds
# it at start, and gives its owner to the socket it accepts later.
nc -l -p 8081 > /dev/null &
EARLY=$!
await_listen 1F91 || echo "=== EARLY LISTENER NOT LISTENING"

echo 1 > /sys/kernel/tracing/events/sock/inet_sock_set_state/enable

/rotel-agent start --otlp-grpc-endpoint 127.0.0.1:4317 --otlp-http-endpoint 127.0.0.1:4318 \
    --exporter blackhole --debug-log traces --debug-log-verbosity detailed \
    > /tmp/rotel.log 2>&1 &
ROTEL=$!
await_listen 10DD || echo "=== ROTEL NOT LISTENING"

$AS_AGENT /tcpstates -x > /tmp/text 2> /tmp/text.err &
TEXT=$!
$AS_AGENT /tcpstates --json > /tmp/json 2> /tmp/json.err &
JSON=$!
$AS_AGENT /tcpstates --otlp http://127.0.0.1:4317 -q > /tmp/otlp 2> /tmp/otlp.err &
OTLP=$!
STARTED=yes
for agent in "$TEXT text" "$JSON json" "$OTLP otlp"; do
    set -- $agent
    await "/tmp/$2.err" "$READY" "$1" || STARTED=no
done

if [ "$STARTED" = yes ]; then
    nc -l -p 8080 > /tmp/received &
    SERVER=$!
    await_listen 1F90
    echo hello | nc 127.0.0.1 8080 &
    CLIENT=$!
    wait "$CLIENT"
    wait "$SERVER"
    echo early | nc 127.0.0.1 8081 &
    wait "$!"
    wait "$EARLY"
    nc 127.0.0.1 9 &
    REFUSED=$!
    wait "$REFUSED"
    echo "server $SERVER" > /tmp/pids
    echo "client $CLIENT" >> /tmp/pids
    echo "refused $REFUSED" >> /tmp/pids
    echo "early $EARLY" >> /tmp/pids
    section pids /tmp/pids
    # Every agent has seen the refused connect's CLOSE once it printed it: the last event.
    await /tmp/text "SYN_SENT    -> CLOSE" "$TEXT"
    await /tmp/json '"rport":9,.*"newstate":"CLOSE"' "$JSON"
fi

stop "$TEXT" text
stop "$JSON" json
stop "$OTLP" otlp
# The OTLP agent flushed every span before it exited; rotel prints them as they arrive.
[ "$STARTED" = yes ] && await /tmp/rotel.log "tcp connect 127.0.0.1:9" "$ROTEL"
kill "$ROTEL"
wait "$ROTEL"
echo 0 > /sys/kernel/tracing/events/sock/inet_sock_set_state/enable

section text /tmp/text
section text.err /tmp/text.err
section json /tmp/json
section json.err /tmp/json.err
section otlp.err /tmp/otlp.err
section rotel /tmp/rotel.log
section classic /sys/kernel/tracing/trace
echo "=== DONE"
poweroff -f
