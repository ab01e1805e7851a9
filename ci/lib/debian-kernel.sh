# Sourced by ci/ scripts: fetch one of Debian's kernel packages without
# installing it, and keep its kernel and a set of its modules.
#
#   debian_kernel PACKAGE CACHE-DIR MODULE...
#
# PACKAGE is a metapackage such as linux-image-amd64. Prints the folder
# CACHE-DIR/RELEASE holding vmlinuz, modules/*.ko and modules/order (load
# order, dependencies first). Reuses the newest cached release of PACKAGE's
# flavour with the same MODULE list; fetches (apt-get download) otherwise.

debian_kernel() {
  local package=$1 cache=$2; shift 2
  local flavour=${package#linux-image-}
  local dir
  dir=$(ls -d "$cache"/*-"$flavour" 2>/dev/null | grep -E "/[0-9.]+-[0-9]+-$flavour\$" \
    | sort -V | tail -n 1 || true)
  # Kept with the modules asked for: another list fetches again.
  if [ -n "$dir" ] && [ -f "$dir/modules/order" ] \
     && [ "$(cat "$dir/modules/wanted" 2>/dev/null)" = "$*" ]; then
    echo "$dir"; return 0
  fi
  mkdir -p "$cache"
  local tmp image release
  tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
  if ! (cd "$tmp" && apt-get download -q "$package" >/dev/null 2>&1); then
    rm -rf "$tmp"
    echo "apt-get download $package failed; run 'apt-get update' (ci/setup does)" >&2
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
          if [ ! -e "$dir.tmp/modules/$base" ]; then
            cp "$line" "$dir.tmp/modules/$base"; order+=("$base")
          fi ;;
        builtin\ *) ;;
        *) rm -rf "$tmp" "$dir.tmp"; echo "cannot resolve module $m: $line" >&2; return 1 ;;
      esac
    done < <(modprobe -d "$tmp/root" -S "$release" --show-depends "$m")
  done
  printf '%s\n' "${order[@]}" > "$dir.tmp/modules/order"
  echo "$*" > "$dir.tmp/modules/wanted"
  rm -rf "$tmp" "$dir"
  mv "$dir.tmp" "$dir"
  echo "$dir"
}
