# emoji3d: bots + GPU engine. Build: docker build -t emoji3d .
# Run:   docker run --gpus all -e TELEGRAM_BOT_TOKEN=... -v emoji3d-data:/data emoji3d
# Weights are not baked in (licences): `docker run ... emoji3d weights fetch --accept-licence`.

# ---- builder: CUDA toolkit to prebuild the fused ops ----------------------
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04 AS builder
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0" EMOJI3D_OPS_CACHE=/opt/emoji3d/ops-cache
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/emoji3d/src
COPY pyproject.toml README.md config.toml ./
COPY emoji3d ./emoji3d
COPY engine ./engine
COPY storage ./storage
COPY bots ./bots
COPY shell ./shell
COPY styles ./styles
RUN python3 -m venv /opt/emoji3d/venv \
 && /opt/emoji3d/venv/bin/pip install --upgrade pip setuptools wheel \
 && /opt/emoji3d/venv/bin/pip install .
# Compile the CUDA twins of the custom ops once, into the digest-keyed cache.
RUN /opt/emoji3d/venv/bin/python -m engine.ops.prebuild

# ---- runtime ---------------------------------------------------------------
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 \
    EMOJI3D_OPS_CACHE=/opt/emoji3d/ops-cache EMOJI3D_CONFIG=/opt/emoji3d/config.toml \
    PATH=/opt/emoji3d/venv/bin:$PATH
# gcc and the Python headers: Triton builds its kernel launcher at run time, for `[pipeline] compile = "inductor"`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgl1 libglib2.0-0 gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 emoji3d \
 && mkdir -p /data && chown emoji3d:emoji3d /data
COPY --from=builder /opt/emoji3d/venv /opt/emoji3d/venv
COPY --from=builder /opt/emoji3d/ops-cache /opt/emoji3d/ops-cache
COPY config.toml /opt/emoji3d/config.toml
COPY styles /opt/emoji3d/styles
# Data (database, blobs, weights) lives on the volume; paths are set for it.
RUN sed -i 's|^data_dir = "data"|data_dir = "/data"|; s|^out_dir = "out"|out_dir = "/data/out"|' /opt/emoji3d/config.toml
USER 10001
VOLUME ["/data"]
WORKDIR /data
ENTRYPOINT ["emoji3d"]
CMD ["serve"]
