"""capsal: caption-guided saliency for image and video captioning models."""

from capsal.models.protocol import EncoderDecoder, check_protocol
from capsal.text import Tokenizer, Vocabulary

__version__ = "0.1.0"
__all__ = ["EncoderDecoder", "Tokenizer", "Vocabulary", "__version__", "check_protocol"]
