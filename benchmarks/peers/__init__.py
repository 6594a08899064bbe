"""Peer servers that rawstream is measured against (benchmark-only code)."""
