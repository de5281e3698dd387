#!/usr/bin/env python3
"""A proxyless gRPC client (grpcio) resolving a mesh service through the controller's xDS.

Usage: grpc_xds_client.py XDS_ADDR TARGET CALLS
Prints one JSON line: {"ok": N, "errors": [...], "servers": {instance: count}}; each
server names itself in the trailing metadata "x-instance".
"""
import json
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main():
    xds_addr, target, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": xds_addr,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": "grpc-python-client", "locality": {}},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(bootstrap, f)
    os.environ["GRPC_XDS_BOOTSTRAP"] = f.name
    servers, errors, ok = {}, [], 0
    with grpc.insecure_channel(f"xds:///{target}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(calls):
            try:
                _, call = stub.Check.with_call(
                    health_pb2.HealthCheckRequest(service=""), timeout=10
                )
                name = dict(call.trailing_metadata()).get("x-instance", "?")
                servers[name] = servers.get(name, 0) + 1
                ok += 1
            except grpc.RpcError as e:  # noqa: PERF203 - report every failure
                errors.append(f"{e.code()}: {e.details()}")
    os.unlink(f.name)
    print(json.dumps({"ok": ok, "errors": errors[:5], "servers": servers}))


if __name__ == "__main__":
    main()
