"""Who a signaling connection is: the ``hello`` its first frame must be.

``/ws/v1/client`` (and the event stream) carry a user's access token, of a sign-in that
stands (cloud.auth.signins); ``/ws/v1/device`` a camera's assertion signed with the key it
registered at activation (cloud.signaling.identity); ``/ws/v1/relay`` a relay node's
credential. Each proves a principal and the grant the connection rests on, which the hub
keeps so that revoking the grant closes the connection.
"""

from cloud.auth.signins import SignIns
from cloud.auth.tokens import AccessTokens
from cloud.relays import registry
from cloud.signaling.deliveries import Role
from cloud.signaling.identity import DeviceAssertions
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import Hello, decode


class HelloAuth:
    def __init__(
        self,
        access_tokens: AccessTokens,
        signins: SignIns,
        assertions: DeviceAssertions,
        relay_secret: str,
    ) -> None:
        self.access_tokens = access_tokens
        self.signins = signins
        self.assertions = assertions
        self._relay_secret = relay_secret

    async def authenticate(self, role: Role, hello_text: str) -> tuple[str, str | None]:
        """The principal the first frame proves (a user, device or relay id), and the grant
        its connection rests on: a user's sign-in, a camera's binding (a relay: none).

        Raises CloudError or ProtocolError: the connection is then closed and never
        reaches the hub, so it cannot disturb a camera's live connection.
        """
        hello = decode(hello_text)
        if not isinstance(hello, Hello):
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "the first message must be hello")
        if role == "user":
            principal = await self.signins.check(self.access_tokens.verify(hello.token))
            return str(principal.user_id), principal.grant
        if role == "device":
            device = await self.assertions.verify(hello.token)
            return str(device.device_id), device.binding
        relay_id = registry.check_credential(hello.token, self._relay_secret)
        if relay_id is None:
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "bad relay credential")
        return relay_id, None
