from ratelane.testing import fake_openai

__all__ = ["fake_openai"]
