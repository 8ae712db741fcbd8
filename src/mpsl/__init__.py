"""mpsl: fine-tune multimodal transformers across edge devices with Multimodal Parallel Split Learning."""

__version__ = "0.1.0"
