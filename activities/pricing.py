"""What a change costs in tokens, from text lengths:

  estimate = ENGINE_CONTEXT_TOKENS + tokens(prompt) + an output allowance per instruction kind
  used     = ENGINE_CONTEXT_TOKENS + tokens(prompt) + tokens(diff actually produced)

where tokens(text) = ceil(len(text) / 4), the usual rule of thumb for English and code.
"""

import math
from collections.abc import Sequence

from activities.rule_engine import Instruction

# What a model would read besides the prompt: instructions and a summary of the repository.
ENGINE_CONTEXT_TOKENS = 300
CHARS_PER_TOKEN = 4


def tokens_of(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


# Expected diff tokens per instruction kind, calibrated on typical repositories' diffs.
OUTPUT_ALLOWANCE = {
    "set": 95,
    "page": 135,
    "migration": 110,
    "remove_test": 100,
    "skip_test": 90,
    "note": 90,  # plus the note's own text
}


def token_estimate(instructions: Sequence[Instruction], prompt: str) -> int:
    allowance = sum(
        OUTPUT_ALLOWANCE[i.kind] + (tokens_of(i.text) if i.kind == "note" else 0)
        for i in instructions
    )
    return ENGINE_CONTEXT_TOKENS + tokens_of(prompt) + allowance


def tokens_used(prompt: str, diff: str) -> int:
    return ENGINE_CONTEXT_TOKENS + tokens_of(prompt) + tokens_of(diff)
