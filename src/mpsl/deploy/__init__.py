"""The applications that run as processes: `mpsl server` (ServerApp) and `mpsl client` (ClientApp).

Both build their party with `mpsl.parties`, exactly as the simulation does, and move messages with
the gRPC runtime; the step they run is `mpsl.protocol.mpsl_step`.
"""
