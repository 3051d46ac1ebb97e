#!/bin/sh
# Renders this pod's node.toml from the shared template: run by the `render-config` initContainer of the `broker`
# StatefulSet (k8s/broker-statefulset.yaml), and by tests/tests/k8s_manifests.rs with a stub `getent`, so the test
# checks exactly what the pods run.
#
#   render-node.sh TEMPLATE OUT
#
# Why: `fleetgate node` reads its name only from `[node] name`, and `[cluster] advertise` and `peers` are socket
# addresses (IP:port), not DNS names; a pod's IP is known only once it runs. So, in the template:
#   @POD_NAME@  -> $POD_NAME (broker-0, broker-1, ...: the cluster ring key, equal to the LB's SRV backend name)
#   @POD_HOST@  -> $POD_IP, in brackets when it is IPv6
#   the line `peers = []` -> the cluster addresses of the other brokers that resolve now
#
# Peers: `<statefulset>-<i>.$BROKER_DOMAIN` for i = 0, 1, ... (StatefulSet pods are numbered without gaps when
# they start in order, which the StatefulSet's OrderedReady policy guarantees). Lower ordinals than ours exist
# already, so they get a few attempts; the scan stops at the first higher ordinal that does not resolve. A node
# only needs some of its peers: a peer that starts later dials us, and we learn it from that.
set -eu

template=$1
out=$2
: "${POD_NAME:?POD_NAME (the pod name, from the downward API) is required}"
: "${POD_IP:?POD_IP (the pod IP, from the downward API) is required}"
: "${BROKER_DOMAIN:?BROKER_DOMAIN (the headless Service domain, e.g. broker.fleetgate.svc.cluster.local) is required}"
cluster_port=${CLUSTER_PORT:-7000}
# Attempts (one second apart) for a lower-ordinal peer that does not resolve yet.
attempts=${PEER_RESOLVE_ATTEMPTS:-10}
# Upper bound on the ordinals scanned: far above any broker cluster this runs.
max_ordinal=64

case $POD_NAME in
    *[!a-z0-9-]* | -* | *-) echo "render-node.sh: unexpected pod name '$POD_NAME'" >&2; exit 1 ;;
esac
case $POD_IP in
    *[!0-9a-fA-F.:]*) echo "render-node.sh: unexpected pod IP '$POD_IP'" >&2; exit 1 ;;
    *:*) pod_host="[$POD_IP]" ;;
    *) pod_host=$POD_IP ;;
esac
set_name=${POD_NAME%-*}
own_ordinal=${POD_NAME##*-}
case $own_ordinal in
    '' | *[!0-9]*) echo "render-node.sh: '$POD_NAME' is not a StatefulSet pod name (<name>-<ordinal>)" >&2; exit 1 ;;
esac

# Prints the first address `getent hosts` gives for $1 (as host part of a socket address), or fails.
resolve() {
    answer=$(getent hosts "$1" 2>/dev/null) || return 1
    set -- $answer
    [ $# -ge 1 ] || return 1
    case $1 in
        *:*) echo "[$1]" ;;
        *) echo "$1" ;;
    esac
}

peers=""
i=0
while [ "$i" -le "$max_ordinal" ]; do
    if [ "$i" -ne "$own_ordinal" ]; then
        peer="$set_name-$i"
        tries=1
        [ "$i" -lt "$own_ordinal" ] && tries=$attempts
        host=""
        while [ "$tries" -gt 0 ]; do
            if host=$(resolve "$peer.$BROKER_DOMAIN"); then
                break
            fi
            host=""
            tries=$((tries - 1))
            [ "$tries" -gt 0 ] && sleep 1
        done
        if [ -n "$host" ]; then
            peers="$peers${peers:+, }{ name = \"$peer\", addr = \"$host:$cluster_port\" }"
        elif [ "$i" -gt "$own_ordinal" ]; then
            break
        else
            echo "render-node.sh: peer $peer.$BROKER_DOMAIN does not resolve; it will dial us when it starts" >&2
        fi
    fi
    i=$((i + 1))
done

sed -e "s/@POD_NAME@/$POD_NAME/g" \
    -e "s/@POD_HOST@/$pod_host/g" \
    -e "s/^peers = \[\].*\$/peers = [$peers]/" \
    "$template" > "$out.tmp"
mv "$out.tmp" "$out"
echo "render-node.sh: wrote $out for $POD_NAME (advertise $pod_host:$cluster_port, peers: ${peers:-none})"
