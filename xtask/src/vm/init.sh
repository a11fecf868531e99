#!/bin/busybox sh
# cwatch's VM init, first stage (pid 1 in the initramfs, Debian's static
# busybox): loads the modules listed in /modules (9p over virtio, overlayfs),
# mounts this machine's / read-only over 9p under an overlay whose writes stay
# in the guest's memory, and switches to it, running the second stage
# (guest.sh) from there. The kernel command line hands over, as environment:
#   cwatch_stage2  the second stage's path on the host
# Lines starting with "cwatch-vm:" are read by xtask (xtask/src/vm/qemu.rs).
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

fail() {
    echo "cwatch-vm: failed: $*"
    echo o > /proc/sysrq-trigger
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "cwatch-vm: init"
while read -r module; do
    case "$module" in
    *.ko) insmod "$module" || fail "insmod $module" ;;
    *.ko.xz) xzcat "$module" > /module.ko && insmod /module.ko || fail "insmod $module" ;;
    *) fail "cannot load $module (only .ko and .ko.xz)" ;;
    esac
done < /modules
rm -f /module.ko
mkdir -p /lower /rw
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose cwatchroot /lower \
    || fail "mounting the host's files over 9p"
mount -t tmpfs -o mode=0755 tmpfs /rw && mkdir /rw/upper /rw/work || fail "tmpfs for the overlay"
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "overlay over the host's files"
[ -f "/newroot$cwatch_stage2" ] || fail "no second stage at $cwatch_stage2"
for d in proc sys dev; do
    mount --move "/$d" "/newroot/$d" || fail "moving /$d"
done
exec switch_root /newroot /bin/sh "$cwatch_stage2"
fail "switch_root"
