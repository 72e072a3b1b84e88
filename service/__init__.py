"""The recognition service: ``landmarks serve`` (HTTP API + web page) over the same Python API as the CLI."""
