# One image for every service in docker-compose.yml: the hpsearch package (CLI `hpsearch`) with
# TensorFlow for NVIDIA GPUs. The host needs the NVIDIA driver and the NVIDIA Container Toolkit;
# the CUDA libraries come as pip wheels with tensorflow[and-cuda].
#
#   docker build -t hpsearch .                 # GPU build (default)
#   docker build -t hpsearch --build-arg GPU=0 .   # CPU only, a smaller image
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app

COPY pyproject.toml README.md ./
COPY hpsearch ./hpsearch
COPY model ./model

# The gpu extra adds CUDA's libraries to TensorFlow (tensorflow[and-cuda]); the build checks that the
# TensorFlow it installed was built with CUDA (no GPU is needed for that).
ARG GPU=1
RUN pip install . \
 && if [ "$GPU" = "1" ]; then \
        pip install ".[gpu]" \
        && python -c "import tensorflow as tf; assert tf.test.is_built_with_cuda(), 'TensorFlow lacks CUDA'"; \
    fi \
 && hpsearch --help >/dev/null

# The study definitions (studies/*.yaml, written from the package's templates); the dataset (data/)
# and the trial models (studies/artifacts/) are volumes; the study itself lives in PostgreSQL ($HPSEARCH_STORAGE).
RUN hpsearch init /app \
 && useradd --create-home --uid 1000 hpsearch \
 && mkdir -p /app/data /app/studies/artifacts \
 && chown -R hpsearch:hpsearch /app/data /app/studies
USER hpsearch

EXPOSE 8080
CMD ["hpsearch", "--help"]
