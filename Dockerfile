# qloop in a minimal image: a multi-stage build on python:3.x-slim.
#   docker build -t qloop .                 (PYTHON=3.12 by default)
#   docker build --build-arg PYTHON=3.11 -t qloop .
# Not built on the machines qloop is developed on (they have no Docker);
# tests/packaging/test_wheel.sh runs the same steps in a fresh venv: it
# builds the wheel from exactly the files the COPY lines of the build stage
# name, checks that it needs nothing but CPython and libc, and installs it
# with --no-index.

ARG PYTHON=3.12

# Build stage: a C compiler and the Python headers (the python images ship
# them); meson-python, meson and ninja come from PyPI through pip's build
# isolation.  No libuv, no Cython.
FROM python:${PYTHON}-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml meson.build meson_options.txt README.md ./
COPY include include
COPY src src
COPY python python
RUN pip wheel --no-deps --no-cache-dir -w /wheels .

# Final stage: the wheel only; no compiler, no build tools.
FROM python:${PYTHON}-slim
COPY --from=build /wheels /wheels
RUN pip install --no-index --no-cache-dir /wheels/qloop-*.whl \
    && rm -rf /wheels \
    && python -c "import qloop, asyncio; print(qloop.run(asyncio.sleep(0, 'qloop ok')))"
