"""Outgoing mail: building the bytes of the messages maildesk sends."""
