"""PEFT layers, one file per method (each with its ``inject``), plus the :class:`AdaptedLinear` that combines the
modules placed on one linear."""

from autopeft.peft.modules.adapted_linear import AdaptedLinear
from autopeft.peft.modules.compacter import Compacter, CompacterRules, PHMLinear
from autopeft.peft.modules.dora import DoRA
from autopeft.peft.modules.dynmole import DynMoLEExperts
from autopeft.peft.modules.hydra import Hydra
from autopeft.peft.modules.ia3 import IA3Scale
from autopeft.peft.modules.lora import LoRA
from autopeft.peft.modules.lora_experts import LoRAExperts
from autopeft.peft.modules.parallel_adapter import PARALLEL_SCALE, ParallelAdapter, Stash
from autopeft.peft.modules.prefix import PREFIX_INIT_STD, PrefixKV, PrefixMLP
from autopeft.peft.modules.serial_adapter import SerialAdapter
from autopeft.peft.modules.ssf import SSF

__all__ = [
    "AdaptedLinear",
    "Compacter",
    "CompacterRules",
    "DoRA",
    "DynMoLEExperts",
    "Hydra",
    "IA3Scale",
    "LoRA",
    "LoRAExperts",
    "PARALLEL_SCALE",
    "PHMLinear",
    "PREFIX_INIT_STD",
    "ParallelAdapter",
    "PrefixKV",
    "PrefixMLP",
    "SSF",
    "SerialAdapter",
    "Stash",
]
