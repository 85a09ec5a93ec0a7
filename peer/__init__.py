"""What the camera agent (``device_sim``) and the relay node (``relay``) share below them:
the typed signaling client (:mod:`peer.signaling`), aiortc glue for ICE (:mod:`peer.ice`,
:mod:`peer.network`) and codecs (:mod:`peer.codecs`: keyframes, parameter sets, H.264
profiles). It imports ``protocol`` at most, never ``cloud``, ``relay`` or ``device_sim``: the
two apps never import each other (docs/design.md)."""
