# The shardctl image: one image for every role (cdc reader, coordinator, worker).
# The Rust toolchain that builds the native CDC decoder (native/) comes from the
# official image; only the built wheel reaches the final image.
FROM rust:1.95-slim AS rust

FROM python:3.11-slim AS build
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
  && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY native ./native
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./native
COPY pyproject.toml README.md ./
COPY shardctl ./shardctl
COPY coordinator ./coordinator
COPY workers ./workers
COPY cdc ./cdc
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 --user-group shardctl
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001:10001
# Every long-running role serves /metrics, /healthz and /readyz on this port
# (SHARDCTL_METRICS_PORT is the default of --metrics-port; 0 turns it off).
ENV SHARDCTL_METRICS_PORT=9400 PYTHONDONTWRITEBYTECODE=1
EXPOSE 9400
# Alive: the process's main loop ticks and its etcd lease keepalive is not stuck.
# One-shot commands (cluster init) serve nothing; compose disables the check for them.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SHARDCTL_METRICS_PORT', '9400'), timeout=3)"]
ENTRYPOINT ["shardctl"]
CMD ["--help"]
