"""The gRPC runtime: `mpsl server` hosts the encoder, `mpsl client` runs on each edge device."""
