"""The front-end's transactions as operations over the store (one function per call, run
inside the writer's transaction or a reader's snapshot); the gRPC services call these."""
