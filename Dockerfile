# keyward container image: a static-ish release binary on a distroless base, non-root.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked --bin keyward

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/dist/keyward /usr/local/bin/keyward
USER 65532:65532
ENTRYPOINT ["keyward"]
CMD ["run", "-c", "/etc/keyward/keyward.yaml"]
