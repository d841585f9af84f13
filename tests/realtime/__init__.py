"""Tests for tidewire.realtime."""
