# The Kind Robots server: `docker build -t kindrobots .`, then see compose.yaml and README.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # Listen on every interface of the container; the proxy in front is the way in.
    KR_HOST=0.0.0.0 \
    KR_PORT=8000 \
    KR_DATA_DIR=/var/lib/kindrobots

RUN groupadd --system --gid 10001 kindrobots \
    && useradd --system --uid 10001 --gid kindrobots --home-dir /var/lib/kindrobots \
       --create-home --shell /usr/sbin/nologin kindrobots

WORKDIR /app
# Dependencies first, pinned by constraints.txt: a code change does not reinstall them.
COPY pyproject.toml constraints.txt README.md ./
COPY kindrobots ./kindrobots
RUN pip install --constraint constraints.txt . && rm -rf /root/.cache

USER kindrobots
WORKDIR /var/lib/kindrobots
EXPOSE 8000

# Liveness only (/healthz); readiness (/readyz: database, Redis, migrations) is the proxy's.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('KR_PORT', '8000')}/healthz\", timeout=2)"]

ENTRYPOINT ["kindrobots"]
CMD ["serve"]
