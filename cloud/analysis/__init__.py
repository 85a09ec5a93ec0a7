"""Unattended analysis: which relay node analyses which armed camera (docs/protocol.md,
"Arming and analysis")."""
