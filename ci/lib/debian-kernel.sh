# Sourced by ci/ scripts: fetch one of Debian's kernel packages without
# installing it, and keep its kernel and a set of its modules.
#
#   debian_kernel PACKAGE[/SUITE] CACHE-DIR MODULE...
#
# PACKAGE is a metapackage such as linux-image-amd64; SUITE, where given,
# the suite to take it from (bookworm-backports) rather than the default.
# Prints the folder CACHE-DIR/RELEASE holding vmlinuz, modules/*.ko
# (uncompressed, as busybox's insmod takes them) and modules/order (load
# order, dependencies first). Reuses the newest cached release of
# PACKAGE's flavour from the same suite with the same MODULE list; fetches
# (apt-get download) otherwise.

debian_kernel() {
  local spec=$1 cache=$2; shift 2
  local package=${spec%%/*} suite=
  [ "$package" = "$spec" ] || suite=${spec#*/}
  local flavour=${package#linux-image-}
  local dir
  # Releases are named 6.1.0-57-amd64 (stable) or 6.12.95+deb12-amd64
  # (backports): kept from the suite asked for only.
  dir=$(for d in "$cache"/*-"$flavour"; do
          [ "$(cat "$d/modules/suite" 2>/dev/null)" = "$suite" ] && echo "$d"
        done 2>/dev/null | grep -E "/[0-9][0-9.]*[-+][0-9a-z]+-$flavour\$" | sort -V | tail -n 1 || true)
  # Kept with the modules asked for: another list fetches again.
  if [ -n "$dir" ] && [ -f "$dir/modules/order" ] \
     && [ "$(cat "$dir/modules/wanted" 2>/dev/null)" = "$*" ]; then
    echo "$dir"; return 0
  fi
  mkdir -p "$cache"
  local tmp image release
  tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
  if ! (cd "$tmp" && apt-get download -q "$spec" >/dev/null 2>&1); then
    rm -rf "$tmp"
    echo "apt-get download $spec failed; run 'apt-get update' (ci/setup does)" >&2
    return 1
  fi
  image=$(dpkg-deb -f "$tmp/${package}"_*.deb Depends | grep -o 'linux-image-[0-9][^ ,]*')
  if ! (cd "$tmp" && apt-get download -q "$image" >/dev/null 2>&1); then
    rm -rf "$tmp"; echo "apt-get download $image failed" >&2; return 1
  fi
  dpkg-deb -x "$tmp/$image"_*.deb "$tmp/root"
  release=${image#linux-image-}
  depmod -b "$tmp/root" "$release"
  dir="$cache/$release"
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp/modules"
  cp "$tmp/root/boot/vmlinuz-$release" "$dir.tmp/vmlinuz"
  local m line base order=()
  for m in "$@"; do
    while read -r line; do
      case "$line" in
        insmod\ *)
          line=${line#insmod }; line=${line%% *}; base=$(basename "$line")
          case "$base" in
            *.ko.xz) base=${base%.xz}
              [ -e "$dir.tmp/modules/$base" ] || { xz -dc "$line" > "$dir.tmp/modules/$base"; order+=("$base"); } ;;
            *) [ -e "$dir.tmp/modules/$base" ] || { cp "$line" "$dir.tmp/modules/$base"; order+=("$base"); } ;;
          esac ;;
        builtin\ *) ;;
        *) rm -rf "$tmp" "$dir.tmp"; echo "cannot resolve module $m: $line" >&2; return 1 ;;
      esac
    done < <(modprobe -d "$tmp/root" -S "$release" --show-depends "$m")
  done
  printf '%s\n' "${order[@]}" > "$dir.tmp/modules/order"
  echo "$*" > "$dir.tmp/modules/wanted"
  echo "$suite" > "$dir.tmp/modules/suite"
  rm -rf "$tmp" "$dir"
  mv "$dir.tmp" "$dir"
  echo "$dir"
}
