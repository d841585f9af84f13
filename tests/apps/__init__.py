"""Tests of tidewire.apps: the chat app and the command line, driven as a user would."""
