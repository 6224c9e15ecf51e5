# One image holding both binaries: the operator (/manager, the entrypoint)
# and the registry daemon (/registryd), which the operator runs as the
# default registryd image, and the kubelet credential provider
# (/stevedore-credential-provider, docs/workload-identity.md). Static binaries on distroless, as nonroot.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same flags as `make build` (GOBUILD in the Makefile).
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/stevedore-dev/stevedore/internal/version.Version=${VERSION}" -o /out/manager . && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/stevedore-dev/stevedore/internal/version.Version=${VERSION}" -o /out/registryd ./registryd && \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/stevedore-dev/stevedore/internal/version.Version=${VERSION}" -o /out/stevedore-credential-provider ./cmd/stevedore-credential-provider

FROM gcr.io/distroless/static:nonroot
COPY --from=build /out/manager /manager
COPY --from=build /out/registryd /registryd
COPY --from=build /out/stevedore-credential-provider /stevedore-credential-provider
USER 65532:65532
ENTRYPOINT ["/manager"]
