"""LoRA Studio."""
import logging
import warnings

__version__ = "0.1.0"

# bitsandbytes (an optional extra; PEFT imports it whenever it is installed) warns on every CPU run that
# an optional kernel could not be fetched from a model hub; LoRA Studio never uses that kernel.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# PEFT still calls transformers' deprecated `is_gradient_checkpointing` when it loads an adapter; the
# FutureWarning it prints on every `generate`/`eval` is not something a user can act on.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
