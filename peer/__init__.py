"""What the camera agent (``device_sim``) and the relay node (``relay``) share below them:
aiortc glue for ICE (:mod:`peer.ice`, :mod:`peer.network`) and the forwarded codecs
(:mod:`peer.codecs`). It imports ``protocol`` at most, never ``cloud``, ``relay`` or
``device_sim``: the two apps never import each other (docs/design.md)."""
