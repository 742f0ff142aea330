# moonring rank service image.
#
#   docker build -t moonring:0.1.0 .
#   docker run --rm -e RANK=0 -e WORLD_SIZE=1 -e MASTER_ADDR=127.0.0.1 -p 127.0.0.1:29500:29500 moonring:0.1.0
#
# Stage "build" bootstraps the pinned toolchain (scripts/bootstrap.sh: bun from npm, Zig and
# nvcc from PyPI) and builds zig/zig-out/lib/libmoonring.so with its CUDA fatbin embedded.
# Stage "runtime" holds only the bun binary, the library (+ its ABI header, which the FFI
# bridge parses), src/ and the production node_modules (hono, zod), run as a non-root user.
#
# BASE_IMAGE: any Debian bookworm image. Offline, `sh deploy/base-image.sh` makes one under the
# default name with debootstrap. Extra CA certificates for the build stage's downloads
# (TLS-intercepting proxies): deploy/ca-certificates/*.crt.
ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
COPY deploy/ca-certificates/ /tmp/extra-ca/
# python3-venv: PyPI tools (ziglang, nvidia-cuda-nvcc); nodejs/npm: npm ci (bun, hono, zod);
# gcc/g++: nvcc's host compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv nodejs npm gcc g++ \
 && rm -rf /var/lib/apt/lists/* \
 && if ls /tmp/extra-ca/*.crt >/dev/null 2>&1; then cp /tmp/extra-ca/*.crt /usr/local/share/ca-certificates/; fi \
 && update-ca-certificates >/dev/null \
 && rm -rf /tmp/extra-ca
ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src

# Toolchain first: this layer stays cached until the pins (package*.json, scripts/) change.
COPY package.json package-lock.json ./
COPY scripts/ scripts/
RUN sh scripts/bootstrap.sh && npm cache clean --force >/dev/null 2>&1

# Production dependencies only (hono, zod), from the same lockfile.
RUN mkdir /prod && cp package.json package-lock.json /prod/ \
 && cd /prod && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error \
 && npm cache clean --force >/dev/null 2>&1

# The native core: zig/ and cuda/ plus the op table it generates its enums from.
COPY zig/ zig/
COPY cuda/ cuda/
COPY src/ops/table.json src/ops/table.json
RUN sh scripts/bootstrap.sh --build \
 && test -s zig/zig-out/lib/libmoonring.so \
 && cp -L node_modules/.bin/bun /usr/local/bin/bun \
 && /usr/local/bin/bun --version

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 moonring \
 && useradd --system --uid 10001 --gid moonring --create-home --home-dir /home/moonring \
      --shell /usr/sbin/nologin moonring
COPY --from=build /usr/local/bin/bun /usr/local/bin/bun
WORKDIR /app
COPY --from=build /prod/node_modules/ node_modules/
COPY --from=build /src/zig/zig-out/lib/libmoonring.so zig/zig-out/lib/libmoonring.so
COPY --from=build /src/zig/include/moonring.h zig/include/moonring.h
COPY package.json ./
COPY src/ src/
COPY deploy/docker-entrypoint.sh /usr/local/bin/moonring-entrypoint

# Configuration (see deploy/README.md): torchrun variables for the rendezvous, MOONRING_* for
# the service. MASTER_PORT is rank 0's control-plane port. TCP between containers: shm needs a
# shared /dev/shm, which separate containers don't have.
ENV RANK="" \
    WORLD_SIZE="" \
    MASTER_ADDR="" \
    MASTER_PORT=29500 \
    MOONRING_PORT=29500 \
    MOONRING_HOST=0.0.0.0 \
    MOONRING_TRANSPORT=tcp \
    MOONRING_LIB=/app/zig/zig-out/lib/libmoonring.so \
    BUN_RUNTIME_TRANSPILER_CACHE_PATH=0 \
    NODE_ENV=production
USER moonring:moonring
EXPOSE 29500
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["moonring-entrypoint", "health"]
ENTRYPOINT ["moonring-entrypoint"]
CMD ["serve"]
