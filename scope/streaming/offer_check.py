"""Check an SDP offer before a peer connection is built from it.

aiortc accepts offers it cannot use: without ``a=fingerprint`` it answers, then fails in a
background task, leaving a session that never connects; garbage fails deep inside with messages
such as "None is not in list". Checking first gives the client a 400 that says what is missing
and leaves nothing behind.
"""

from __future__ import annotations

from aiortc.sdp import SessionDescription

#: Video codecs the server's peer connections can negotiate.
VIDEO_CODECS = ("video/VP8", "video/H264")


class OfferProblem(ValueError):
    """What makes an offer unusable, in words for the client."""


def check_offer(sdp: str) -> None:
    """Raise :class:`OfferProblem` unless ``sdp`` has a usable video section with DTLS and ICE."""
    if not sdp.lstrip().startswith("v=0"):
        raise OfferProblem("Invalid SDP offer: it must start with 'v=0'.")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # the parser raises ValueError, IndexError, KeyError... on garbage
        raise OfferProblem(f"Invalid SDP offer: cannot parse it ({type(exc).__name__}: {exc}).") from None
    used = [m for m in description.media if m.port != 0]
    video = [m for m in used if m.kind == "video"]
    if not video:
        raise OfferProblem("The offer has no video media section (an m=video line with a non-zero port).")
    if all(m.direction == "inactive" for m in video):
        raise OfferProblem("The offer's video section is inactive: offer sendrecv or recvonly video.")
    codecs = {codec.mimeType for m in video for codec in m.rtp.codecs}
    if not codecs.intersection(VIDEO_CODECS):
        offered = ", ".join(sorted(codecs)) or "none"
        raise OfferProblem(f"The offer's video section has no usable codec (offered: {offered}; need VP8 or H264).")
    for media in used:
        if media.dtls is None or not media.dtls.fingerprints:
            raise OfferProblem(
                f"The offer's {media.kind} section has no DTLS fingerprint (a=fingerprint) "
                "or no a=setup line."
            )
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise OfferProblem(f"The offer's {media.kind} section has no ICE credentials (a=ice-ufrag, a=ice-pwd).")


def sends_video(sdp: str) -> bool:
    """Whether a (checked) offer sends video to the server: a ``sendrecv`` or ``sendonly`` video
    section. A ``recvonly`` offer only watches; it has no input to give."""
    description = SessionDescription.parse(sdp)
    return any(m.kind == "video" and m.port != 0 and m.direction in ("sendrecv", "sendonly") for m in description.media)
