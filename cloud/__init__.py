"""The VisionConnect cloud service: accounts, onboarding, devices, signaling, events."""
