"""Chat: the turn format, the fine-tuning set, and the chat session used by `tilelli chat` and the server."""
