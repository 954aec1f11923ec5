"""AutoLoRA: per-layer LoRA ranks found by meta learning (Zhang et al., NAACL 2024)."""

__version__ = "0.1.0"
