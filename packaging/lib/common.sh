# shellcheck shell=bash
# Helpers shared by scripts/check-package, scripts/cross-build,
# scripts/cross-smoke and scripts/footprint (sourced, not executed).
# Every helper is idempotent: it installs only what is missing.

# The cargo-deb release the scripts use (builds on the pinned rust 1.95.0).
CARGO_DEB_VERSION=3.8.0

say() { echo "$(basename "$0"): $*" >&2; }
die() { say "$*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        command -v sudo >/dev/null || die "need root (or sudo) to run: $*"
        sudo "$@"
    fi
}

# apt_ensure PKG...: installs the packages (arch-qualified names allowed)
# that are not installed yet.
apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    say "installing ${missing[*]}"
    # A failing index of one mirror (e.g. a foreign architecture's security
    # index during a mirror sync) must not stop the install when the
    # packages are available elsewhere; apt-get install fails if they are not.
    as_root apt-get update -qq || say "warning: apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# dpkg_arch_ensure ARCH: enables a foreign dpkg architecture (multiarch).
dpkg_arch_ensure() {
    local arch=$1
    [[ "$arch" == "$(dpkg --print-architecture)" ]] && return 0
    dpkg --print-foreign-architectures | grep -qx "$arch" && return 0
    say "enabling dpkg architecture $arch"
    as_root dpkg --add-architecture "$arch"
    # Make the next apt_ensure fetch the new architecture's indexes.
    as_root apt-get update -qq || say "warning: apt-get update reported errors"
}

# cargo_deb_ensure: cargo-deb $CARGO_DEB_VERSION on PATH.
cargo_deb_ensure() {
    if cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
        return 0
    fi
    say "installing cargo-deb $CARGO_DEB_VERSION (cargo install, ~2 min)"
    cargo install --locked --version "$CARGO_DEB_VERSION" cargo-deb
}

# The Debian architecture and GNU triplet of a Rust target.
deb_arch_of() {
    case $1 in
        x86_64-unknown-linux-gnu) echo amd64 ;;
        aarch64-unknown-linux-gnu) echo arm64 ;;
        armv7-unknown-linux-gnueabihf) echo armhf ;;
        *) die "unsupported target $1 (supported: x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" ;;
    esac
}
gnu_triplet_of() {
    case $1 in
        x86_64-unknown-linux-gnu) echo x86_64-linux-gnu ;;
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) die "unsupported target $1" ;;
    esac
}
# The qemu-user binary that runs a target's executables.
qemu_of() {
    case $1 in
        aarch64-unknown-linux-gnu) echo qemu-aarch64 ;;
        armv7-unknown-linux-gnueabihf) echo qemu-arm ;;
        *) die "no qemu for target $1" ;;
    esac
}

# cross_toolchain_ensure TARGET: the Debian cross gcc, the target's
# multiarch libudev-dev and the Rust standard library of TARGET.
cross_toolchain_ensure() {
    local target=$1 arch triplet
    arch=$(deb_arch_of "$target")
    triplet=$(gnu_triplet_of "$target")
    dpkg_arch_ensure "$arch"
    apt_ensure pkg-config "gcc-$triplet" "libc6-dev-$arch-cross" "libudev-dev:$arch"
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target" || die "rustup target add $target failed (network?)"
    fi
}

# cross_env TARGET: exports what cargo, cc-rs (rusqlite's bundled SQLite,
# ring) and pkg-config-rs (libudev-sys) need to build for TARGET with
# Debian's cross gcc and the multiarch libudev.
cross_env() {
    local target=$1 triplet tvar
    triplet=$(gnu_triplet_of "$target")
    tvar=${target//-/_}
    export "CARGO_TARGET_${tvar^^}_LINKER=$triplet-gcc"
    export "CC_$tvar=$triplet-gcc"
    export "CXX_$tvar=$triplet-g++"
    export "AR_$tvar=$triplet-ar"
    export "PKG_CONFIG_ALLOW_CROSS=1"
    export "PKG_CONFIG_LIBDIR_$tvar=/usr/lib/$triplet/pkgconfig:/usr/share/pkgconfig"
    # Multiarch: the target's libraries live in the host root, not a sysroot.
    export "PKG_CONFIG_SYSROOT_DIR_$tvar=/"
}
