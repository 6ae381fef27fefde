"""capsal: caption-guided saliency for image and video captioning models."""

__version__ = "0.1.0"

from capsal.models.protocol import EncoderDecoder, check_protocol
from capsal.text import Vocabulary

__all__ = ["EncoderDecoder", "Vocabulary", "__version__", "check_protocol"]
