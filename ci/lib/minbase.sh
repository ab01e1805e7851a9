# ci/lib/minbase.sh: Debian bookworm minbase, the realistic image the
# benches use, made once with debootstrap into ~/.cache/husk/bench/.
#   minbase_tar      prints the tree's tarball (made once)
#   minbase_layout   prints an OCI layout of it, tag "latest" (made once)

minbase_bench_dir() {
  echo "${HUSK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/husk}/bench"
}

minbase_tar() {
  local bench tar tmp
  bench=$(minbase_bench_dir)
  tar=$bench/debian-minbase.tar
  if [ ! -f "$tar" ]; then
    echo "making a Debian bookworm minbase tree (once, a few minutes)" >&2
    mkdir -p "$bench"
    tmp=$(mktemp -d "$bench/tmp.XXXXXX")
    debootstrap --variant=minbase bookworm "$tmp/rootfs" http://deb.debian.org/debian >"$tmp/debootstrap.log" 2>&1 \
      || { tail "$tmp/debootstrap.log" >&2; rm -rf "$tmp"; return 1; }
    # As Debian's own container images: no package cache, no apt lists.
    rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
    tar -C "$tmp/rootfs" --exclude=./dev/* -cf "$tmp/minbase.tar" .
    mv "$tmp/minbase.tar" "$tar"
    rm -rf "$tmp"
  fi
  echo "$tar"
}

minbase_layout() {
  local bench layout tar tmp
  bench=$(minbase_bench_dir)
  layout=$bench/debian-minbase
  if [ ! -f "$layout/index.json" ]; then
    tar=$(minbase_tar) || return 1
    tmp=$(mktemp -d "$bench/tmp.XXXXXX")
    umoci init --layout "$tmp/image"
    umoci new --image "$tmp/image:latest"
    umoci unpack --image "$tmp/image:latest" "$tmp/bundle" >/dev/null
    tar -C "$tmp/bundle/rootfs" -xf "$tar"
    umoci repack --image "$tmp/image:latest" "$tmp/bundle" >/dev/null
    umoci config --image "$tmp/image:latest" --config.cmd /bin/bash >/dev/null
    umoci gc --layout "$tmp/image"
    rm -rf "$layout"
    mv "$tmp/image" "$layout"
    rm -rf "$tmp"
  fi
  echo "$layout"
}
