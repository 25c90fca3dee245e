#!/usr/bin/env bash
# Builds local stand-ins for the two base images of deploy/Containerfile, for a
# builder that reaches Debian's archive but no container registry (like kaskade's CI).
# Needs root, podman, and (for the builder image) debootstrap and a host Rust toolchain.
#
#   deploy/container/local-bases.sh runtime   -> localhost/kaskade-base/cc-debian12:nonroot
#   deploy/container/local-bases.sh builder   -> localhost/kaskade-base/rust:bookworm
#
# runtime: what distroless cc-debian12 is made of, from the same Debian 12 packages
#   (libc6, libgcc-s1, ca-certificates, netbase, base-files), plus /etc/passwd with the
#   nonroot user 65532. No shell, no package manager. ~20 MB. Seconds.
# builder: debootstrap's minbase of Debian 12 with gcc and libc6-dev, and a copy of the
#   host's Rust toolchain (rustup's toolchains cannot be downloaded here) laid out like
#   the official rust image (cargo on PATH, CARGO_HOME=/usr/local/cargo). Minutes.
#
# Then:
#   podman build -f deploy/Containerfile \
#     --build-arg RUST_IMAGE=localhost/kaskade-base/rust:bookworm \
#     --build-arg RUNTIME_IMAGE=localhost/kaskade-base/cc-debian12:nonroot \
#     -t kaskade:dev .
set -euo pipefail

RUNTIME_TAG="${RUNTIME_TAG:-localhost/kaskade-base/cc-debian12:nonroot}"
BUILDER_TAG="${BUILDER_TAG:-localhost/kaskade-base/rust:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Debian 12 (bookworm): the glibc the runtime image provides must be the one the
# binary was linked against, or newer.
SUITE=bookworm

work="$(mktemp -d /tmp/kaskade-bases-XXXXXX)"
trap 'rm -rf "$work"' EXIT

# Imports a root file system tar as TAG; the image TAG named before is removed if
# nothing else uses it, so repeated runs leave no dangling images.
import_as() { # TAG TAR --change...
  local tag="$1" tar="$2" old
  shift 2
  old="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  podman import -q "$@" "$tar" "$tag" >/dev/null
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  echo "$tag"
}

runtime() {
  local root="$work/rootfs" debs="$work/debs"
  mkdir -p "$root" "$debs"
  (cd "$debs" && apt-get download -qq libc6 libgcc-s1 ca-certificates netbase base-files 2>/dev/null)
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
  # Trim what a runtime without a package manager cannot use.
  rm -rf "${root:?}/usr/share/doc" "${root:?}/usr/share/man" "${root:?}/usr/share/info" \
    "${root:?}/usr/share/lintian" "${root:?}/usr/share/locale" "${root:?}/usr/sbin" "${root:?}/sbin" \
    "${root:?}/usr/bin" "${root:?}/bin"
  # ca-certificates' postinst builds the bundle with a shell script; do the same here.
  mkdir -p "$root/etc/ssl/certs"
  find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z \
    | xargs -0 cat >"$root/etc/ssl/certs/ca-certificates.crt"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  install -d -m 0700 -o 0 -g 0 "$root/root"
  install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
  install -d -m 1777 "$root/tmp"
  tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
  import_as "$RUNTIME_TAG" "$work/rootfs.tar" \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
}

builder() {
  local root="$work/rootfs" sysroot
  sysroot="$(rustc --print sysroot)"
  debootstrap --variant=minbase --include=gcc,libc6-dev,ca-certificates \
    "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; return 1; }
  # The host's toolchain, without its documentation (rustc, cargo, the std library).
  mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo"
  cp -a "$sysroot/bin" "$sysroot/lib" "$root/usr/local/rust/"
  for tool in cargo rustc rustdoc; do ln -sf "/usr/local/rust/bin/$tool" "$root/usr/local/bin/$tool"; done
  rm -rf "${root:?}/var/cache/apt/archives"/*.deb "${root:?}/var/lib/apt/lists"/*
  tar -C "$root" --numeric-owner -cf "$work/rootfs.tar" .
  import_as "$BUILDER_TAG" "$work/rootfs.tar" \
    --change 'ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/bin:/usr/bin:/bin'
}

case "${1:-}" in
  runtime) runtime ;;
  builder) builder ;;
  *) echo "usage: $0 runtime|builder" >&2; exit 2 ;;
esac
