#!/bin/sh
# /init of the vhost-user test guest. The kernel command line says what to
# run: vhtest=blk,scsi,rng,net (any subset). Results are lines "VHTEST ..."
# on the console, then the guest powers off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
while read -r m; do insmod "/lib/modules/$m" 2>/dev/null; done < /lib/modules/order
tests=$(sed -n 's/.*vhtest=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
say() { echo "VHTEST $*"; }
wait_for() { i=0; while [ ! -e "$1" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; [ -e "$1" ]; }

for t in $tests; do
	case $t in
	blk)
		wait_for /dev/vda || { say blk FAIL no /dev/vda; continue; }
		size=$(blockdev --getsize64 /dev/vda)
		mib=$(arg fiomib)
		say blk size $size
		say blk fio start
		fio --name=vh --filename=/dev/vda --direct=1 --ioengine=psync --rw=randwrite --bs=4k \
			--size=${mib}M --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 \
			--minimal > /tmp/fio.out 2>&1
		rc=$?
		say blk fio rc $rc error $(grep '^3;' /tmp/fio.out | cut -d';' -f5) at $(cut -d' ' -f1 /proc/uptime)
		[ $rc -eq 0 ] || sed 's/^/VHTEST fio: /' /tmp/fio.out | head -20
		# Discard the last MiB (the host checks it reads as zeroes), then flush.
		blkdiscard -o $((size - 1048576)) -l 1048576 /dev/vda && say blk discard ok || say blk discard FAIL
		sync
		blockdev --flushbufs /dev/vda
		say blk sha256 $(dd if=/dev/vda bs=1M count=$mib 2>/dev/null | sha256sum | cut -d' ' -f1)
		;;
	scsi)
		wait_for /dev/sr0 || { say scsi FAIL no /dev/sr0; continue; }
		say scsi sha256 $(sha256sum /dev/sr0 | cut -d' ' -f1)
		;;
	rng)
		wait_for /dev/hwrng || { say rng FAIL no /dev/hwrng; continue; }
		say rng current $(cat /sys/class/misc/hw_random/rng_current)
		dd if=/dev/hwrng of=/tmp/r1 bs=4096 count=16 2>/dev/null
		dd if=/dev/hwrng of=/tmp/r2 bs=4096 count=16 2>/dev/null
		say rng bytes $(wc -c < /tmp/r1) nonzero $(tr -d '\000' < /tmp/r1 | wc -c) \
			distinct $(od -An -v -tu1 -w1 /tmp/r1 | sort -u | wc -l) \
			same $(cmp -s /tmp/r1 /tmp/r2 && echo yes || echo no)
		;;
	net)
		ip link set lo up
		ip link set eth0 up
		# The negotiated virtio feature bits, bit 0 first.
		say net features $(cat /sys/class/net/eth0/device/features 2>/dev/null || echo none)
		if [ "$(arg guestip)" = dhcp ]; then
			# A real DHCP client: busybox udhcpc against vionet's server.
			printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\nip addr add "$ip/${mask:-$subnet}" dev "$interface"\necho "$ip $router" > /tmp/lease\n' > /tmp/udhcpc.sh
			chmod +x /tmp/udhcpc.sh
			if udhcpc -i eth0 -n -q -t 5 -T 2 -s /tmp/udhcpc.sh > /tmp/udhcpc.out 2>&1 && [ -s /tmp/lease ]; then
				say net dhcp $(cat /tmp/lease)
			else
				say net dhcp FAIL; sed 's/^/VHTEST udhcpc: /' /tmp/udhcpc.out
			fi
			host=$(cut -d' ' -f2 /tmp/lease 2>/dev/null)
		else
			ip addr add "$(arg guestip)/24" dev eth0
			host=$(arg hostip)
		fi
		ping -c 3 -W 2 "$host" > /tmp/ping.out 2>&1 && say net ping ok || { say net ping FAIL; cat /tmp/ping.out; }
		if [ -n "$(arg hostip6)" ]; then
			# local inet6: the kernel's SLAAC from vionet's router advertisement.
			i=0
			while [ $i -lt 100 ] && ! ip -6 route show default | grep -q via; do sleep 0.1; i=$((i+1)); done
			say net slaac $(ip -6 addr show dev eth0 scope global | sed -n 's/.*inet6 \([^ ]*\).*/\1/p' | head -1) \
				$(ip -6 route show default | sed -n 's/.*via \([^ ]*\).*/\1/p' | head -1)
			i=0
			until ping -6 -c 1 -W 1 "$(arg hostip6)" > /tmp/ping6.out 2>&1 || [ $i -ge 5 ]; do i=$((i+1)); done
			ping -6 -c 3 -W 2 "$(arg hostip6)" > /tmp/ping6.out 2>&1 && say net ping6 ok || { say net ping6 FAIL; cat /tmp/ping6.out; }
		fi
		dd if=/dev/urandom of=/tmp/d bs=1M count=$(arg netmib) 2>/dev/null
		say net sha256 $(sha256sum /tmp/d | cut -d' ' -f1)
		nc "$host" 5000 < /tmp/d && say net sent || say net send FAIL
		rm -f /tmp/d
		;;
	bench)
		# bench/vhost-user.py: fio jobs on /dev/vda, JSON between markers.
		wait_for /dev/vda || { say bench FAIL no /dev/vda; continue; }
		secs=$(arg benchsecs)
		for job in randread4k-qd1:randread:4k:1 randread4k-qd32:randread:4k:32 write64k-seq:write:64k:1; do
			IFS=: read -r name rw bs qd <<JOB
$job
JOB
			echo "VHBENCH-BEGIN $name"
			fio --name=$name --filename=/dev/vda --direct=1 --ioengine=libaio --rw=$rw --bs=$bs \
				--iodepth=$qd --size=200M --runtime=$secs --time_based --ramp_time=1 \
				--output-format=json 2>&1
			echo "VHBENCH-END $name"
		done
		;;
	esac
done
say done
sync
poweroff -f
