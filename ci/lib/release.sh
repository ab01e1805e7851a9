# Sourced: husk's release build. Its programs (husk, husk-runtime, the
# containerd shim, husk-pull, the benches) are glibc static-pie
# executables: still position-independent, so still randomised, with no
# dynamic loader to map libc and libgcc_s and resolve their symbols at
# every start. In the KVM test bed that took 8 ms of a 21 ms
# `husk --version` and 12 ms of an 86 ms warm `husk run` (README,
# "Start-up"); on hardware it is about a millisecond. The target is named
# so that cargo builds proc macros and build scripts, which must stay
# dynamic, as usual; the guest init is built the same way, stripped.
#
#   build_release CARGO_ARGS...   cargo build --release of CARGO_ARGS
#   build_init                    the guest init, where husk looks for it
#   $release                      where both land

release=target/x86_64-unknown-linux-gnu/release

build_release() {
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -q --target x86_64-unknown-linux-gnu "$@"
}

build_init() {
  CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
    cargo rustc --release -q -p husk-init --bin husk-init --target x86_64-unknown-linux-gnu \
    -- -C strip=symbols
}
