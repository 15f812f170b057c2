"""A real WebRTC stack (aiortc) configured from the service's answer, relay only."""

from __future__ import annotations

import asyncio

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy


def configuration(ice_servers: list[dict]) -> RTCConfiguration:
    """Build what `new RTCPeerConnection({iceServers, iceTransportPolicy: "relay"})` gets in a browser."""
    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in ice_servers]
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY)


def relay_candidates(ice_servers: list[dict]) -> int:
    """Gather candidates with relay only; return how many relay candidates the TURN server granted."""

    async def gather() -> int:
        peer = RTCPeerConnection(configuration(ice_servers))
        try:
            peer.createDataChannel("probe")
            await peer.setLocalDescription(await peer.createOffer())
            return peer.localDescription.sdp.count(" typ relay")
        finally:
            await peer.close()

    return asyncio.run(gather())


def relay_chat(ice_servers: list[dict], message: str = "hello through the relay", timeout: float = 15) -> str | None:
    """Connect two peers through the TURN server only and send ``message``; return what arrived, or None."""

    async def chat() -> str | None:
        offerer, answerer = RTCPeerConnection(configuration(ice_servers)), RTCPeerConnection(configuration(ice_servers))
        received = asyncio.get_running_loop().create_future()
        channel = offerer.createDataChannel("chat")

        @channel.on("open")
        def send() -> None:
            channel.send(message)

        @answerer.on("datachannel")
        def listen(incoming) -> None:
            @incoming.on("message")
            def deliver(text) -> None:
                if not received.done():
                    received.set_result(text)

        try:
            await offerer.setLocalDescription(await offerer.createOffer())
            await answerer.setRemoteDescription(offerer.localDescription)
            await answerer.setLocalDescription(await answerer.createAnswer())
            await offerer.setRemoteDescription(answerer.localDescription)
            return await asyncio.wait_for(received, timeout)
        except TimeoutError:
            return None
        finally:
            await offerer.close()
            await answerer.close()

    return asyncio.run(chat())
