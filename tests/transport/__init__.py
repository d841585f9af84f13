"""Loopback tests of tidewire.transport (asyncio)."""
