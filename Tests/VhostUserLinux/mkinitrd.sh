#!/bin/sh
# Builds the initramfs the vhost-user Linux tests boot: busybox, fio with
# its libraries, the virtio/SCSI/net modules of Debian's cloud kernel, and
# /init (guest-init.sh). Prints the initramfs path. Cached by kernel
# version and input checksum under $1 (default .build/vhost-user-linux).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-.build/vhost-user-linux}
kver=$(ls /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sed 's,/boot/vmlinuz-,,' | sort -V | tail -1)
[ -n "$kver" ] || { echo "mkinitrd: no /boot/vmlinuz-*-cloud-amd64 (Debian package linux-image-cloud-amd64)" >&2; exit 2; }
command -v busybox >/dev/null || { echo "mkinitrd: busybox (busybox-static) is not installed" >&2; exit 2; }
sum=$(cat "$0" "$here/guest-init.sh" | sha256sum | cut -c1-12)
out="$cache/initrd-$kver-$sum.cpio.gz"
if [ -s "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/etc"
cp "$(command -v busybox)" "$root/bin/busybox"
for a in $(busybox --list); do [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"; done
# fio and every library it loads
if command -v fio >/dev/null; then
	cp "$(command -v fio)" "$root/bin/fio"
	for lib in $(ldd "$(command -v fio)" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}'); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
	case "$(uname -m)" in x86_64) mkdir -p "$root/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/";; esac
fi
# Modules in load order (dependencies first), as modprobe resolves them.
: > "$root/lib/modules/order"
for m in virtio_pci virtio_blk virtio_scsi sr_mod virtio_rng virtio_net; do
	modprobe -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' | while read -r ko; do
		base=$(basename "$ko")
		grep -qx "$base" "$root/lib/modules/order" && continue
		case "$ko" in
		*.xz) xz -dc "$ko" > "$root/lib/modules/${base%.xz}"; base=${base%.xz};;
		*.zst) zstd -qdc "$ko" > "$root/lib/modules/${base%.zst}"; base=${base%.zst};;
		*) cp "$ko" "$root/lib/modules/$base";;
		esac
		echo "$base" >> "$root/lib/modules/order"
	done
done
cp "$here/guest-init.sh" "$root/init"
chmod 755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
