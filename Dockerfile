# syntax=docker/dockerfile:1
# Tollgate: build with dev dependencies, ship production dependencies and compiled JS only.

FROM node:20-bookworm-slim AS build
# A compiler for the one native addon (native/malloc_trim.c), which `npm ci` builds with node-gyp,
# against the headers the image ships in /usr/local/include/node (none downloaded).
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
ENV npm_config_nodedir=/usr/local
WORKDIR /app
COPY package.json package-lock.json binding.gyp ./
COPY native ./native
# The image runs without the addon too, but it is built to have it: fail here, not silently.
RUN npm ci --no-audit --no-fund && test -f build/Release/malloc_trim.node
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY scripts ./scripts
RUN npm run build

FROM node:20-bookworm-slim AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the addon is built once, in the build stage, and copied from there.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

FROM node:20-bookworm-slim
# MALLOC_ARENA_MAX=2: glibc otherwise gives each thread that allocates (libuv's pool, V8's GC helpers)
# an arena of its own; two keep ~3 MB less resident at the peak with 1,000 open streams (median of 11
# alternating runs), at no CPU cost measured.
# MALLOC_MMAP_THRESHOLD_=131072: glibc's default value, but set, which turns off its dynamic
# threshold (unset, freeing one large block raises it, up to 32 MB, and the trim threshold to twice
# that, so more freed memory stays resident). 1,000 open streams peaked at 141 MB at the median of 16
# runs with it, 148 MB of 13 without (alternating), at no CPU cost measured. It does not stop glibc
# from sometimes keeping ~30 MB of freed, fragmented memory from the first seconds of load (more
# often when load starts at once after start-up: 150-165 MB in 1 of 16 to 3 of 7 runs, by series):
# Tollgate gives that back itself, with malloc_trim every MEMORY_TRIM_INTERVAL_MS (src/native-memory.ts).
# BENCHMARKS.md has the evidence.
ENV NODE_ENV=production PORT=8080 MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072
WORKDIR /app
COPY --from=prod-deps --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --from=build --chown=root:root /app/build/Release/malloc_trim.node ./build/Release/malloc_trim.node
COPY package.json ./
# The image's files stay root-owned and read-only to the process, which runs as the unprivileged node user.
USER node
EXPOSE 8080
# /healthz needs no dependency, so a Redis outage does not get the container restarted. Asked with
# bash's /dev/tcp (~3 MB) rather than a second node process (~50-85 MB with fetch), which would count
# against the container's memory every 15 s.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-8080} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r _ status _ <&3 && [ \"$status\" = 200 ]"]
# node as PID 1 receives SIGTERM directly (handled from its first moment: src/stop-signals.ts), so
# graceful shutdown works with `docker stop`; give it longer than SHUTDOWN_TIMEOUT_MS (30 s):
# `docker stop -t 40`, compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds.
CMD ["node", "dist/server.js"]
