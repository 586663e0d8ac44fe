FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY hub ./hub
COPY adapters ./adapters
COPY mappings ./mappings
RUN pip install --no-cache-dir -c constraints.txt .
ENV HUB_DATA_DIR=/var/lib/hub HUB_HTTP_HOST=0.0.0.0 HUB_MLLP_HOST=0.0.0.0
EXPOSE 8080 2575
CMD ["hub", "serve"]
