"""PEFT modules, one file per method, plus the :class:`AdaptedLinear` that combines them on one linear."""

from autopeft.peft.modules.adapted_linear import AdaptedLinear
from autopeft.peft.modules.ia3 import IA3Scale
from autopeft.peft.modules.lora import LoRA
from autopeft.peft.modules.lora_experts import LoRAExperts
from autopeft.peft.modules.parallel_adapter import PARALLEL_SCALE, ParallelAdapter, Stash
from autopeft.peft.modules.prefix import PREFIX_INIT_STD, PrefixKV
from autopeft.peft.modules.serial_adapter import SerialAdapter

__all__ = [
    "AdaptedLinear",
    "IA3Scale",
    "LoRA",
    "LoRAExperts",
    "PARALLEL_SCALE",
    "PREFIX_INIT_STD",
    "ParallelAdapter",
    "PrefixKV",
    "SerialAdapter",
    "Stash",
]
