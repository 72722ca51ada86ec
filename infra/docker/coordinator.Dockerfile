# Coordinator image: the OpenAI-compatible `serve` host (attention, KV cache, router, scheduler) plus the admin API.
# Build from the repository root:   docker build -f infra/docker/coordinator.Dockerfile -t distributed-moe/coordinator:dev .
# The CUDA kernel backend needs the driver (libcuda.so.1, injected by the NVIDIA container toolkit) and cuBLAS/NVRTC
# from the CUDA runtime base image; with --backend cpu any node runs it.
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
WORKDIR /src
COPY . .
RUN dotnet publish src/Coordinator/Distributed.Coordinator.csproj -c Release -o /app --no-self-contained

FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS runtime
# The .NET + ASP.NET Core runtime, taken from Microsoft's image instead of a package feed.
COPY --from=mcr.microsoft.com/dotnet/aspnet:10.0 /usr/share/dotnet /usr/share/dotnet
RUN ln -s /usr/share/dotnet/dotnet /usr/bin/dotnet \
 && apt-get update && apt-get install -y --no-install-recommends libicu74 ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app .
ENV DOTNET_gcServer=1 \
    DOTNET_GCHeapAffinitizeMask=0
# 8000: OpenAI API, /metrics, /healthz/live, /healthz/ready (ServeOptions.Port default). Listening on 0.0.0.0, serve needs
# the OpenAI API key in DISTRIBUTED_API_KEY (docker run -e DISTRIBUTED_API_KEY=...), or --allow-unauthenticated.
EXPOSE 8000
USER 1000
ENTRYPOINT ["dotnet", "Distributed.Coordinator.dll"]
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000"]
