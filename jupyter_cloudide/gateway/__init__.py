"""Gateway layer: everything that speaks HTTP or WebSocket (tornado lives only here)."""
