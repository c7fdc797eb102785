# The shardctl image: one image for every role (cdc reader, coordinator, worker).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shardctl ./shardctl
COPY coordinator ./coordinator
COPY workers ./workers
COPY cdc ./cdc
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 shardctl
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER shardctl
# Metrics for Prometheus.
EXPOSE 9400
ENTRYPOINT ["shardctl"]
CMD ["--help"]
