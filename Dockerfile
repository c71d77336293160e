# syntax=docker/dockerfile:1
# nextbest worker image (CPU only).
#   docker build -t nextbest .
#   docker run --rm nextbest --help
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"

# torch first, from the CPU-only index: `pip install .` then finds torch==2.13.0 satisfied
# and does not pull the multi-GB CUDA build from PyPI.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
# README.md* : optional (pyproject names it as readme; the build only warns if it is absent).
COPY pyproject.toml README.md* ./
COPY streams ./streams
COPY agents ./agents
COPY models ./models
COPY schemas ./schemas
RUN pip install . && nextbest --help >/dev/null


FROM python:3.11-slim

ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NEXTBEST_STATE_DIR=/var/lib/nextbest \
    NEXTBEST_MODELS_DIR=/var/lib/nextbest-models \
    NEXTBEST_WEB_HOST=0.0.0.0 \
    NEXTBEST_WEB_PORT=6066

RUN groupadd --system --gid 10001 nextbest \
    && useradd --system --uid 10001 --gid nextbest --home-dir /var/lib/nextbest \
       --no-create-home --shell /usr/sbin/nologin nextbest \
    && mkdir -p /var/lib/nextbest /var/lib/nextbest-models /etc/nextbest \
    && chown nextbest:nextbest /var/lib/nextbest /var/lib/nextbest-models

COPY --from=build /opt/venv /opt/venv

USER nextbest
WORKDIR /var/lib/nextbest
# RocksDB state (one per worker) and the merchant models (one volume shared by every worker, so
# that a model trained through any worker's API is served by all: docker-compose.yml). A new
# named volume takes the owner of the folder it is mounted on, so the user can write to both.
VOLUME ["/var/lib/nextbest", "/var/lib/nextbest-models"]
EXPOSE 6066

ENTRYPOINT ["nextbest"]
CMD ["worker"]
