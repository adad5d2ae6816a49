#!/bin/sh
# A stand-in for apt-get: "update" fills the list directory, "install" downloads into the
# archive cache once and reuses it afterwards; what it did is logged in the image.
set -e
cmd=$1; shift
mkdir -p /var/log/pkg /usr/share/pkg
case $cmd in
update) echo "index" > /var/lib/pkg/lists; echo "update" >> /var/log/pkg/log ;;
install)
  test -f /var/lib/pkg/lists || { echo "no package lists: run update first" >&2; exit 1; }
  for p in "$@"; do
    if [ -f /var/cache/pkg/$p.deb ]; then echo "reuse $p" >> /var/log/pkg/log
    else echo "package $p" > /var/cache/pkg/$p.deb; echo "download $p" >> /var/log/pkg/log; fi
    cp /var/cache/pkg/$p.deb /usr/share/pkg/$p
  done ;;
esac
