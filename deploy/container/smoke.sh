#!/usr/bin/env bash
# Builds the runtime stage of deploy/Containerfile around an already built kaskade
# binary, and runs the image the way production does. Used by CI (.ci/run, stage
# "image", after "build"), where a release build inside the container would cost
# another 15-30 minutes.
#
#   deploy/container/smoke.sh target/debug/kaskade
#
# The build stage is replaced by a directory holding the (stripped) binary
# (podman build --build-context build=DIR); everything after it — the runtime base,
# user, ports, entrypoint, signal — is the Containerfile's own. The runtime base is the
# local stand-in for distroless cc (local-bases.sh runtime), as CI reaches no container
# registry. Checks: the image has no shell and runs as 65532; a bad flag exits 64
# through the container; kaskade serves /metrics (and /healthz, /readyz if the binary
# has them) with a read-only root and no capabilities; SIGTERM (podman stop) reaches
# kaskade as PID 1 and it exits 0.
# RUNTIME_IMAGE=IMAGE uses that base instead (e.g. distroless, where a registry is
# reachable). Needs root, podman and runc (crun refuses hosts with hybrid cgroups).
set -euo pipefail

BIN="${1:?usage: $0 PATH/TO/kaskade}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE="${RUNTIME_IMAGE:-localhost/kaskade-base/cc-debian12:nonroot}"
IMAGE=localhost/kaskade:smoke
NAME="kaskade-smoke-$$"
PODMAN=(podman)
if command -v runc >/dev/null 2>&1; then PODMAN+=(--runtime runc); fi
# The host's limits, not podman's defaults (raising them needs CAP_SYS_RESOURCE).
ULIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)

work="$(mktemp -d /tmp/kaskade-smoke-XXXXXX)"
cleanup() {
  "${PODMAN[@]}" rm -f "$NAME" >/dev/null 2>&1 || true
  "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "image smoke: FAIL: $*" >&2; exit 1; }
ok() { echo "image smoke: ok: $*"; }

# ---- base and image. The base is rebuilt each run (seconds) unless RUNTIME_IMAGE names
# one, so local-bases.sh is exercised too; a stale apt list gets one update.
if [ -z "${RUNTIME_IMAGE:-}" ]; then
  "$ROOT/deploy/container/local-bases.sh" runtime >/dev/null \
    || { apt-get update -qq >/dev/null && "$ROOT/deploy/container/local-bases.sh" runtime >/dev/null; }
fi
mkdir -p "$work/ctx/out"
strip -o "$work/ctx/out/kaskade" "$BIN"
"${PODMAN[@]}" build -q -f "$ROOT/deploy/Containerfile" \
  --build-context "build=$work/ctx" --build-arg "RUNTIME_IMAGE=$BASE" \
  -t "$IMAGE" "$ROOT" >/dev/null
ok "built $IMAGE ($(podman image inspect "$IMAGE" --format '{{.Size}}') bytes) from $BASE"

# ---- the image's configuration
cfg="$(podman image inspect "$IMAGE" --format '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{.Config.StopSignal}}')"
[ "$cfg" = '65532:65532|["/usr/local/bin/kaskade"]|["serve"]|SIGTERM' ] || fail "image config: $cfg"
exposed="$(podman image inspect "$IMAGE" --format '{{json .Config.ExposedPorts}}')"
for port in 50051/tcp 9464/tcp 7000/udp 40000-40007/udp; do
  [[ "$exposed" == *"\"$port\""* ]] || fail "port $port is not exposed: $exposed"
done
ok "user 65532, entrypoint kaskade, SIGTERM, ports exposed"

# ---- no shell, nothing but the binary and its libraries
"${PODMAN[@]}" create --network none --name "$NAME" "$IMAGE" >/dev/null
"${PODMAN[@]}" export "$NAME" | tar -t >"$work/files"
"${PODMAN[@]}" rm "$NAME" >/dev/null
if grep -Eq '^(\./)?(usr/)?s?bin/(sh|bash|dash|busybox|apt|dpkg)$' "$work/files"; then
  fail "the image has a shell or package manager: $(grep -E '(sh|bash|dash|busybox|apt|dpkg)$' "$work/files" | head -3 | tr '\n' ' ')"
fi
ok "no shell, no package manager ($(wc -l <"$work/files") files)"

# ---- a bad configuration exits 64 through the container (no wrapper in between)
set +e
"${PODMAN[@]}" run --rm --network none "${ULIMITS[@]}" "$IMAGE" serve --control-listen not-an-address >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 64 ] || fail "bad config exited $rc, expected 64"
ok "bad config exits 64"

# ---- serve as in production: host network, read-only root, no capabilities
"${PODMAN[@]}" run -d --name "$NAME" --network host --read-only --cap-drop ALL \
  --security-opt no-new-privileges "${ULIMITS[@]}" "$IMAGE" \
  serve --control-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --media-port-start 0 >/dev/null
ready=""
for _ in $(seq 1 100); do
  ready="$("${PODMAN[@]}" logs "$NAME" 2>/dev/null | grep -m1 '^KASKADE_READY ' || true)"
  [ -n "$ready" ] && break
  [ "$(podman inspect "$NAME" --format '{{.State.Running}}')" = true ] \
    || fail "kaskade exited: $("${PODMAN[@]}" logs "$NAME" 2>&1 | tail -5)"
  sleep 0.2
done
[ -n "$ready" ] || fail "no KASKADE_READY line within 20 s"
metrics="$(sed -E 's/.*"metrics":"([^"]+)".*/\1/' <<<"$ready")"
pid="$(podman inspect "$NAME" --format '{{.State.Pid}}')"
uid="$(awk '/^Uid:/ {print $2 "/" $3}' "/proc/$pid/status")"
[ "$uid" = 65532/65532 ] || fail "kaskade runs as uid $uid (real/effective)"
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$metrics$1"; }
[ "$(code /metrics)" = 200 ] || fail "/metrics answered $(code /metrics)"
curl -s --max-time 5 "http://$metrics/metrics" >"$work/metrics"
grep -q '^kaskade_sessions ' "$work/metrics" || fail "/metrics has no kaskade_sessions"
for path in /healthz /readyz; do
  c="$(code "$path")"
  case "$c" in
    200) ok "$path 200" ;;
    404) echo "image smoke: note: $path 404: this binary predates the health endpoints" ;;
    *) fail "$path answered $c" ;;
  esac
done
ok "ready as uid 65532 on a read-only root, /metrics answers"
# Names the binary exports that the dashboard's contract does not know (a warning: a
# new metric needs a line in deploy/ci/metrics.txt and a panel).
unknown="$(grep -oE '^(kaskade|process)_[a-z_]+' "$work/metrics" | sed -E 's/_(bucket|sum|count)$//' | sort -u \
  | grep -vxF -f <(grep -oE '^[a-z_]+' "$ROOT/deploy/ci/metrics.txt") || true)"
[ -z "$unknown" ] || echo "image smoke: note: exported but not in deploy/ci/metrics.txt: $(tr '\n' ' ' <<<"$unknown")"

# ---- SIGTERM reaches kaskade (PID 1) and it exits 0
t0=$SECONDS
"${PODMAN[@]}" stop -t 60 "$NAME" >/dev/null
rc="$(podman inspect "$NAME" --format '{{.State.ExitCode}}')"
[ "$rc" = 0 ] || fail "after SIGTERM kaskade exited $rc: $("${PODMAN[@]}" logs "$NAME" 2>&1 | tail -5)"
ok "SIGTERM: exit 0 after $((SECONDS - t0)) s"
