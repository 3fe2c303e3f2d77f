#!/usr/bin/env bash
# The image test's stand-in for what Debian's official EC2 AMI has and a debootstrapped minbase lacks: the cloud
# kernel with its initramfs, udev, D-Bus, and DHCP on the network interface (systemd-networkd). The image test runs
# it as root in the root file system before provision.sh, as the AMI exists before Packer provisions it. It is not
# part of the AMI build: the base AMI has all of it (and cloud-init, which the test does without: the boot step
# reads the instance metadata itself).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Nothing starts while the image is made.
printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold \
	linux-image-cloud-amd64 initramfs-tools zstd kmod udev dbus

# DHCP on every Ethernet interface, as the AMI's network configuration does; network-online.target waits for it.
install -d -m 0755 /etc/systemd/network
cat >/etc/systemd/network/50-dhcp.network <<'NETWORK'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
NETWORK
systemctl enable systemd-networkd.service systemd-networkd-wait-online.service

# The root file system the test makes (mkfs.ext4 -L chainwarden-root), and no host name of the build machine.
printf 'LABEL=chainwarden-root / ext4 defaults,errors=remount-ro 0 1\n' >/etc/fstab
printf 'localhost\n' >/etc/hostname
