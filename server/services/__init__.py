"""gRPC services: thin layers that check requests and run domain operations on the store."""
