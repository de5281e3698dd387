#!/usr/bin/env python3
"""A gRPC health server that names itself in trailing metadata.

Usage: grpc_health_server.py ADDR NAME
"""
import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class Health(health_pb2_grpc.HealthServicer):
    def __init__(self, name):
        self.name = name

    def Check(self, request, context):
        context.set_trailing_metadata((("x-instance", self.name),))
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING
        )


def main():
    addr, name = sys.argv[1], sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(Health(name), server)
    server.add_insecure_port(addr)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
