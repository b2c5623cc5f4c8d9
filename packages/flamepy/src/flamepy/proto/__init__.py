"""Generated gRPC stubs for the flame.v1 protocol. Do not edit: run scripts/gen_protos.py."""
