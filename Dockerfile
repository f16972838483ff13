# copystream in a container: built against Debian 12's libraries, run with only their runtime
# halves. docker-compose.yml runs it next to Kafka and Redis.
#
#   docker build -t copystream .
#   docker run --rm copystream --help

FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential pkg-config \
        librdkafka-dev libavro-dev libhiredis-dev libopenblas-dev libjansson-dev \
        libmicrohttpd-dev libxxhash-dev libinih-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY include/ include/
COPY src/ src/
RUN make -j"$(nproc)" build/copystream

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        librdkafka1 libavro23 libhiredis0.14 libopenblas0 libjansson4 libmicrohttpd12 \
        libxxhash0 libinih1 tzdata ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin copystream
COPY --from=build /src/build/copystream /opt/copystream/copystream
COPY schemas/ /opt/copystream/schemas/
COPY config/ /opt/copystream/config/
# The configuration's relative paths (schemas/, config/templates.conf) resolve from here.
WORKDIR /opt/copystream
USER copystream
EXPOSE 9464
ENTRYPOINT ["/opt/copystream/copystream"]
CMD ["run", "-c", "/opt/copystream/config/copystream.conf"]
