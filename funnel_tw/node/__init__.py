"""The node daemon: NodeService, its status API and its twistd entry point."""
