#!/bin/sh
# moonring container entrypoint.
#   moonring-entrypoint serve [extra serve flags]   one rank service (default)
#   moonring-entrypoint health [--live]             exit 0 when GET /health is 200 ready
#                                                   (--live: when it answers at all)
#   moonring-entrypoint CMD ...                     anything else is exec'd as is
#
# Rank: RANK, else with MOONRING_RANK_FROM_HOSTNAME=1 the ordinal suffix of the pod/host name
# (a StatefulSet's moonring-3 -> 3). Everything else is read by `serve` from the environment:
# WORLD_SIZE, MASTER_ADDR, MASTER_PORT (rank 0's control-plane address), MOONRING_PORT,
# MOONRING_HOST (bind address), MOONRING_ADVERTISE_HOST, MOONRING_DATA_PORT, MOONRING_TOKEN,
# MOONRING_DEVICE (cpu|cuda); see `bun src/cli.ts serve --help`.
set -eu

app=${MOONRING_APP:-/app}

rank_from_hostname() {
  name=${POD_NAME:-$(hostname)}
  ordinal=${name##*-}
  case "$ordinal" in
    '' | *[!0-9]*) echo "moonring-entrypoint: cannot take a rank from host name '$name' (want NAME-ORDINAL)" >&2; exit 64 ;;
  esac
  echo "$ordinal"
}

cmd=${1:-serve}
case "$cmd" in
  serve)
    [ $# -gt 0 ] && shift
    if [ -z "${RANK:-}" ] && [ "${MOONRING_RANK_FROM_HOSTNAME:-0}" = 1 ]; then
      RANK=$(rank_from_hostname)
      export RANK
    fi
    # serve reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and MOONRING_* itself (and says
    # which one is missing); flags given here override them.
    echo "moonring-entrypoint: rank ${RANK:-?} of ${WORLD_SIZE:-?}, master ${MASTER_ADDR:-?}:${MASTER_PORT:-?}, port ${MOONRING_PORT:-?}" >&2
    set -- serve "$@"
    cd "$app"
    exec bun src/cli.ts "$@"
    ;;
  health)
    # health: 200 and ready (rendezvous complete). health --live: the control plane answers
    # at all (200, or 503 while waiting for the other ranks), i.e. the process is serving.
    live=0
    [ "${2:-}" = --live ] && live=1
    MOONRING_HEALTH_LIVE=$live exec bun -e '
      const port = process.env.MOONRING_PORT || "29500";
      const live = process.env.MOONRING_HEALTH_LIVE === "1";
      const headers = process.env.MOONRING_TOKEN ? { authorization: `Bearer ${process.env.MOONRING_TOKEN}` } : {};
      fetch(`http://127.0.0.1:${port}/health`, { headers, signal: AbortSignal.timeout(2500) })
        .then(async (r) => {
          if (live) process.exit(r.status === 200 || r.status === 503 ? 0 : 1);
          const body = await r.json().catch(() => ({}));
          process.exit(r.status === 200 && body.ready !== false ? 0 : 1);
        })
        .catch(() => process.exit(1));'
    ;;
  *)
    exec "$@"
    ;;
esac
