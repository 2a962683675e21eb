#!/bin/sh
# criu --action-script: at setup-namespaces (namespaces created, tasks not yet restored) bring lo up
# in the restored (empty) netns and, if HOOK_VETH/HOOK_PEERNS/HOOK_ADDR are set, plumb a veth into it.
[ "$CRTOOLS_SCRIPT_ACTION" = setup-namespaces ] || exit 0
P=$CRTOOLS_INIT_PID
nsenter -t "$P" -n ip link set lo up || exit 1
if [ -n "${HOOK_VETH:-}" ]; then
  ip link add "$HOOK_VETH" netns "$HOOK_PEERNS" type veth peer name eth0 netns /proc/$P/ns/net || exit 1
  nsenter -t "$P" -n sh -c "ip addr add $HOOK_ADDR dev eth0 && ip link set eth0 up" || exit 1
  ip -n "$HOOK_PEERNS" link set "$HOOK_VETH" up
fi
exit 0
