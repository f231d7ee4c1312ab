from widthlab.model.config import ModelConfig
from widthlab.model.gpt import GPT

__all__ = ["GPT", "ModelConfig"]
