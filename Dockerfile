# origincast application image (used by docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs: tests, benchmarks and scripts stay out of the image.
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY telemetry ./telemetry
COPY web ./web
COPY devices ./devices
RUN pip install . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/origincast origincast

USER origincast
WORKDIR /var/lib/origincast
# Inside a container the server must listen beyond loopback; compose publishes the port.
ENV ORIGINCAST_HTTP_HOST=0.0.0.0 \
    ORIGINCAST_HTTP_PORT=8080
EXPOSE 8080
CMD ["origincast", "serve"]
