"""Reliability tests: bad inputs, SIGKILL fault injection, security checks. Helpers live in faultkit.py."""
