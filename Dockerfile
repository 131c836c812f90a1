FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lifecycle lifecycle
COPY projections projections
COPY consumers consumers
COPY schemas schemas
RUN pip install --no-cache-dir . && useradd --system lifecycle
USER lifecycle
ENTRYPOINT []
