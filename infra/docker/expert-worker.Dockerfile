# Expert worker image: Orleans silo + Kestrel gRPC data plane holding expert shards.
# Build from the repository root:   docker build -f infra/docker/expert-worker.Dockerfile -t distributed-moe/expert-worker:dev .
# Configuration comes from DISTRIBUTED_<Section>__<Key> environment variables (see infra/k8s/expert-workers.yaml).
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/ExpertWorker/Distributed.ExpertWorker.csproj -c Release -o /app --no-self-contained

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS runtime
COPY --from=mcr.microsoft.com/dotnet/aspnet:10.0 /usr/share/dotnet /usr/share/dotnet
RUN ln -s /usr/share/dotnet/dotnet /usr/bin/dotnet \
 && apt-get update && apt-get install -y --no-install-recommends libicu74 ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app .
# 50051: gRPC data plane + grpc.health.v1 (ExpertWorker:GrpcPort); 9090: /metrics, /healthz/* (ExpertWorker:OpsPort);
# 11111: Orleans silo-to-silo (Cluster:SiloPort); 30000: Orleans client gateway (Cluster:GatewayPort).
EXPOSE 50051 9090 11111 30000
ENV DISTRIBUTED_ExpertWorker__GrpcPort=50051 \
    DISTRIBUTED_ExpertWorker__OpsPort=9090 \
    DISTRIBUTED_Cluster__SiloPort=11111 \
    DISTRIBUTED_Cluster__GatewayPort=30000
USER 1000
ENTRYPOINT ["dotnet", "Distributed.ExpertWorker.dll"]
