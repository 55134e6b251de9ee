# One image for every fedsynth service (aggregator, gateway, agents, topic creation).
# torch goes in first, pinned to the CPU build, so `pip install .` finds it satisfied and never
# pulls a multi-GB CUDA wheel.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY agents/ agents/
COPY aggregator/ aggregator/
COPY bench/ bench/
COPY fedsynth/ fedsynth/
COPY observability/ observability/
COPY schemas/ schemas/
COPY synth_gateway/ synth_gateway/
COPY topics/ topics/
RUN pip install .

RUN useradd --create-home --uid 10001 fedsynth \
    && mkdir -p /var/lib/fedsynth && chown fedsynth /var/lib/fedsynth
USER fedsynth
ENV FEDSYNTH_HOME=/var/lib/fedsynth
EXPOSE 8080
CMD ["fedsynth", "--help"]
