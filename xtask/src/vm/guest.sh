#!/bin/sh
# cwatch's VM init, second stage: pid 1 on a view of this machine's files (9p
# under an overlay: writes stay in the guest), with the guest's own /proc,
# /sys and /dev. Gives the kernel tests what they have on a host: an empty
# /run (no host netns or sockets), bpffs, tracefs,
# debugfs, cgroup2, the booted kernel's modules at /lib/modules (sock_diag
# and others load on demand), loopback up, the host's fd limit and port
# range; then runs the kernel test binary and powers off.
# From the kernel command line: cwatch_env, the file (written by xtask) that
# exports the tests' environment and sets their arguments.
# Lines starting with "cwatch-vm:" are read by xtask (xtask/src/vm/qemu.rs).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

fail() {
    echo "cwatch-vm: failed: $*"
    echo o > /proc/sysrq-trigger
    sleep 60
}

mountfs() { # type target
    mkdir -p "$2" 2>/dev/null
    mount -t "$1" "$1" "$2" || fail "mount -t $1 $2"
}
mount -t tmpfs -o mode=0755 tmpfs /run || fail "tmpfs on /run"
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm || fail "tmpfs on /dev/shm"
mountfs devpts /dev/pts
mountfs bpf /sys/fs/bpf
mountfs tracefs /sys/kernel/tracing
mountfs debugfs /sys/kernel/debug
mountfs cgroup2 /sys/fs/cgroup
. "$cwatch_env" || fail "reading $cwatch_env"
mkdir -p /lib/modules && mount --bind "$CWATCH_VM_MODULES" /lib/modules || fail "binding the guest kernel's modules"
ip link set lo up || fail "loopback up"
hostname cwatch-vm
sysctl -q -w net.ipv4.ip_local_port_range="$CWATCH_VM_PORT_RANGE" || fail "port range"
ulimit -Hn "$CWATCH_VM_NOFILE" && ulimit -Sn "$CWATCH_VM_NOFILE" || fail "ulimit -n $CWATCH_VM_NOFILE"
# Warnings and worse on the console; the rest stays in dmesg.
dmesg -n 5
cd "$CWATCH_VM_CWD" || fail "cd $CWATCH_VM_CWD"
echo "cwatch-vm: tests start ($(uname -r), $(nproc) CPUs)"
"$CWATCH_VM_TEST" "$@" < /dev/null
echo "cwatch-vm: exit $?"
sync
echo o > /proc/sysrq-trigger
sleep 60
