"""Notifier adapters: where alerts go (the log always; a webhook when configured)."""
