"""Typed frames over TCP (or an in-process socket pair), with limits, timeouts and counters."""
from .channel import Channel, ChannelStats, DEFAULT_TIMEOUT
from .frames import FrameType, DEFAULT_MAX_FRAME
from .local import channel_pair
from .tcp import connect, listen

__all__ = ["Channel", "ChannelStats", "DEFAULT_TIMEOUT", "FrameType", "DEFAULT_MAX_FRAME", "channel_pair",
           "connect", "listen"]
