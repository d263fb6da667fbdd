# syntax=docker/dockerfile:1
# The exchange, its config, migrations and the simulated buyer fleet, as a non-root image.
#   docker build -t ping-post-exchange .
#   docker run -p 8000:8000 -e EXCHANGE_DATABASE_URL=... -e EXCHANGE_REDIS_URL=... ping-post-exchange

# --- builder: the virtualenv with every dependency ---------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv
RUN python -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"

WORKDIR /app
# Only pyproject.toml goes in here, so editing the code does not reinstall the dependencies.
# The package is installed in place (editable, mapped to /app/exchange, which the runtime
# stage fills): `exchange migrate` reads /app/migrations beside the package, which a
# wheel would not carry.
COPY pyproject.toml ./
RUN mkdir exchange \
    && touch exchange/__init__.py README.md \
    && pip install --editable .

# --- runtime ---------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH"

RUN groupadd --system --gid 10001 exchange \
    && useradd --system --uid 10001 --gid exchange --create-home --home-dir /home/exchange \
        --shell /usr/sbin/nologin exchange

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY pyproject.toml ./
COPY migrations ./migrations
COPY config ./config
COPY loadtests ./loadtests
COPY exchange ./exchange
# Bytecode is compiled now because the non-root user cannot write under /app; the one
# writable folder is for the embedded stores, used only when no store URL is given.
RUN python -m compileall -q exchange loadtests \
    && install -d -o exchange -g exchange /app/.exchange-data

USER exchange
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]

CMD ["exchange", "serve", "--host", "0.0.0.0", "--port", "8000", "--config", "/app/config"]
